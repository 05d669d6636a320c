"""Checks of a finished run's files that several end-to-end files share: every step with every
algorithm's metrics, the staleness bound, the filter's drops never trained, and every admitted
group in exactly one place."""

from __future__ import annotations

import json
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


def _split_at_checkpoint(path: Path, size: int) -> tuple[list[dict], list[dict]]:
    """The JSON lines of `path` written before a checkpoint that recorded its size as `size`,
    and those written after it."""
    data = path.read_bytes() if path.exists() else b""
    return ([json.loads(line) for line in data[:size].splitlines()],
            [json.loads(line) for line in data[size:].splitlines()])


def check_group_places(run_dir: Path, ckpt: Path) -> dict[int, str]:
    """Every group the run admitted (group ids 0 .. next_seq - 1 of its final checkpoint `ckpt`)
    is in exactly one place: trained (the staleness audit, all n samples in one step), dropped
    by the filter, buffered or in flight at the checkpoint. Returns {group id: prompt uid}."""
    from controller import checkpoint

    audit = read_jsonl(run_dir / "staleness.jsonl")
    steps_of: dict[int, int] = {}
    for a in audit:  # one step per group
        assert steps_of.setdefault(a["group_id"], a["step"]) == a["step"]
    state = checkpoint.load_state(ckpt)
    # drops recorded after the final checkpoint are groups it holds in flight or groups admitted
    # after it (a resume from it would cut them away and send those groups again)
    filtered, later = _split_at_checkpoint(run_dir / "filtered.jsonl",
                                           state["files"]["filtered.jsonl"])
    buffered = {seq: g.prompt_uid for seq, _, g in state["buffered"]}
    inflight = {seq: prompt.uid for seq, prompt, _, _ in state["inflight"]}
    trained = {a["group_id"]: a["prompt_uid"] for a in audit}
    dropped = {f["group_id"]: f["prompt_uid"] for f in filtered}
    places = [set(trained), set(buffered), set(inflight), set(dropped)]
    assert sum(len(p) for p in places) == len(set().union(*places))  # disjoint
    assert set().union(*places) == set(range(state["next_seq"]))  # nothing lost
    assert all(f["group_id"] in inflight or f["group_id"] >= state["next_seq"] for f in later)
    return {**trained, **buffered, **inflight, **dropped}
