"""The shared real-component launches (tests/e2e_runs.py) as session fixtures: each launch runs
once, when the first test that needs it starts, however many test files read it. Only tests
marked `slow` and `e2e` ask for them, so `make test-fast` starts none."""

from __future__ import annotations

from typing import Any

import pytest

from tests import e2e_runs


@pytest.fixture(scope="session")
def async_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """RPO + DAPO, eta 2, two trainer ranks, collective weight sync, rewards from an HTTP
    server, submitted with `ray job submit` to a Ray head started for it."""
    return e2e_runs.async_run(tmp_path_factory.mktemp("async_rpo_dapo"))


@pytest.fixture(scope="session")
def resume_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """PPO whose rollout worker is killed after two steps, then crashed while writing its step-4
    checkpoint, then resumed to the end."""
    return e2e_runs.resume_run(tmp_path_factory.mktemp("resume_ppo"))

