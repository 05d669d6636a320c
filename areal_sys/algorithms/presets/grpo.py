"""GRPO, Group Relative Policy Optimization: Shao et al., "DeepSeekMath: Pushing the Limits of
Mathematical Reasoning in Open Language Models", arXiv:2402.03300 (2024).

No critic: the G responses to one prompt are each other's baseline. A_i = (R_i − mean R) /
(std R + eps), broadcast to every token of response i (estimator `grpo`; std unbiased, as
verl/TRL). The objective is AReaL's decoupled PPO (Fu et al., arXiv:2505.24298), which is plain
PPO when training is on-policy. Two departures from the paper, as DAPO and AReaL make them:
token-mean over the global batch (the paper averages per sequence first, `seq-mean-token-mean`)
and no KL penalty (the paper's β = 0.04: set `algorithm.kl_coef`).
"""

from areal_sys.algorithms.presets.base import NO_KL, NO_OVERLONG, Preset, ppo_clip

CLIP = 0.2  # ε: the ratio to the proximal policy is clipped to [1 − ε, 1 + ε]

PRESET = Preset(
    name="grpo",
    description="GRPO: group-normalised advantages, decoupled PPO objective, token-mean",
    estimator="grpo", loss="decoupled_ppo", aggregation="token-mean", filter="none",
    settings={**ppo_clip(CLIP, CLIP), **NO_KL, **NO_OVERLONG},
)
