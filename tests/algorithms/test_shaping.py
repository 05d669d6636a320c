"""Overlong filtering and the soft overlong punishment (DAPO)."""

import pytest
import torch

from areal_sys.algorithms import overlong_keep_mask, overlong_penalty
from areal_sys.algorithms.shaping import resolve_overlong_lengths


def test_soft_overlong_punishment_sanity_values() -> None:
    lengths = torch.tensor([100, 16384, 18432, 20480, 30000])
    pen = overlong_penalty(lengths, max_len=20480, cache_len=4096)
    assert pen.tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])


def test_penalty_rejects_a_cache_longer_than_the_budget() -> None:
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty(torch.tensor([1]), max_len=10, cache_len=20)


def test_overlong_filter_mask() -> None:
    assert overlong_keep_mask(["stop", "length", "abort"]).tolist() == [1.0, 0.0, 1.0]


def test_resolve_lengths() -> None:
    assert resolve_overlong_lengths(None, None, 20480) == (20480, 4096)
    assert resolve_overlong_lengths(100, 30, 20480) == (100, 30)
    assert resolve_overlong_lengths(None, None, 3) == (3, 1)
    with pytest.raises(ValueError, match="overlong_max_len"):
        resolve_overlong_lengths(None, None, None)
    with pytest.raises(ValueError, match="overlong_cache_len"):
        resolve_overlong_lengths(None, 500, 160)
