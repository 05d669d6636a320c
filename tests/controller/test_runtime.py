"""controller/runtime.py's choice of Ray cluster and its logging set-up (ray.init is replaced by a
recording fake): Ray streams the actors' output to the driver only with `logging.verbose`;
otherwise each actor is told its own file in RUN_DIR/logs."""

from __future__ import annotations

from typing import Any

import pytest
import ray

from areal_sys.config import load_config
from areal_sys.console import LOG_FILE_ENV
from controller.runtime import _env, _log, start_ray


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


def test_ray_streams_to_the_driver_only_when_verbose(calls, tmp_path) -> None:
    start_ray(load_config(None, [f"run_dir={tmp_path}"]))
    start_ray(load_config(None, [f"run_dir={tmp_path}", "logging.verbose=true"]))
    start_ray(load_config(None, [f"run_dir={tmp_path}", "cluster.address=10.0.0.1:6379"]))
    assert [c["log_to_driver"] for c in calls] == [False, True, False]


def test_each_actor_gets_its_own_log_file_unless_verbose(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["run_dir=runs/a"])
    env = _env({"AREAL_SYS_CPU_CORES": "1"}, _log(cfg, "trainer-0"))["env_vars"]
    assert env[LOG_FILE_ENV] == str(tmp_path / "runs" / "a" / "logs" / "trainer-0.log")
    assert env["AREAL_SYS_CPU_CORES"] == "1" and "PYTHONPATH" in env
    loud = load_config(None, ["run_dir=runs/a", "logging.verbose=true"])
    assert LOG_FILE_ENV not in _env(_log(loud, "trainer-0"))["env_vars"]
