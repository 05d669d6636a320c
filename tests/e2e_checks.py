"""Checks of a finished run's files that test_algorithms_end_to_end.py and test_multinode.py
share: every step with every algorithm's metrics, the staleness bound, and the filter's drops
never trained."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from areal_sys.algorithms import build_algorithm
from areal_sys.config import load_config
from areal_sys.metrics import read_jsonl

# train/kl_to_initial is off by default (a reference forward for a metric): the trainer's tests
# cover it, on and on its schedule
EVERY_ALGORITHM = ("train/entropy", "train/clip_frac",
                   "train/behav_weight_mean", "train/behav_weight_max", "train/filtered_frac",
                   "train/response_len_mean", "groups_filtered", "filtered_frac")


def check_steps_and_staleness(run_dir: Path, *, steps: int, batch: int, eta: int) -> None:
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


def check_filtered_never_trained(run_dir: Path) -> list[dict[str, Any]]:
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
