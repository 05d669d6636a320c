"""A RolloutWorker dies mid-run (tests/e2e_runs.py `resume_run`: SIGKILL to its actor process
and its vLLM engine after two steps); Ray restarts the actor, the controller restarts its engine
with the current weights and re-sends the groups it held, and the run trains on (real Ray, vLLM,
DeepSpeed, reward service and a PPO critic on CPU). The same run is later crashed and resumed
(test_resume_end_to_end.py): its final records show every step once and no admitted group
lost, including those the dead worker held."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from areal_sys.metrics import read_jsonl
from tests.e2e_checks import check_group_places
from tests.e2e_runs import Resume

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_worker_restarted_and_its_groups_resent(resume_run: dict[str, Any]) -> None:
    events = read_jsonl(resume_run["run_dir"] / "events.jsonl")
    kinds = Counter(e["event"] for e in events)
    assert resume_run["victims"] >= 2  # actor process + engine core
    assert kinds["rollout_worker_died"] == 1 and kinds["rollout_worker_restarted"] == 1
    assert kinds["group_resent"] >= 1  # it held groups when it died
    assert resume_run["killed_at"] < Resume.CRASH_AT  # killed before the crash


def test_no_admitted_group_lost(resume_run: dict[str, Any]) -> None:
    """The groups the dead worker held were re-sent, and each is in one place at the end (the
    resume test checks every step and group of the run)."""
    run_dir = resume_run["run_dir"]
    uid_of = check_group_places(run_dir, run_dir / "checkpoints" / f"step_{Resume.STEPS}")
    resent = {e["group_id"] for e in read_jsonl(run_dir / "events.jsonl")
              if e["event"] == "group_resent"}
    assert resent and resent <= set(uid_of)
