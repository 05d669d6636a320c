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
