"""Dr.GRPO, GRPO done right: Liu et al., "Understanding R1-Zero-Like Training: A Critical
Perspective", arXiv:2503.20783 (2025).

GRPO without its two length and difficulty biases: A_i = R_i − mean R (estimator `dr_grpo`, no
division by the group's std), and the loss summed over tokens and divided by B·L_max (aggregation
`dr_grpo`), never by a response's own length. L_max is the constant generation budget
(`rollout.max_new_tokens`, bound by `build_algorithm`), as in the paper's code, so the loss scale
does not depend on which responses a minibatch holds. Clip 0.2, no KL, as in the paper.
"""

from areal_sys.algorithms.presets.base import NO_KL, NO_OVERLONG, Preset, ppo_clip

CLIP = 0.2  # ε of the clipped ratio

PRESET = Preset(
    name="dr_grpo",
    description="Dr.GRPO: mean-centred advantages (no std) and the constant B*L_max normaliser",
    estimator="dr_grpo", loss="decoupled_ppo", aggregation="dr_grpo", filter="none",
    settings={**ppo_clip(CLIP, CLIP), **NO_KL, **NO_OVERLONG},
)
