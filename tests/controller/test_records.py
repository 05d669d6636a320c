"""controller/records.py: the `episode/` figures of tool_use runs, and what counts as generated."""

from __future__ import annotations

import pytest

from areal_sys.trajectory import Group, Trajectory
from controller.records import episode_metrics


def _traj(mask: list[int], *, calls: int = 0, errors: int = 0, turns: int = 1,
          tool_s: float = 0.0, prefix: int = 0) -> Trajectory:
    n = len(mask)
    return Trajectory("p", 0, [1], [7] * n, [0.0] * n, [0] * n, mask, prefix_len=prefix,
                      turns=turns, tool_calls=calls, tool_errors=errors, tool_s=tool_s)


def test_episode_metrics_by_source() -> None:
    called = _traj([1, 1, 0, 0, 0, 1], calls=1, turns=2, tool_s=0.5)
    failed = _traj([1, 0, 0, 1, 1, 0, 0, 1], calls=2, errors=1, turns=3, tool_s=0.25)
    plain = _traj([1, 1, 1, 1])
    g = Group(0, "p", [called, failed, plain])
    m = episode_metrics([g])
    assert m == pytest.approx({
        "episode/turns": 2.0, "episode/call_rate": 2 / 3, "episode/tool_calls": 1.0,
        "episode/tool_errors": 1 / 3, "episode/model_tokens": (3 + 4 + 4) / 3,
        "episode/tool_tokens": (3 + 4) / 3, "episode/tool_s": 0.25})
    # tool results were not sampled by the engine
    assert g.num_tokens_generated == 3 + 4 + 4


def test_a_single_turn_response_has_no_tool_tokens_even_under_an_rpo_prefix() -> None:
    t = _traj([1] * 6, prefix=2)  # the batch, not the trajectory, masks an RPO prefix
    assert t.tool_tokens == 0 and Group(0, "p", [t]).num_tokens_generated == 4


def test_a_checkpoint_written_before_episodes_existed_still_loads() -> None:
    d = _traj([1, 1]).to_dict()
    for key in ("turns", "tool_calls", "tool_errors", "tool_s"):
        d.pop(key)
    t = Trajectory.from_dict(d)
    assert (t.turns, t.tool_calls, t.tool_errors, t.tool_s) == (1, 0, 0, 0.0)
