"""RPO + DAPO through the real pipeline on CPU, submitted as a Ray job (tests/e2e_runs.py
`async_run`, 4 asynchronous steps, eta 2): the cache-fill pass, partial rollouts continuing
cached prefixes in the vLLM rollout worker, Ray actors, the reward service, the DeepSpeed trainer,
epsilon-greedy cache updates and the cache saved with the step-4 checkpoint. RPO + DAPO covers
RPO + GRPO (the same planning, cache and loss; DAPO adds its filter and rewards +-1); the planning
itself is controller logic the fake-actor harness in tests/controller checks. The assertions read
the run's files.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from areal_sys.algorithms.rpo import ExperienceCache
from areal_sys.metrics import read_jsonl
from tests.e2e_runs import Async

STEPS, BATCH, ETA, PROMPTS = Async.STEPS, Async.BATCH, Async.ETA, Async.PROMPTS

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_partial_rollouts_from_the_filled_cache(async_run: dict[str, Any]) -> None:
    run_dir = async_run["run_dir"]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["rpo_cache_fill"]["entries"] == PROMPTS  # one full response per train prompt
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(STEPS))
    for m in metrics:
        # every prompt was filled before training: a lookup misses only where a dead prefix
        # (all wrong on its last visit, rpo.heal_after = 1) is refreshed by a full rollout
        hits = round(m["rpo/cache_hit_rate"] * m["rpo/cache_lookups"])
        assert hits + m["rpo/cache_refreshes"] == m["rpo/cache_lookups"] > 0
        assert m["rpo/cache_updates"] == BATCH  # one ε-greedy update per trained group
        assert m["rpo/cache_entries"] == PROMPTS and m["rpo/cache_mib"] > 0
        assert m["prefix_len_mean"] > 0
        assert m["gen_tokens_per_sample"] < m["response_len_mean"]
        assert m["staleness_max"] <= ETA and math.isfinite(m["train/loss"])
    audit = read_jsonl(run_dir / "staleness.jsonl")
    assert len({a["group_id"] for a in audit}) == STEPS * BATCH
    partial = [a for a in audit if a["prefix_len"] > 0]
    assert len(partial) >= len(audit) // 2
    for a in audit:
        assert a["response_len"] - a["prefix_len"] >= 1  # something was generated
        # the staleness bound holds for the tokens generated in this rollout ...
        assert a["trainer_version"] - a["min_token_version"] <= ETA
        # ... while the cached prefix's age is recorded apart (filled at version 0, or stored
        # by a later update, never newer than the trainer)
        if a["prefix_len"]:
            assert 0 <= a["prefix_min_version"] <= a["trainer_version"]
        else:
            assert a["prefix_min_version"] is None
    assert {a["reward"] for a in audit} <= {1.0, -1.0}  # the audit keeps raw rewards


def test_cache_saved_with_the_checkpoint(async_run: dict[str, Any]) -> None:
    run_dir = async_run["run_dir"]
    cache = ExperienceCache.load(run_dir / "checkpoints" / f"step_{STEPS}" / "rpo_cache.npz")
    assert len(cache) == PROMPTS and cache.num_tokens > 0
    trained = {a["prompt_uid"] for a in read_jsonl(run_dir / "staleness.jsonl")}
    assert all(uid in cache for uid in trained)
