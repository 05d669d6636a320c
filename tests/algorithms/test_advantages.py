"""Group advantage estimators against the hand-checked values of ALGORITHMS.md."""

import pytest
import torch

from areal_sys.algorithms import (
    broadcast_to_tokens,
    dr_grpo_advantages,
    grpo_advantages,
    raft_weights,
    reinforce_advantages,
    rloo_advantages,
)


def _t(x: list[float]) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def test_grpo_unbiased_and_population_std() -> None:
    a = grpo_advantages(_t([1, 0, 0, 0]), std="unbiased")
    assert torch.allclose(a, _t([1.5, -0.5, -0.5, -0.5]), atol=1e-5)
    a = grpo_advantages(_t([1, 0, 0, 0]), std="population")
    assert torch.allclose(a, _t([1.732, -0.577, -0.577, -0.577]), atol=1e-3)
    a = grpo_advantages(_t([1, 1, -1, -1]), std="unbiased")
    assert torch.allclose(a, _t([0.866, 0.866, -0.866, -0.866]), atol=1e-3)
    a = grpo_advantages(_t([1, 1, -1, -1]), std="population")
    assert torch.allclose(a, _t([1, 1, -1, -1]), atol=1e-5)


def test_grpo_degenerate_groups_are_zero() -> None:
    for std in ("unbiased", "population"):
        assert torch.equal(grpo_advantages(_t([1, 1, 1]), std=std), torch.zeros(3))
        assert torch.equal(grpo_advantages(_t([0.5]), std=std), torch.zeros(1))


def test_grpo_default_is_unbiased_and_rejects_unknown_std() -> None:
    assert torch.allclose(grpo_advantages(_t([1, 0, 0, 0]))[0], torch.tensor(1.5), atol=1e-5)
    with pytest.raises(ValueError, match="std"):
        grpo_advantages(_t([1, 0]), std="sample")  # type: ignore[arg-type]


def test_dr_grpo_has_no_std() -> None:
    assert torch.allclose(dr_grpo_advantages(_t([1, 1, -1, -1])), _t([1, 1, -1, -1]))
    assert torch.allclose(dr_grpo_advantages(_t([1, 0, 0, 0])), _t([0.75, -0.25, -0.25, -0.25]))


def test_broadcast_to_tokens() -> None:
    per_tok = broadcast_to_tokens(_t([1.5, -0.5]), [3, 1])
    assert [p.tolist() for p in per_tok] == [[1.5, 1.5, 1.5], [-0.5]]
    with pytest.raises(ValueError):
        broadcast_to_tokens(_t([1.0]), [1, 2])


def test_rloo_leave_one_out_baseline() -> None:
    a = rloo_advantages(_t([1, 0, 0, 0]))
    assert torch.allclose(a, _t([1, -1 / 3, -1 / 3, -1 / 3]), atol=1e-6)
    assert torch.allclose(rloo_advantages(_t([1, 1, -1, -1])), _t([4 / 3, 4 / 3, -4 / 3, -4 / 3]))
    assert torch.equal(rloo_advantages(_t([2.0])), torch.zeros(1))
    assert torch.equal(rloo_advantages(_t([1, 1, 1])), torch.zeros(3))


def test_reinforce_is_the_reward() -> None:
    assert reinforce_advantages(_t([1, -1, -1, 1])).tolist() == [1, -1, -1, 1]


def test_raft_weights() -> None:
    assert raft_weights(_t([1, -1, -1, -1])).tolist() == [1, 0, 0, 0]
    assert raft_weights(_t([1, 0, 1, 0])).tolist() == [1, 0, 1, 0]  # every best correct one
    assert raft_weights(_t([-1, -1])).tolist() == [0, 0]  # all wrong: nothing trains
    assert raft_weights(_t([0.4, 0.2])).tolist() == [0, 0]  # best but below the threshold
    assert raft_weights(_t([0.4, 0.2]), success_threshold=0.3).tolist() == [1, 0]
    assert raft_weights(_t([1.0, 0.6])).tolist() == [1, 0]  # a success that is not the max
