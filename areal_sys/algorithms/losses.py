"""Policy losses: per-token loss ℓ and per-token statistics, before aggregation.

Every loss takes tensors of one shape ([S, L]: sequences × response positions, or any shape):
`logprobs` (current policy π_θ, differentiable), `proximal_logprobs` (π_prox: weights before this
update), `behav_logprobs` (π_b: recorded by the rollout engine), `advantages` A and `mask` M
(1 for tokens that train). It returns `(loss, stats)`: `loss` has the input shape, is zero where
M = 0 (and where a token's behaviour weight is masked out), and still needs aggregating
(aggregation.py); `stats` holds detached per-token float tensors (`clipped`, `behav_weight`,
`capped`, and for the losses with a behaviour weight `mis_masked`, `tis_truncated`) that the
caller averages over M.

The losses with a behaviour weight (`decoupled_ppo`, `raft_pp`) take the train–inference mismatch
corrections, off by default: TIS (`tis_cap`) and MIS / IcePop (`mis_low`, `mis_high`). They act
on the one weight w = π_prox/π_b the decoupled objective applies anyway, never as a second
factor; algorithms/mismatch.py gives their definitions against AReaL's, verl's and slime's. The
other losses have no behaviour weight and refuse them (`build_algorithm`).

Formulas and hand-checked values: ALGORITHMS.md, "Policy losses".
"""

from __future__ import annotations

from typing import Literal

import torch

from areal_sys.algorithms.mismatch import behaviour_weight
from areal_sys.algorithms.registry import POLICY_LOSS, register

LossOutput = tuple[torch.Tensor, dict[str, torch.Tensor]]
# the options of a loss that applies the behaviour weight (kwarg -> AlgorithmConfig field)
BEHAVIOUR_WEIGHT_OPTIONS = {
    "behav_weight_cap": "behav_weight_cap",
    "behav_cap_mode": "behav_cap_mode",
    "tis_cap": "tis_cap",
    "mis_low": "mis_low",
    "mis_high": "mis_high",
}


@register(
    POLICY_LOSS,
    "decoupled_ppo",
    options={"clip_low": "clip_low", "clip_high": "clip_high", "dual_clip": "dual_clip",
             **BEHAVIOUR_WEIGHT_OPTIONS},
)
def decoupled_ppo_loss(
    logprobs: torch.Tensor,
    proximal_logprobs: torch.Tensor,
    behav_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    behav_weight_cap: float | None = None,
    behav_cap_mode: Literal["mask", "clamp"] = "mask",
    dual_clip: float | None = None,
    tis_cap: float | None = None,
    mis_low: float | None = None,
    mis_high: float | None = None,
) -> LossOutput:
    """Decoupled PPO (AReaL): ℓ = −w · min(u·A, clip(u, 1−ε_low, 1+ε_high)·A).

    u = exp(logπ_θ − logπ_prox); the behaviour weight w = exp(logπ_prox − logπ_b) is a constant.

    Behaviour-weight cap c (`behav_weight_cap`): tokens with w > c get ℓ = 0 in mode `mask` (they
    still count in the aggregation denominator, which the caller computes from M), or w := c in
    mode `clamp`. `None` never caps; w is always applied (never silently dropped).
    Mismatch corrections (None: off): MIS / IcePop masks tokens with w outside
    [`mis_low`, `mis_high`] like the cap's mask mode; TIS truncates the kept weights,
    w := min(w, `tis_cap`). One weight, applied once (mismatch.behaviour_weight).
    Dual clip c (`dual_clip`, None: off; c > 1): for A < 0 the PPO term is capped,
    min(−min(u·A, clip(u)·A), c·|A|), before w multiplies it; tokens hit by the cap (u > c) get
    no gradient. Sanity: A=−1, u=5, c=3 → 3 instead of 5.
    Sanity (probabilities; pass their logs): π_b=0.1, π_prox=0.2, π_θ=0.22, A=1 → w=2, u=1.1,
    ℓ=−2.2 with a gradient; π_θ=0.30 → u=1.5 clipped to 1.2, ℓ=−2.4, no gradient.
    Stats: `clipped` (1 where a clip or the dual clip is active, i.e. no gradient), `behav_weight`
    (w before capping), `capped` (1 where w > c), `mis_masked`, `tis_truncated`.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    logp = logprobs.float()
    prox = proximal_logprobs.detach().float()
    keep = mask.bool()
    adv = advantages.detach().float()
    w_eff, w_stats = behaviour_weight(
        prox, behav_logprobs, behav_weight_cap=behav_weight_cap, behav_cap_mode=behav_cap_mode,
        tis_cap=tis_cap, mis_low=mis_low, mis_high=mis_high,
    )
    ratio = torch.exp(logp - prox)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv)
    pg = -surrogate
    clipped = ((adv > 0) & (ratio > 1.0 + clip_high)) | ((adv < 0) & (ratio < 1.0 - clip_low))
    if dual_clip is not None:
        dual = (adv < 0) & (ratio > dual_clip)
        pg = torch.where(dual, -dual_clip * adv, pg)
        clipped = clipped | dual
    loss = torch.where(keep, w_eff * pg, torch.zeros_like(pg))
    return loss, {"clipped": clipped.detach().float(), **w_stats}


@register(
    POLICY_LOSS,
    "ppo_clip",
    options={"clip_low": "clip_low", "clip_high": "clip_high", "dual_clip": "dual_clip"},
)
def ppo_clip_loss(
    logprobs: torch.Tensor,
    proximal_logprobs: torch.Tensor,
    behav_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> LossOutput:
    """Standard PPO clip against the behaviour policy: ℓ = −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A).

    The ablation of decoupled PPO: logπ_prox := logπ_b and w = 1, so r = exp(logπ_θ − logπ_b);
    the same optional dual clip (A < 0: ℓ = min(ℓ, c·|A|)).
    `proximal_logprobs` is accepted for the common interface and unused.
    Sanity (probabilities): π_b=0.1, π_θ=0.22, A=1 → r=2.2 is clipped at 1.2 → no gradient.
    """
    del proximal_logprobs
    return decoupled_ppo_loss(
        logprobs,
        behav_logprobs,
        behav_logprobs,
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        behav_weight_cap=None,
        dual_clip=dual_clip,
    )


@register(POLICY_LOSS, "raft_sft")
def raft_sft_loss(
    logprobs: torch.Tensor,
    proximal_logprobs: torch.Tensor,
    behav_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
) -> LossOutput:
    """RAFT (vanilla): ℓ = −w · logπ_θ, SFT weighted by the RAFT weight w.

    `advantages` carries w (1 for kept responses, 0 otherwise: estimator `raft`); no ratio, no
    clipping, no behaviour weight (`proximal_logprobs`, `behav_logprobs` are unused). Stats keep
    the common keys: `clipped` 0, `behav_weight` 1, `capped` 0.
    """
    del proximal_logprobs, behav_logprobs
    keep = mask.bool()
    w = advantages.detach().float()
    loss = torch.where(keep, -w * logprobs.float(), torch.zeros_like(w))
    zeros = torch.zeros_like(w)
    return loss, {"clipped": zeros, "behav_weight": torch.ones_like(w), "capped": zeros}


@register(
    POLICY_LOSS,
    "raft_pp",
    options={"clip_low": "clip_low", "clip_high": "clip_high", **BEHAVIOUR_WEIGHT_OPTIONS},
)
def raft_pp_loss(
    logprobs: torch.Tensor,
    proximal_logprobs: torch.Tensor,
    behav_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    behav_weight_cap: float | None = None,
    behav_cap_mode: Literal["mask", "clamp"] = "mask",
    tis_cap: float | None = None,
    mis_low: float | None = None,
    mis_high: float | None = None,
) -> LossOutput:
    """RAFT++: the clipped-ratio loss with the RAFT weight w as the advantage (IS + clipping).

    ℓ = −w_b · min(u·w, clip(u, 1−ε_low, 1+ε_high)·w).
    Exactly `decoupled_ppo` fed with weights (w_b the behaviour weight, u the proximal ratio);
    w ≥ 0, so the dual clip never applies. Sanity with w = 1: u=1.3 → term 1.2, no gradient;
    u=0.7 → term 0.7 with gradient.
    """
    return decoupled_ppo_loss(
        logprobs,
        proximal_logprobs,
        behav_logprobs,
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        behav_weight_cap=behav_weight_cap,
        behav_cap_mode=behav_cap_mode,
        tis_cap=tis_cap,
        mis_low=mis_low,
        mis_high=mis_high,
    )
