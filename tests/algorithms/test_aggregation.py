"""Aggregations over the global batch: ALGORITHMS.md values, and micro-batches summing to it."""

import pytest
import torch

from areal_sys.algorithms import LossDenominators, get_plugin
from areal_sys.algorithms.registry import AGGREGATION

LOSS = torch.tensor([[1.0, 1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
SEQ_MASKS = [torch.ones(2), torch.ones(4)]
EXPECTED = {
    "token-mean": 10 / 6,
    "seq-mean-token-mean": 1.5,
    "seq-mean-token-sum": 5.0,
    "dr_grpo": 1.25,
}


def test_denominators_from_masks() -> None:
    d = LossDenominators.from_masks([*SEQ_MASKS, torch.zeros(7)])
    assert (d.n_tokens, d.n_seqs, d.max_len) == (6.0, 2.0, 7.0)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_aggregation_values(name: str) -> None:
    agg = get_plugin(AGGREGATION, name).fn
    value = agg(LOSS, MASK, LossDenominators.from_masks(SEQ_MASKS))
    assert value.item() == pytest.approx(EXPECTED[name], abs=1e-3)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_micro_batches_sum_to_global_loss(name: str) -> None:
    """Each sequence in its own micro-batch, global denominators: the parts add up."""
    agg = get_plugin(AGGREGATION, name).fn
    denom = LossDenominators.from_masks(SEQ_MASKS)
    parts = agg(LOSS[:1, :2], MASK[:1, :2], denom) + agg(LOSS[1:], MASK[1:], denom)
    assert parts.item() == pytest.approx(EXPECTED[name], abs=1e-3)


def test_masked_positions_are_ignored_even_if_nan() -> None:
    loss = torch.tensor([[1.0, float("nan")]])
    mask = torch.tensor([[1.0, 0.0]])
    agg = get_plugin(AGGREGATION, "token-mean").fn
    assert agg(loss, mask, LossDenominators(1.0, 1.0, 2.0)).item() == 1.0
