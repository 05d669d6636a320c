"""KL to a frozen reference policy: per-token estimators and where the penalty goes.

Optional and off by default (`kl_coef = 0`, as in DAPO and AReaL's math recipe). With
`kl_coef = β > 0` the trainer needs the reference model's log-probabilities logπ_ref of the
sampled tokens (`Algorithm.needs_reference`). With r = logπ_ref − logπ_θ per token:

- `k1` = −r = logπ_θ − logπ_ref       (unbiased, can be negative)
- `k2` = ½·r²                          (low variance, biased)
- `k3` = e^r − r − 1 = π_ref/π_θ − log(π_ref/π_θ) − 1   (unbiased, always ≥ 0; default),
  clamped to [−10, 10] as AReaL and verl do (unclamped it is 142.4 at r = 5, 2.9e8 at r = 20)

Placement (`kl_placement`):
- `loss`: add β·KL_t to the per-token policy loss before aggregation (`kl_loss_term`, the GRPO
  way; gradient flows through logπ_θ);
- `reward`: shape the reward with −β·KL_t per token (`kl_reward_term`, the classic PPO-RLHF way;
  computed once from the rollout's log-probabilities, no gradient). With GAE add it to the
  per-token rewards; with a group estimator add its sum over the response to R_i.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from areal_sys.algorithms.registry import KL, register

KLFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# |log-ratio| bound inside k3: keeps e^r (and its gradient) finite when one token's
# probabilities are far apart; the value clamp alone would give 0·inf = nan in the backward pass.
_LOG_RATIO_CLAMP = 20.0
# bound on the k3 value, as AReaL and verl clamp it: one token far from the reference cannot
# dominate the loss (tokens at the bound get no KL gradient).
_K3_CLAMP = 10.0


@register(KL, "k1")
def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = logπ_θ − logπ_ref (the plain log-ratio)."""
    return logprobs.float() - ref_logprobs.detach().float()


@register(KL, "k2")
def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = ½·(logπ_θ − logπ_ref)²."""
    return 0.5 * (logprobs.float() - ref_logprobs.detach().float()) ** 2


@register(KL, "k3")
def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = π_ref/π_θ − log(π_ref/π_θ) − 1, clamped to [−10, 10] (AReaL, verl); r = logπ_ref −
    logπ_θ is first clamped to ±20 against overflow.

    Sanity: π_θ = 0.5, π_ref = 0.25 → 0.5 − ln 0.5 − 1 = 0.19315; r = −5 → e^−5 + 4 = 4.0067
    (under the bound); r = 5 → e^5 − 6 = 142.41 → 10.
    """
    r = (ref_logprobs.detach().float() - logprobs.float()).clamp(
        -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP
    )
    return (torch.exp(r) - r - 1.0).clamp(-_K3_CLAMP, _K3_CLAMP)


def kl_loss_term(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    coef: float,
    estimator: KLFn = kl_k3,
) -> torch.Tensor:
    """β·KL_t per token (0 where M = 0), differentiable: add it to the per-token policy loss."""
    kl = estimator(logprobs, ref_logprobs)
    return torch.where(mask.bool(), coef * kl, torch.zeros_like(kl))


def kl_reward_term(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    coef: float,
    estimator: KLFn = kl_k3,
) -> torch.Tensor:
    """−β·KL_t per token (0 where M = 0), detached: reward shaping from the rollout's logπ."""
    return -kl_loss_term(logprobs.detach(), ref_logprobs, mask, coef=coef, estimator=estimator)
