"""Group filters: decide, per scored group, whether it enters the training buffer.

Interface: `keep(rewards [G], *, success_threshold) -> bool`, rewards being the raw scores of the
group's G responses (before overlong shaping). A response is correct when R >= `success_threshold`
(default 0.5, which suits both 0/1 and ±1 rewards). `build_algorithm` binds the threshold, so the
controller calls `algo.filter(rewards)`.

The controller applies the filter to every scored group before buffering and counts the drops (a
metric per step). A dropped group frees its place in the staleness gate, so the controller admits
more prompts to fill the batch, at most `max_oversample_rounds` extra rounds per step (DAPO's
dynamic sampling: "keep sampling until the batch is full").
"""

from __future__ import annotations

import torch

from areal_sys.algorithms.registry import FILTER, register

_THRESHOLD = {"success_threshold": "success_threshold"}


def _n_correct(rewards: torch.Tensor, success_threshold: float) -> tuple[int, int]:
    """(#correct, G) of a group."""
    r = rewards.flatten()
    return int((r >= success_threshold).sum().item()), r.numel()


@register(FILTER, "none", options=_THRESHOLD)
def keep_all(rewards: torch.Tensor, *, success_threshold: float = 0.5) -> bool:
    """Keep every group."""
    del rewards, success_threshold
    return True


@register(FILTER, "dynamic_sampling", options=_THRESHOLD)
def dynamic_sampling(rewards: torch.Tensor, *, success_threshold: float = 0.5) -> bool:
    """DAPO dynamic sampling: keep groups with 0 < #correct < G (they have a non-zero gradient)."""
    k, g = _n_correct(rewards, success_threshold)
    return 0 < k < g


@register(FILTER, "reject_all_same", options=_THRESHOLD)
def reject_all_same(rewards: torch.Tensor, *, success_threshold: float = 0.5) -> bool:
    """Reinforce-Rej: drop groups whose responses are all correct or all wrong.

    The same keep rule as `dynamic_sampling`, under the name of the Reinforce-Rej recipe
    (estimator `reinforce`, rewards ±1).
    """
    k, g = _n_correct(rewards, success_threshold)
    return 0 < k < g


@register(FILTER, "remove_all_wrong", options=_THRESHOLD)
def remove_all_wrong(rewards: torch.Tensor, *, success_threshold: float = 0.5) -> bool:
    """Drop groups with no correct response (keep #correct > 0)."""
    return _n_correct(rewards, success_threshold)[0] > 0


@register(FILTER, "remove_all_correct", options=_THRESHOLD)
def remove_all_correct(rewards: torch.Tensor, *, success_threshold: float = 0.5) -> bool:
    """Drop groups whose responses are all correct (keep #correct < G)."""
    k, g = _n_correct(rewards, success_threshold)
    return k < g
