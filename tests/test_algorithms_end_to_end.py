"""One real run per algorithm family (not per preset) through the whole pipeline on CPU: vLLM
rollout worker, Ray actors, reward service, DeepSpeed trainer (and, for PPO, the critic). Each
family rides on a launch another end-to-end file needs anyway (tests/e2e_runs.py):

- group-relative (GRPO, Dr.GRPO, DAPO): DAPO (with RPO's partial rollouts) in `async_run`, the one
  that exercises most: the dynamic-sampling filter, rewards +-1 and the soft overlong punishment;
- critic (PPO): `resume_run`, whose critic trains every step across a rollout worker's death, a
  crash and a resume;
- sample selection (RAFT, RAFT++, Reinforce-Rej): RAFT++ in the multi-node run
  (test_multinode.py, its test of this family): the remove-all-wrong filter, RAFT weights (only
  correct responses train) through the ratio loss, across the loss of nodes and a resume.

The presets not launched here (GRPO, Dr.GRPO, REINFORCE, Reinforce-Rej, RAFT) differ from these
only in pieces the unit tests in tests/algorithms cover; tests/test_configs.py validates each
preset's config and builds its algorithm. The assertions read the run's files: metrics.jsonl, the
staleness audit and filtered.jsonl.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from areal_sys.config import load_config
from areal_sys.metrics import read_jsonl
from tests.e2e_checks import check_filtered_never_trained, check_steps_and_staleness
from tests.e2e_runs import Async, Resume

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_group_relative_dapo(async_run: dict[str, Any]) -> None:
    run_dir = async_run["run_dir"]
    check_steps_and_staleness(run_dir, steps=Async.STEPS, batch=Async.BATCH, eta=Async.ETA)
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.algorithm.filter == "dynamic_sampling" and cfg.algorithm.overlong_penalty
    audit = read_jsonl(run_dir / "staleness.jsonl")
    assert {a["reward"] for a in audit} <= {1.0, -1.0}  # the audit keeps raw rewards
    check_filtered_never_trained(run_dir)
    assert all("train/value_loss" not in m for m in read_jsonl(run_dir / "metrics.jsonl"))


def test_critic_ppo(resume_run: dict[str, Any]) -> None:
    run_dir = resume_run["run_dir"]
    check_steps_and_staleness(run_dir, steps=Resume.STEPS, batch=Resume.BATCH, eta=1)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    for m in metrics:  # the critic trains every step, and so does the policy (no filter)
        assert math.isfinite(m["train/value_loss"]) and "train/critic_grad_norm" in m
        assert m["train/n_loss_tokens"] > 0
    assert check_filtered_never_trained(run_dir) == []  # PPO has no filter
    assert all(m["groups_filtered"] == 0 for m in read_jsonl(run_dir / "metrics.jsonl"))
