"""Advantage estimators: the rewards of one group (the G responses to one prompt) → one advantage
per response, which the trainer broadcasts to every token of that response.

Formulas and hand-checked values: ALGORITHMS.md, "Advantage estimators".
"""

from __future__ import annotations

from typing import Literal

import torch

from areal_sys.algorithms.registry import ESTIMATOR, register


def broadcast_to_tokens(advantages: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
    """One float32 tensor per response: advantage i repeated over its `lengths[i]` tokens."""
    if advantages.numel() != len(lengths):
        raise ValueError(f"{advantages.numel()} advantages for {len(lengths)} responses")
    return [advantages[i].float().expand(n).clone() for i, n in enumerate(lengths)]


@register(ESTIMATOR, "grpo", options={"std": "adv_std", "eps": "adv_eps"})
def grpo_advantages(
    rewards: torch.Tensor,
    *,
    std: Literal["unbiased", "population"] = "unbiased",
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO: A_i = (R_i − mean R) / (std R + eps).

    `std="unbiased"` divides by G − 1 (verl/TRL convention), `"population"` by G. A group whose
    rewards are all equal (including a group of one) gets all-zero advantages.
    rewards [1,0,0,0] → unbiased [1.5, −0.5, −0.5, −0.5], population [1.732, −0.577, ...].
    """
    if std not in ("unbiased", "population"):
        raise ValueError(f"std must be 'unbiased' or 'population', got {std!r}")
    r = rewards.double().flatten()
    centred = r - r.mean()
    if r.numel() < 2:
        return torch.zeros_like(r, dtype=torch.float32)
    s = r.std(correction=1 if std == "unbiased" else 0)
    return (centred / (s + eps)).float()


@register(ESTIMATOR, "dr_grpo")
def dr_grpo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO: A_i = R_i − mean R (no division by the std; pair with aggregation `dr_grpo`).

    rewards [1,1,−1,−1] → [1, 1, −1, −1].
    """
    r = rewards.double().flatten()
    return (r - r.mean()).float()


@register(ESTIMATOR, "rloo")
def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO: A_i = R_i − mean_{j≠i} R_j, the leave-one-out baseline (= G/(G−1)·(R_i − mean R)).

    rewards [1,0,0,0] → [1, −1/3, −1/3, −1/3]. A group of one has no baseline: A = 0.
    """
    r = rewards.double().flatten()
    g = r.numel()
    if g < 2:
        return torch.zeros_like(r, dtype=torch.float32)
    return (r - (r.sum() - r) / (g - 1)).float()


@register(ESTIMATOR, "reinforce")
def reinforce_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE: A_i = R_i (no baseline).

    With filter `reject_all_same` this is Reinforce-Rej, which wants rewards ±1: with 0/1 rewards
    wrong answers get A = 0 and it degenerates into RAFT.
    """
    return rewards.flatten().float().clone()


@register(
    ESTIMATOR,
    "raft",
    options={"success_threshold": "success_threshold"},
    meta={"mask_zero_advantage": True},
)
def raft_weights(rewards: torch.Tensor, *, success_threshold: float = 0.5) -> torch.Tensor:
    """RAFT weights: w_i = 1 if R_i equals the group max and is a success, else 0.

    Success means R_i >= `success_threshold` (0.5 suits both 0/1 and ±1 rewards). Only correct
    responses train; an all-wrong group gets all zeros. Responses with w = 0 leave the loss and
    its denominators (`Algorithm.mask_zero_advantage`), so the loss is SFT over the kept samples.
    rewards [1,−1,−1,−1] → [1, 0, 0, 0].
    """
    r = rewards.double().flatten()
    if r.numel() == 0:
        return torch.zeros(0)
    keep = (r == r.max()) & (r >= success_threshold)
    return keep.float()
