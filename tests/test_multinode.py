"""A run across a 3-node Ray cluster on this host (real raylets, vLLM-CPU engines, a DeepSpeed
trainer, the collective weight sync between nodes).

The fixture starts a head and two worker nodes with `ray.cluster_utils.Cluster` (each node its
own raylet, object store and resources; torn down by killing every process it started). Each
node advertises one CPU and a custom resource standing in for an accelerator: the head
`trainer_node`, the workers `rollout_node`; the run asks for them (`cluster.trainer_resources`,
`cluster.rollout_resources`) with STRICT_SPREAD rollout bundles, so the trainer runs on the head
and one engine on each worker node.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from areal_sys.metrics import read_jsonl
from tests.e2e_runs import LAUNCH_TIMEOUT_S, ROOT, command

pytestmark = pytest.mark.slow

STEPS, BATCH, N, ETA = 3, 4, 4, 1


@pytest.fixture(scope="module")
def three_nodes() -> Iterator[str]:
    """A head (trainer_node) and two worker nodes (rollout_node each); yields its address."""
    cluster = _start_cluster()
    try:
        yield cluster.address
    finally:
        cluster.shutdown()


def _start_cluster(attempts: int = 3) -> Any:
    """The three nodes, started again when a raylet died starting: Ray's raylet gives its
    dashboard agent a fixed 15 s to write its port files and exits past that, which a loaded
    2-core machine can cause (the failure is Ray's start-up, not the run's)."""
    from ray.cluster_utils import Cluster

    common = {"object_store_memory": 200 << 20, "include_dashboard": False}
    for attempt in range(attempts):
        cluster = Cluster(shutdown_at_exit=True)
        try:
            cluster.add_node(num_cpus=1, resources={"trainer_node": 1}, **common)  # the head
            for _ in range(2):
                cluster.add_node(num_cpus=1, resources={"rollout_node": 1}, **common)
            cluster.wait_for_nodes()
            return cluster
        except Exception:
            cluster.shutdown()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _run(address: str, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    args = command("configs/local_tiny.yaml", run_dir, f"cluster.address={address}",
                   "rollout.num_workers=2", "cluster.placement_strategy=STRICT_SPREAD",
                   "cluster.rollout_resources={rollout_node: 1}",
                   "cluster.trainer_resources={trainer_node: 1}",
                   f"trainer.total_steps={STEPS}", f"controller.batch_size={BATCH}",
                   f"rollout.n_samples={N}", f"controller.max_staleness={ETA}",
                   "rollout.max_new_tokens=48", "eval.before_and_after=false", *extra)
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT_S)


def test_a_run_the_cluster_cannot_hold_fails_fast_with_exit_2(three_nodes: str,
                                                               tmp_path: Path) -> None:
    res = _run(three_nodes, tmp_path / "short", "cluster.rollout_gpus=1")
    assert res.returncode == 2, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("areal-sys: error: cluster: the run needs") and "GPU 2" in last


def test_shm_file_is_refused_when_engines_are_on_other_nodes(three_nodes: str,
                                                              tmp_path: Path) -> None:
    res = _run(three_nodes, tmp_path / "shm", "trainer.weight_sync=shm_file")
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.weight_sync=shm_file: rollout worker" in lines[0]
    assert "use trainer.weight_sync=collective" in lines[0]


def test_the_loop_runs_across_three_nodes(three_nodes: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    res = _run(three_nodes, run_dir, "trainer.weight_sync=collective")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    # where each actor ran: the trainer on the head, one engine on each worker node
    placed = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "placement"]
    assert len(placed) == 1
    trainer, engines = placed[0]["trainer"], placed[0]["rollout"]
    assert len(trainer) == 1 and len(engines) == 2 and len(set(engines)) == 2
    assert trainer[0] not in engines
    # the collective weight sync between nodes, every step
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(STEPS))
    assert all(m["sync_s"] > 0 for m in metrics)
    # the staleness audit: every trained trajectory once, within the bound
    audit = read_jsonl(run_dir / "staleness.jsonl")
    assert len(audit) == STEPS * BATCH * N
    assert len({(a["group_id"], a["prompt_uid"]) for a in audit}) == STEPS * BATCH
    for a in audit:
        assert a["trainer_version"] - a["min_token_version"] <= ETA
        assert a["min_token_version"] <= a["max_token_version"] <= a["trainer_version"]
    assert {t["worker"] for t in read_jsonl(run_dir / "timeline.jsonl")
            if t.get("kind") == "generate"} == {"rollout0", "rollout1"}
