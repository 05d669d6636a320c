"""controller/runtime.py's choice of Ray cluster (ray.init is replaced by a recording fake)."""

from __future__ import annotations

from typing import Any

import pytest
import ray

from areal_sys.config import load_config
from controller.runtime import start_ray


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(kw))
    monkeypatch.delenv("RAY_JOB_ID", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return seen


def test_a_local_run_starts_its_own_instance_even_beside_a_ray_start_cluster(
        calls: list[dict[str, Any]], tmp_path) -> None:
    start_ray(load_config(None, [f"run_dir={tmp_path}", "cluster.num_cpus=3"]))
    assert calls[0]["address"] == "local" and calls[0]["num_cpus"] == 3


def test_a_ray_job_or_cluster_address_joins_that_cluster(
        calls: list[dict[str, Any]], tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    start_ray(load_config(None, [f"run_dir={tmp_path}", "cluster.address=10.0.0.1:6379"]))
    monkeypatch.setenv("RAY_JOB_ID", "01000000")
    start_ray(load_config(None, [f"run_dir={tmp_path}"]))
    assert [c["address"] for c in calls] == ["10.0.0.1:6379", None]
    assert all("num_cpus" not in c for c in calls)
