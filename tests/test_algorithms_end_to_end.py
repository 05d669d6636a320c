"""Every algorithm preset runs 3 asynchronous steps (eta 1) of the real pipeline on CPU: vLLM
rollout worker, Ray actors, reward service, DeepSpeed trainer (and, for PPO, the critic).

One short run per preset (configs/tiny/<name>.yaml, B = 4 groups of 4, tiny model briefly
warm-started); the assertions read the run's files: metrics.jsonl, the staleness audit and
filtered.jsonl. About 70 s per preset on 2 cores.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch

from areal_sys.algorithms import build_algorithm
from areal_sys.algorithms.presets import PRESETS
from areal_sys.config import load_config
from areal_sys.metrics import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
STEPS, BATCH, N, ETA = 3, 4, 4, 1
EVERY_ALGORITHM = ("train/entropy", "train/kl_to_initial", "train/clip_frac",
                   "train/behav_weight_mean", "train/behav_weight_max", "train/filtered_frac",
                   "train/response_len_mean", "groups_filtered", "filtered_frac")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=sorted(PRESETS))
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    name = request.param
    run_dir = tmp_path_factory.mktemp(f"algo_{name}")
    args = [
        sys.executable, "-m", "areal_sys.cli", "run", f"configs/tiny/{name}.yaml",
        f"run_dir={run_dir}", f"trainer.total_steps={STEPS}", f"controller.batch_size={BATCH}",
        f"rollout.n_samples={N}", f"controller.max_staleness={ETA}",
        "eval.before_and_after=false", "logging.progress_bar=false", "model.tiny_sft_steps=40",
    ]
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    cfg = load_config(run_dir / "config.yaml")
    return name, cfg, run_dir


def test_steps_metrics_and_staleness_bound(run: Any) -> None:
    name, cfg, run_dir = run
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(STEPS))
    for m in metrics:
        for key in EVERY_ALGORITHM:
            assert key in m and math.isfinite(m[key]), (name, key)
        assert m["staleness_max"] <= ETA
    audit = read_jsonl(run_dir / "staleness.jsonl")
    assert len({a["group_id"] for a in audit}) == STEPS * BATCH  # B groups per step, each once
    for a in audit:
        assert a["trainer_version"] - a["min_token_version"] <= ETA
    if name in ("dapo", "reinforce_rej"):
        assert {a["reward"] for a in audit} <= {1.0, -1.0}


def test_filtered_groups_are_recorded_and_never_trained(run: Any) -> None:
    name, cfg, run_dir = run
    algo = build_algorithm(cfg.algorithm, max_new_tokens=cfg.rollout.max_new_tokens)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    filtered = read_jsonl(run_dir / "filtered.jsonl") if (run_dir / "filtered.jsonl").exists() \
        else []
    assert len(filtered) >= sum(m["groups_filtered"] for m in metrics)  # drops after the last
    for f in filtered:
        assert not algo.filter(torch.tensor(f["rewards"]))
    trained = defaultdict(list)
    for a in read_jsonl(run_dir / "staleness.jsonl"):
        trained[a["group_id"]].append(a["reward"])
    assert not {f["group_id"] for f in filtered} & set(trained)
    bypassed = sum(m["groups_filter_bypassed"] for m in metrics)
    rejected_but_trained = sum(not algo.filter(torch.tensor(r)) for r in trained.values())
    assert rejected_but_trained <= bypassed
    if cfg.algorithm.filter == "none":
        assert filtered == [] and all(m["groups_filtered"] == 0 for m in metrics)


def test_algorithm_specific_signals(run: Any) -> None:
    name, cfg, run_dir = run
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    audit = read_jsonl(run_dir / "staleness.jsonl")
    if name == "ppo":  # the critic trains every step
        for m in metrics:
            assert math.isfinite(m["train/value_loss"]) and "train/critic_grad_norm" in m
    else:
        assert all("train/value_loss" not in m for m in metrics)
    if name in ("raft", "raft_pp"):  # only correct responses train: loss tokens = their tokens
        for m in metrics:
            correct = sum(a["response_len"] for a in audit
                          if a["step"] == m["step"] and a["reward"] >= 0.5)
            assert m["train/n_loss_tokens"] == correct
