"""Aggregations over the global batch: ALGORITHMS.md values, and micro-batches summing to it."""

import functools

import pytest
import torch

from areal_sys.algorithms import LossDenominators, build_algorithm, get_plugin
from areal_sys.algorithms.registry import AGGREGATION

LOSS = torch.tensor([[1.0, 1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
SEQ_MASKS = [torch.ones(2), torch.ones(4)]
EXPECTED = {
    "token-mean": 10 / 6,
    "seq-mean-token-mean": 1.5,
    "seq-mean-token-sum": 5.0,
    "dr_grpo": 1.25,  # generation budget L_max = 4
}
OPTIONS = {"dr_grpo": {"max_len": 4}}


def _agg(name: str):
    return functools.partial(get_plugin(AGGREGATION, name).fn, **OPTIONS.get(name, {}))


def test_denominators_from_masks() -> None:
    d = LossDenominators.from_masks([*SEQ_MASKS, torch.zeros(7)])
    assert (d.n_tokens, d.n_seqs) == (6.0, 2.0)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_aggregation_values(name: str) -> None:
    agg = _agg(name)
    value = agg(LOSS, MASK, LossDenominators.from_masks(SEQ_MASKS))
    assert value.item() == pytest.approx(EXPECTED[name], abs=1e-3)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_micro_batches_sum_to_global_loss(name: str) -> None:
    """Each sequence in its own micro-batch, global denominators: the parts add up."""
    agg = _agg(name)
    denom = LossDenominators.from_masks(SEQ_MASKS)
    parts = agg(LOSS[:1, :2], MASK[:1, :2], denom) + agg(LOSS[1:], MASK[1:], denom)
    assert parts.item() == pytest.approx(EXPECTED[name], abs=1e-3)


def test_masked_positions_are_ignored_even_if_nan() -> None:
    loss = torch.tensor([[1.0, float("nan")]])
    mask = torch.tensor([[1.0, 0.0]])
    agg = get_plugin(AGGREGATION, "token-mean").fn
    assert agg(loss, mask, LossDenominators(1.0, 1.0)).item() == 1.0


def test_dr_grpo_divides_by_the_generation_budget_not_the_longest_response() -> None:
    """Budget 512 (rollout.max_new_tokens): losses [1,1] and [2,2,2,2] → 10 / (2·512). A third,
    fully masked 400-token response (e.g. truncated and overlong-filtered) changes nothing: it
    adds no loss and no sequence to B, and L_max stays 512. Taking L_max as the longest response
    gave 10 / (2·4) = 1.25 without it and 10 / (2·400) = 0.0125 with it (100x smaller)."""
    algo = build_algorithm({"name": "dr_grpo"}, max_new_tokens=512)
    expected = 10 / (2 * 512)
    assert algo.aggregate(LOSS, MASK, LossDenominators.from_masks(SEQ_MASKS)).item() == (
        pytest.approx(expected, rel=1e-6))
    loss = torch.zeros(3, 400)
    loss[:2, :4] = LOSS
    loss[2] = 7.0  # a large loss on every token of the masked response
    mask = torch.zeros(3, 400)
    mask[:2, :4] = MASK
    denom = LossDenominators.from_masks([*SEQ_MASKS, torch.zeros(400)])
    assert algo.aggregate(loss, mask, denom).item() == pytest.approx(expected, rel=1e-6)


def test_dr_grpo_needs_the_generation_budget() -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        build_algorithm({"name": "dr_grpo"})
