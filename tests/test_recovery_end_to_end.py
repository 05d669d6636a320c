"""A RolloutWorker dies mid-generation (SIGKILL to its actor process and its vLLM engine); Ray
restarts the actor, the controller restarts its engine with the current weights and re-sends the
groups it held, and the run finishes every step with no admitted group lost (real Ray, vLLM,
DeepSpeed, reward service on CPU)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from areal_sys.metrics import read_jsonl
from controller import checkpoint
from tests.shm import remove_leaked_shm, shm_names

ROOT = Path(__file__).resolve().parent.parent
STEPS, BATCH, N = 6, 4, 4

pytestmark = pytest.mark.slow


def _rollout_actor(driver: int) -> psutil.Process | None:
    for p in psutil.Process(driver).children(recursive=True):
        try:
            if "RolloutWorker" in " ".join(p.cmdline()):
                return p
        except psutil.Error:
            continue
    return None


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run_dir = tmp_path_factory.mktemp("recovery")
    shm_before = shm_names()
    cmd = [
        sys.executable, "-m", "areal_sys.cli", "run", "configs/local_tiny.yaml",
        f"run_dir={run_dir}", f"trainer.total_steps={STEPS}", f"controller.batch_size={BATCH}",
        f"rollout.n_samples={N}", "controller.max_staleness=1", f"trainer.save_every={STEPS}",
        "rollout.max_new_tokens=120", "eval.before_and_after=false", "logging.progress_bar=false",
        "model.tiny_sft_steps=40",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 600
    metrics = run_dir / "metrics.jsonl"
    while not metrics.exists() or len(read_jsonl(metrics)) < 2:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    actor = _rollout_actor(proc.pid)
    assert actor is not None
    victims = [actor, *actor.children(recursive=True)]  # the actor and its engine process
    for p in victims:
        p.send_signal(signal.SIGKILL)
    killed_at = len(read_jsonl(metrics))
    out, err = proc.communicate(timeout=900)
    remove_leaked_shm(shm_before)  # the killed engine's segments (the run cleaned up its own)
    assert proc.returncode == 0, err[-4000:]
    return {"run_dir": run_dir, "killed_at": killed_at, "victims": len(victims), "stdout": out}


def test_worker_restarted_and_its_groups_resent(run: dict[str, Any]) -> None:
    events = read_jsonl(run["run_dir"] / "events.jsonl")
    kinds = Counter(e["event"] for e in events)
    assert run["victims"] >= 2  # actor process + engine core
    assert kinds["rollout_worker_died"] == 1 and kinds["rollout_worker_restarted"] == 1
    assert kinds["group_resent"] >= 1  # it held groups when it died
    assert run["killed_at"] < STEPS


def test_run_finished_and_no_admitted_group_lost(run: dict[str, Any]) -> None:
    run_dir = run["run_dir"]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(STEPS))
    audit = read_jsonl(run_dir / "staleness.jsonl")
    per_group = Counter(a["group_id"] for a in audit)
    assert len(per_group) == STEPS * BATCH and set(per_group.values()) == {N}
    for a in audit:
        assert a["trainer_version"] - a["min_token_version"] <= 1
    state = checkpoint.load_state(run_dir / "checkpoints" / f"step_{STEPS}")
    places = [set(per_group), {seq for seq, _, _ in state["buffered"]},
              {seq for seq, *_ in state["inflight"]}]
    assert sum(len(p) for p in places) == len(set().union(*places))
    assert set().union(*places) == set(range(state["next_seq"]))
    resent = {e["group_id"] for e in read_jsonl(run_dir / "events.jsonl")
              if e["event"] == "group_resent"}
    assert resent <= set().union(*places)
