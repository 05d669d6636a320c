"""REINFORCE: Williams, "Simple Statistical Gradient-Following Algorithms for Connectionist
Reinforcement Learning", Machine Learning 8 (1992), 229-256.

The advantage is the reward itself, A_i = R_i, with no baseline (estimator `reinforce`), trained
with the decoupled PPO objective (clip 0.2; Fu et al., arXiv:2505.24298) so that stale samples
are reweighted and clipped like every other preset's. Without a baseline, a response with reward
0 carries no gradient; reinforce_rej.py is the variant with ±1 rewards and group rejection.
"""

from areal_sys.algorithms.presets.base import NO_KL, NO_OVERLONG, Preset, ppo_clip

CLIP = 0.2  # ε of the clipped ratio

PRESET = Preset(
    name="reinforce",
    description="REINFORCE: A_i = R_i (no baseline) with the decoupled PPO objective",
    estimator="reinforce", loss="decoupled_ppo", aggregation="token-mean", filter="none",
    settings={**ppo_clip(CLIP, CLIP), **NO_KL, **NO_OVERLONG},
)
