"""Reinforce-Rej: Xiong et al., "A Minimalist Approach to LLM Reasoning: from Rejection Sampling
to Reinforce", arXiv:2504.11343 (2025).

REINFORCE (A_i = R_i, estimator `reinforce`, with the clipped ratio objective) that rejects the
groups whose responses are all correct or all wrong (filter `reject_all_same`): such groups carry
no contrast, and the paper finds that dropping them, chiefly the all-wrong ones, keeps training
stable. Rewards are +1 and −1: with 0/1 rewards wrong answers would get weight 0 and the method
would degenerate into RAFT++ on the mixed groups (`areal-sys validate` and `run` warn then). As in
the paper's code (verl's PPO loss), a dual clip c = 3 caps the loss of a negative-advantage token
at 3·|A| however far its ratio has grown.
"""

from areal_sys.algorithms.presets.base import NO_KL, NO_OVERLONG, Preset, ppo_clip

CLIP = 0.2  # ε of the clipped ratio
DUAL_CLIP = 3.0  # c: for A < 0 the per-token loss is at most c·|A|
CORRECT_REWARD = 1.0
WRONG_REWARD = -1.0

PRESET = Preset(
    name="reinforce_rej",
    description="Reinforce-Rej: A_i = R_i, groups all correct or all wrong are dropped, "
    "dual clip 3, rewards +-1",
    estimator="reinforce", loss="decoupled_ppo", aggregation="token-mean",
    filter="reject_all_same",
    settings={**ppo_clip(CLIP, CLIP, DUAL_CLIP), **NO_KL, **NO_OVERLONG},
    correct_reward=CORRECT_REWARD, wrong_reward=WRONG_REWARD,
)
