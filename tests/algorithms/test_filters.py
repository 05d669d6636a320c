"""Group filters: which scored groups enter the buffer."""

import pytest
import torch

from areal_sys.algorithms.registry import FILTER, plugins

ALL_RIGHT, ALL_WRONG, MIXED = [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]
PM_RIGHT, PM_WRONG, PM_MIXED = [1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]

# filter -> kept? for (all correct, all wrong, mixed), with 0/1 and with ±1 rewards
EXPECTED = {
    "none": (True, True, True),
    "dynamic_sampling": (False, False, True),
    "reject_all_same": (False, False, True),
    "remove_all_wrong": (True, False, True),
    "remove_all_correct": (False, True, True),
}


def test_every_filter_is_specified() -> None:
    assert set(EXPECTED) == set(plugins(FILTER))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_filter_decisions(name: str) -> None:
    keep = plugins(FILTER)[name].fn
    for groups in ((ALL_RIGHT, ALL_WRONG, MIXED), (PM_RIGHT, PM_WRONG, PM_MIXED)):
        got = tuple(keep(torch.tensor(g), success_threshold=0.5) for g in groups)
        assert got == EXPECTED[name], (name, groups)


def test_reinforce_rej_drops_all_correct_and_all_wrong_keeps_mixed() -> None:
    keep = plugins(FILTER)["reject_all_same"].fn
    assert not keep(torch.tensor([1.0, 1.0, 1.0, 1.0]), success_threshold=0.5)
    assert not keep(torch.tensor([-1.0, -1.0, -1.0, -1.0]), success_threshold=0.5)
    assert keep(torch.tensor([1.0, -1.0, -1.0, -1.0]), success_threshold=0.5)


def test_threshold_decides_correctness() -> None:
    keep = plugins(FILTER)["dynamic_sampling"].fn
    partial = torch.tensor([0.7, 0.3])
    assert keep(partial, success_threshold=0.5)
    assert not keep(partial, success_threshold=0.2)  # both count as correct
