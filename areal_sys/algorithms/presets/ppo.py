"""PPO with a critic: Schulman et al., "Proximal Policy Optimization Algorithms",
arXiv:1707.06347 (2017), with GAE: Schulman et al., "High-Dimensional Continuous Control Using
Generalized Advantage Estimation", arXiv:1506.02438 (2015).

A value model (the critic, workers/critic.py) predicts V_t for every response token; the outcome
reward sits on the last response token; δ_t = r_t + γ·V_{t+1} − V_t and A_t = Σ_l (γλ)^l δ_{t+l}
(estimator `gae`, token-level), returns = A + V, and A is whitened over the batch's loss tokens.
The critic trains on the clipped value loss 0.5·max((V − R)², (V_clip − R)²), value clip 0.5.
The policy objective is AReaL's decoupled PPO (Fu et al., arXiv:2505.24298), clip 0.2. A KL
penalty, when `kl_coef` > 0, goes into the per-token reward, as in RLHF PPO.
"""

from areal_sys.algorithms.presets.base import NO_KL, NO_OVERLONG, Preset, ppo_clip

CLIP = 0.2  # ε of the policy's clipped ratio
VALUE_CLIP = 0.5  # the value loss is clipped to V_old ± VALUE_CLIP
GAE_GAMMA = 1.0  # discount γ (undiscounted: one outcome reward per response)
GAE_LAMBDA = 1.0  # λ

PRESET = Preset(
    name="ppo",
    description="PPO with a critic: GAE advantages (whitened), decoupled PPO objective, clipped "
    "value loss",
    estimator="gae", loss="decoupled_ppo", aggregation="token-mean", filter="none",
    settings={**ppo_clip(CLIP, CLIP), **NO_KL, **NO_OVERLONG, "kl_placement": "reward",
              "gae_gamma": GAE_GAMMA, "gae_lambda": GAE_LAMBDA, "whiten_advantages": True,
              "value_clip": VALUE_CLIP},
    remark="needs a critic (value model); the outcome reward sits on the last response token",
)
