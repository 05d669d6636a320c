"""The asynchronous run of the real pipeline (tests/e2e_runs.py `async_run`): vLLM-CPU rollout
worker, Ray actors, reward server, DeepSpeed trainer, weight pushes. With eta = 2 generation must
overlap training while every token obeys the staleness bound; the run also takes the scale-out
paths inside the loop: two data-parallel trainer ranks and the collective weight sync (gloo
broadcast through Ray actors).

That eta = 0 is synchronous (no generation while the trainer updates) is controller logic: the
fake-actor harness in tests/controller checks it in seconds. That the tokens of a response
interrupted by a weight push come from the new weights is forced and checked in
tests/workers/test_rollout.py (a short run on 2 cores may see no interruption).
"""

from typing import Any

import pytest

from areal_sys.metrics import read_jsonl
from tests.e2e_runs import Async

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_run_writes_its_outputs(async_run: dict[str, Any]) -> None:
    run_dir = async_run["run_dir"]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(Async.STEPS))
    assert [m["version"] for m in metrics] == list(range(1, Async.STEPS + 1))
    for m in metrics:
        for key in ("reward_mean", "tokens_generated", "staleness_max", "step_time_s",
                    "overlap_tokens", "sync_s"):
            assert key in m, key
        assert m["tokens_generated"] > 0
        assert m["staleness_max"] <= Async.ETA
        assert m["sync_s"] > 0 and m["train/n_tokens"] > 0
    # (loss tokens may be 0 in every step here: the briefly trained model gets nearly every
    # problem wrong, RPO's cached prefixes keep it so, DAPO's filter drops all-wrong groups and
    # the ones past its refill bound train at advantage 0; the PPO run's loss tokens are checked
    # in test_algorithms_end_to_end.py)


def test_two_trainer_ranks_and_the_collective_weight_sync(async_run: dict[str, Any]) -> None:
    run_dir = async_run["run_dir"]
    config = (run_dir / "config.yaml").read_text()
    assert "weight_sync: collective" in config and "num_workers: 2" in config
    assert all(m["train/rank_imbalance"] < 0.5 for m in read_jsonl(run_dir / "metrics.jsonl"))


def test_staleness_audit_obeys_the_bound(async_run: dict[str, Any]) -> None:
    audit = read_jsonl(async_run["run_dir"] / "staleness.jsonl")
    per_step = Async.BATCH * Async.N
    assert len(audit) == Async.STEPS * per_step  # every trained trajectory, once
    assert len({(a["group_id"], a["prompt_uid"]) for a in audit}) == Async.STEPS * Async.BATCH
    for a in audit:
        assert a["trainer_version"] - a["min_token_version"] <= Async.ETA
        assert a["min_token_version"] <= a["max_token_version"] <= a["trainer_version"]
        assert a["trainer_version"] - a["admit_version"] <= Async.ETA


def test_generation_overlaps_training(async_run: dict[str, Any]) -> None:
    metrics = read_jsonl(async_run["run_dir"] / "metrics.jsonl")
    assert sum(m["overlap_tokens"] for m in metrics) > 0
