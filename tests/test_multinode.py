"""Runs across a Ray cluster of several nodes on this host (real raylets, vLLM-CPU engines, a
DeepSpeed trainer, the collective weight sync between nodes), and the loss of whole nodes.

The fixture starts a head and four worker nodes with `ray.cluster_utils.Cluster` (each node its
own raylet, object store and resources; torn down by killing every process it started). Each
node advertises one CPU; the workers also a custom resource standing in for an accelerator: one
`trainer_node`, three `rollout_node`. The runs ask for them (`cluster.trainer_resources`,
`cluster.rollout_resources`) with STRICT_SPREAD rollout bundles, so the trainer runs on a node of
its own (not the head, which a cluster cannot lose) and each engine on a worker node of its own,
with one rollout node spare.

A node is lost the way a machine is: every process it started (raylet, actors, vLLM engine
processes) gets SIGKILL at once (`_lose`).

The runs are RAFT++ (`algorithm.max_oversample_rounds=1`, as in tests/e2e_runs.py): the node-loss
run is also the end-to-end run of the sample-selection family (test_algorithms_end_to_end.py).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from areal_sys.metrics import read_jsonl
from tests.e2e_checks import (
    check_filtered_never_trained,
    check_group_places,
    check_steps_and_staleness,
)
from tests.e2e_runs import LAUNCH_TIMEOUT_S, ROOT, command, wait_for

pytestmark = pytest.mark.slow

BATCH, N, ETA = 4, 4, 1
STEPS = 6  # the continue case's run
# Ray's GCS declares a node dead after its health check fails this many times in a row (Ray's
# defaults: every 3 s, 5 failures); shortened so that a lost node is noticed in seconds here
HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
                "health_check_failure_threshold": 3}


@pytest.fixture(scope="module")
def nodes() -> Iterator[Any]:
    """A head and four worker nodes (one trainer_node, three rollout_node); yields the Cluster."""
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
            cluster.add_node(num_cpus=1, **common, _system_config=HEALTH_CHECK)  # the head
            cluster.add_node(num_cpus=1, resources={"trainer_node": 1}, **common)
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
    return command("configs/tiny/raft_pp.yaml", run_dir, f"cluster.address={address}",
                   "rollout.num_workers=2", "cluster.placement_strategy=STRICT_SPREAD",
                   "cluster.rollout_resources={rollout_node: 1}",
                   "cluster.trainer_resources={trainer_node: 1}", "trainer.total_steps=3",
                   f"controller.batch_size={BATCH}", f"rollout.n_samples={N}",
                   f"controller.max_staleness={ETA}", "rollout.max_new_tokens=48",
                   "eval.before_and_after=false", "algorithm.max_oversample_rounds=1", *extra)


def _run(address: str, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_args(address, run_dir, *extra), cwd=ROOT, capture_output=True,
                          text=True, timeout=LAUNCH_TIMEOUT_S)


def _events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    path = run_dir / "events.jsonl"
    return [e for e in read_jsonl(path) if e["event"] == kind] if path.exists() else []


def _steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [m["step"] for m in read_jsonl(path)] if path.exists() else []


def _check_audit(run_dir: Path) -> int:
    """Every trajectory given to the trainer once per step and group, within the staleness bound;
    returns the steps audited."""
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


def _run_and_lose(args: list[str], nodes: Any, what: str, ready: Callable[[], bool],
                  node: Callable[[], str]) -> dict[str, Any]:
    """Start the run `args`; once `ready()` (`what`), lose the node `node()` names; wait for the
    run's end. Returns its exit code, stderr, and when the node was lost and the run ended."""
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(what, ready, proc)
        lost_at = _lose(nodes, node())
        _, err = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
        ended_at = time.time()
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"returncode": proc.returncode, "stderr": err, "lost_at": lost_at, "ended_at": ended_at}


@pytest.fixture(scope="module")
def node_loss(nodes: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The node-loss runs (the test below says what they do), started after this module's other
    tests: they lose three of the four worker nodes. Returns what the tests read."""
    run_dir = tmp_path_factory.mktemp("node_loss") / "run"
    args = _args(nodes.address, run_dir, "trainer.weight_sync=collective", "trainer.save_every=1",
                 "trainer.keep_last=1", "controller.restart_timeout_s=20",
                 "controller.weight_sync_timeout_s=120")
    # 1. the continue case: a 6-step run whose evaluation after the last step samples on every
    # engine, so it ends only once engine 0 is back
    first = _run_and_lose(
        [*args, f"trainer.total_steps={STEPS}", "eval.before_and_after=true",
         "eval.num_problems=4"], nodes, "two steps", lambda: len(_steps(run_dir)) >= 2,
        lambda: _events(run_dir, "placement")[0]["rollout"][0])
    placed = _events(run_dir, "placement")[0]
    # the finished run's records, before the resumes below cut and extend them
    finished = run_dir.parent / "finished"
    shutil.copytree(run_dir, finished, ignore=shutil.ignore_patterns("logs"))
    continued = {**first, "placed": placed, "events": read_jsonl(run_dir / "events.jsonl"),
                 "audit_steps": _check_audit(run_dir),
                 "timeline": read_jsonl(run_dir / "timeline.jsonl"),
                 "evals": [e["tag"] for e in read_jsonl(run_dir / "eval.jsonl")]}
    # 2. the stop case: the run resumed for many more steps on the two engine nodes left; one of
    # them is lost after two steps, and no node is left to hold its engine
    second = _run_and_lose(
        [*args, "trainer.total_steps=400", "--resume"], nodes, "two more steps",
        lambda: len(_steps(run_dir)) >= STEPS + 2,
        lambda: _events(run_dir, "placement")[-1]["rollout"][1])
    trained = len(_steps(run_dir))
    stopped = {**second, "trained": trained, "audit_steps": _check_audit(run_dir)}
    # 3. `--resume` on the cluster that is left (one engine node); after one step the trainer's
    # node is lost too, mid-run
    third = _run_and_lose(
        [*args, "rollout.num_workers=1", "trainer.total_steps=400", "--resume"], nodes,
        "a step after the resume", lambda: len(_steps(run_dir)) > trained,
        lambda: placed["trainer"][0])
    resumed = {**third, "trained": len(_steps(run_dir))}
    return {"run_dir": run_dir, "finished": finished, "continued": continued, "stopped": stopped,
            "resumed": resumed}


def test_a_lost_node_is_survived_and_a_second_loss_stops_the_run_for_a_resume(
        node_loss: dict[str, Any]) -> None:
    """Runs last in this module (its fixture loses three of the four worker nodes).

    1. The loop across nodes: trainer on a node of its own, one engine on each of two worker nodes
       (STRICT_SPREAD, the `placement` event), the collective weight sync between nodes.
    2. After two steps engine 0's node is lost: its groups go to engine 1 at once and the run
       trains on (a sync never waits for the dead engine) while Ray re-places engine 0 on the
       spare node, where it starts, joins a new weight-sync group and loads the current
       weights. The run finishes its 6 steps, and its final evaluation samples on both engines.
    3. `--resume` for many more steps on the two engine nodes left; after two steps one of them
       is lost, and no node can host its engine: its groups go to the other one, and the run
       stops once controller.restart_timeout_s has passed, with exit 1 and the resume command.
    4. `--resume` on the cluster that is left (one engine node, `rollout.num_workers=1`)
       trains on, until the trainer's node is lost too: the run stops at once with exit 1 and
       the resume command. The staleness audit holds across all of it: no admitted group lost,
       none trained twice, every token within the bound."""
    run_dir, continued, stopped = node_loss["run_dir"], node_loss["continued"], node_loss["stopped"]
    trainer, engines = continued["placed"]["trainer"], continued["placed"]["rollout"]
    assert len(trainer) == 1 and len(engines) == 2 and len(set(engines)) == 2
    assert trainer[0] not in engines

    # the continue case
    assert continued["returncode"] == 0, continued["stderr"][-3000:]
    assert continued["audit_steps"] == STEPS
    events = continued["events"]
    died = [e for e in events if e["event"] == "rollout_worker_died"]
    (back,) = [e for e in events if e["event"] == "rollout_worker_restarted"]
    assert [e["worker"] for e in died] == [0] and back["worker"] == 0
    assert [e["worker"] for e in events if e["event"] == "weight_group_rejoined"] == [0]
    lost_at = continued["lost_at"]
    spans = continued["timeline"]
    trained_away = [t for t in spans if t["kind"] == "train" and lost_at < t["start"]
                    and t["end"] < back["time"]]
    assert trained_away, "no step trained while engine 0 was away"
    # the restarted engine 0 sampled again, on the spare node
    assert any(t["worker"] == "rollout0" and t["start"] > back["time"] for t in spans)
    assert continued["evals"] == ["before", "after"]
    # no admitted group lost: each in one place at the end, the re-sent ones included
    placed_groups = check_group_places(node_loss["finished"],
                                       node_loss["finished"] / "checkpoints" / f"step_{STEPS}")
    resent = {e["group_id"] for e in events if e["event"] == "group_resent"}
    assert resent and resent <= set(placed_groups)

    # the stop case
    last = stopped["stderr"].strip().splitlines()[-1]
    assert stopped["returncode"] == 1, stopped["stderr"][-3000:]
    assert "placing rollout worker 1 again did not finish within controller.restart_timeout_s=20" \
        in last and last.endswith("--resume"), last
    # how long each part took (the closing note quotes them; -s shows them)
    print(f"node loss 1: detected {died[0]['time'] - lost_at:.1f} s after, engine back "
          f"{back['time'] - lost_at:.1f} s after, {len(trained_away)} steps trained meanwhile; "
          f"node loss 2: stopped {stopped['ended_at'] - stopped['lost_at']:.1f} s after")
    assert stopped["ended_at"] - stopped["lost_at"] < 20 + 120
    # (a stopped run's audit may hold the step it was training: groups are audited as the
    # trainer gets them, and a resume cuts them away with the step)
    assert stopped["trained"] >= STEPS + 2
    assert stopped["trained"] <= stopped["audit_steps"] <= stopped["trained"] + 1

    # the resume on what is left trains on, until the trainer's node is lost: the run stops at
    # once (a trainer never restarts), with the resume command, and nothing waits in a broadcast
    resumed = node_loss["resumed"]
    last = resumed["stderr"].strip().splitlines()[-1]
    assert resumed["returncode"] == 1, resumed["stderr"][-3000:]
    assert "a trainer worker died" in last and last.endswith("--resume"), last
    print(f"trainer node lost: stopped {resumed['ended_at'] - resumed['lost_at']:.1f} s after")
    assert resumed["ended_at"] - resumed["lost_at"] < 120
    assert resumed["trained"] > stopped["trained"]
    assert resumed["trained"] <= _check_audit(run_dir) <= resumed["trained"] + 1
    assert all(m["sync_s"] > 0 for m in read_jsonl(run_dir / "metrics.jsonl"))


def test_sample_selection_raft_pp(node_loss: dict[str, Any]) -> None:
    """The sample-selection family end to end (test_algorithms_end_to_end.py): RAFT++ across the
    loss of a node, in the run that finished its steps."""
    run_dir = node_loss["finished"]
    check_steps_and_staleness(run_dir, steps=STEPS, batch=BATCH, eta=ETA)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    audit = read_jsonl(run_dir / "staleness.jsonl")
    for m in metrics:  # only correct responses train: loss tokens = their tokens
        correct = sum(a["response_len"] for a in audit
                      if a["step"] == m["step"] and a["reward"] >= 0.5)
        assert m["train/n_loss_tokens"] == correct
    filtered = check_filtered_never_trained(run_dir)
    assert all(max(f["rewards"]) < 0.5 for f in filtered)  # only all-wrong groups are dropped
    assert all("train/value_loss" not in m for m in metrics)
