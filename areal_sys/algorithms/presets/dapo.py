"""DAPO, Decoupled Clip and Dynamic sAmpling Policy Optimization: Yu et al., "DAPO: An
Open-Source LLM Reinforcement Learning System at Scale", arXiv:2503.14476 (2025).

GRPO advantages with four changes, each a piece here:
- clip-higher: the ratio is clipped to [1 − 0.2, 1 + 0.28], so unlikely tokens with A > 0 can
  gain probability (π_old 0.01 may rise to 0.0128, not 0.012);
- dynamic sampling (filter `dynamic_sampling`): groups whose responses are all correct or all
  wrong have zero advantage and are dropped before buffering; the controller admits more prompts
  to refill the batch (at most `max_oversample_rounds` rounds per step);
- token-level loss: token-mean over the global batch;
- soft overlong punishment added to the reward: 0 up to L_max − L_cache response tokens, a
  linear ramp to −1 at L_max, −1 beyond (L_max = `rollout.max_new_tokens`, L_cache = L_max // 5
  unless `overlong_max_len` / `overlong_cache_len` are set; the paper: 20480 and 4096).
Rewards are +1 for a correct answer and −1 otherwise, and there is no KL penalty.
"""

from areal_sys.algorithms.presets.base import NO_KL, Preset, ppo_clip

CLIP_LOW = 0.2  # ratio >= 1 − CLIP_LOW
CLIP_HIGH = 0.28  # ratio <= 1 + CLIP_HIGH (clip-higher)
CORRECT_REWARD = 1.0
WRONG_REWARD = -1.0

PRESET = Preset(
    name="dapo",
    description="DAPO: clip-higher 0.28, dynamic sampling, token-mean, soft overlong punishment, "
    "no KL, rewards +-1",
    estimator="grpo", loss="decoupled_ppo", aggregation="token-mean", filter="dynamic_sampling",
    settings={**ppo_clip(CLIP_LOW, CLIP_HIGH), **NO_KL,
              "overlong_penalty": True, "overlong_filter": False},
    correct_reward=CORRECT_REWARD, wrong_reward=WRONG_REWARD,
)
