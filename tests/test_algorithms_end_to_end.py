"""One real run per algorithm family (not per preset) through the whole pipeline on CPU: vLLM
rollout worker, Ray actors, reward service, DeepSpeed trainer (and, for PPO, the critic). Each
family rides on a launch another end-to-end file needs anyway (tests/e2e_runs.py):

- group-relative (GRPO, Dr.GRPO, DAPO): DAPO (with RPO's partial rollouts) in `async_run`, the one
  that exercises most: the dynamic-sampling filter, rewards +-1 and the soft overlong punishment;
- critic (PPO): `recovery_run`, whose critic trains every step across a rollout worker's death;
- sample selection (RAFT, RAFT++, Reinforce-Rej): RAFT++ in `resume_run`: the remove-all-wrong
  filter, RAFT weights (only correct responses train) through the ratio loss, across a resume.

The presets not launched here (GRPO, Dr.GRPO, REINFORCE, Reinforce-Rej, RAFT) differ from these
only in pieces the unit tests in tests/algorithms cover; tests/test_configs.py validates each
preset's config and builds its algorithm. The assertions read the run's files: metrics.jsonl, the
staleness audit and filtered.jsonl.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch

from areal_sys.algorithms import build_algorithm
from areal_sys.config import load_config
from areal_sys.metrics import read_jsonl
from tests.e2e_runs import Async, Recovery, Resume

# train/kl_to_initial is off by default (a reference forward for a metric): the trainer's tests
# cover it, on and on its schedule
EVERY_ALGORITHM = ("train/entropy", "train/clip_frac",
                   "train/behav_weight_mean", "train/behav_weight_max", "train/filtered_frac",
                   "train/response_len_mean", "groups_filtered", "filtered_frac")

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _check_steps_and_staleness(run_dir: Path, *, steps: int, batch: int, eta: int) -> None:
    """Every step logged once with every algorithm's metrics, B groups trained per step, each
    once, and the staleness bound on every trained trajectory."""
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(steps))
    for m in metrics:
        for key in EVERY_ALGORITHM:
            assert key in m and math.isfinite(m[key]), key
        assert m["staleness_max"] <= eta
    audit = read_jsonl(run_dir / "staleness.jsonl")
    assert len({a["group_id"] for a in audit}) == steps * batch
    for a in audit:
        assert a["trainer_version"] - a["min_token_version"] <= eta


def _check_filtered_never_trained(run_dir: Path) -> list[dict[str, Any]]:
    """Every group the filter dropped is in filtered.jsonl, is one the algorithm's filter rejects,
    and was never trained; a rejected group in a batch anyway (at advantage 0 and mask 0) was
    counted as bypassed (the refill bound). Returns the filtered records."""
    cfg = load_config(run_dir / "config.yaml")
    algo = build_algorithm(cfg.algorithm, max_new_tokens=cfg.rollout.max_new_tokens)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    path = run_dir / "filtered.jsonl"
    filtered = read_jsonl(path) if path.exists() else []
    assert len(filtered) >= sum(m["groups_filtered"] for m in metrics)  # drops after the last
    assert all(not algo.filter(torch.tensor(f["rewards"])) for f in filtered)
    trained = defaultdict(list)
    for a in read_jsonl(run_dir / "staleness.jsonl"):
        trained[a["group_id"]].append(a["reward"])
    assert not {f["group_id"] for f in filtered} & set(trained)
    bypassed = sum(m["groups_filter_bypassed"] for m in metrics)
    assert sum(not algo.filter(torch.tensor(r)) for r in trained.values()) <= bypassed
    return filtered


def test_group_relative_dapo(async_run: dict[str, Any]) -> None:
    run_dir = async_run["run_dir"]
    _check_steps_and_staleness(run_dir, steps=Async.STEPS, batch=Async.BATCH, eta=Async.ETA)
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.algorithm.filter == "dynamic_sampling" and cfg.algorithm.overlong_penalty
    audit = read_jsonl(run_dir / "staleness.jsonl")
    assert {a["reward"] for a in audit} <= {1.0, -1.0}  # the audit keeps raw rewards
    _check_filtered_never_trained(run_dir)
    assert all("train/value_loss" not in m for m in read_jsonl(run_dir / "metrics.jsonl"))


def test_critic_ppo(recovery_run: dict[str, Any]) -> None:
    run_dir = recovery_run["run_dir"]
    _check_steps_and_staleness(run_dir, steps=Recovery.STEPS, batch=Recovery.BATCH, eta=1)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    for m in metrics:  # the critic trains every step, and so does the policy (no filter)
        assert math.isfinite(m["train/value_loss"]) and "train/critic_grad_norm" in m
        assert m["train/n_loss_tokens"] > 0
    assert _check_filtered_never_trained(run_dir) == []  # PPO has no filter
    assert all(m["groups_filtered"] == 0 for m in read_jsonl(run_dir / "metrics.jsonl"))


def test_sample_selection_raft_pp(resume_run: dict[str, Any]) -> None:
    run_dir = resume_run["run_dir"]
    _check_steps_and_staleness(run_dir, steps=Resume.STEPS, batch=Resume.BATCH, eta=1)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    audit = read_jsonl(run_dir / "staleness.jsonl")
    for m in metrics:  # only correct responses train: loss tokens = their tokens
        correct = sum(a["response_len"] for a in audit
                      if a["step"] == m["step"] and a["reward"] >= 0.5)
        assert m["train/n_loss_tokens"] == correct
    filtered = _check_filtered_never_trained(run_dir)
    assert all(max(f["rewards"]) < 0.5 for f in filtered)  # only all-wrong groups are dropped
    assert all("train/value_loss" not in m for m in metrics)
