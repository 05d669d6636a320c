"""RAFT++: Xiong et al., "A Minimalist Approach to LLM Reasoning: from Rejection Sampling to
Reinforce", arXiv:2504.11343 (2025).

RAFT's weights (w_i = 1 for a group's best correct responses, else 0; estimator `raft`) used as
the advantage of the clipped importance-sampled ratio loss (loss `raft_pp`): ℓ = −min(u·w,
clip(u, 1 − ε, 1 + ε)·w), so samples from an older policy are reweighted and large steps are
clipped. All-wrong groups are dropped (filter `remove_all_wrong`). The paper reports that the
policy entropy collapses faster than under GRPO: watch the logged entropy.
"""

from areal_sys.algorithms.presets.base import NO_KL, NO_OVERLONG, Preset, ppo_clip

CLIP = 0.2  # ε of the clipped ratio

PRESET = Preset(
    name="raft_pp",
    description="RAFT++: RAFT weights trained with the clipped importance-sampled ratio loss",
    estimator="raft", loss="raft_pp", aggregation="token-mean", filter="remove_all_wrong",
    settings={**ppo_clip(CLIP, CLIP), **NO_KL, **NO_OVERLONG},
    remark="entropy tends to collapse: watch the logged policy entropy",
)
