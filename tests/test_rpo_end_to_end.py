"""RPO + GRPO and RPO + DAPO each run 3 asynchronous steps (eta 1) of the real pipeline on CPU:
the cache-fill pass, partial rollouts continuing cached prefixes in the vLLM rollout worker, Ray
actors, the reward service, the DeepSpeed trainer, ε-greedy cache updates and the cache saved
with the step-3 checkpoint. The assertions read the run's files.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from areal_sys.algorithms.rpo import ExperienceCache
from areal_sys.metrics import read_jsonl

ROOT = Path(__file__).resolve().parent.parent
STEPS, BATCH, N, ETA, PROMPTS = 3, 4, 4, 1, 24

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["rpo_grpo", "rpo_dapo"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    name = request.param
    run_dir = tmp_path_factory.mktemp(name)
    args = [
        sys.executable, "-m", "areal_sys.cli", "run", f"configs/tiny/{name}.yaml",
        f"run_dir={run_dir}", f"trainer.total_steps={STEPS}", f"controller.batch_size={BATCH}",
        f"rollout.n_samples={N}", f"controller.max_staleness={ETA}",
        f"data.synthetic_train_size={PROMPTS}", f"trainer.save_every={STEPS}",
        "eval.before_and_after=false", "logging.progress_bar=false", "model.tiny_sft_steps=40",
    ]
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    return name, run_dir


def test_partial_rollouts_from_the_filled_cache(run: Any) -> None:
    name, run_dir = run
    results = json.loads((run_dir / "results.json").read_text())
    assert results["rpo_cache_fill"]["entries"] == PROMPTS  # one full response per train prompt
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(STEPS))
    for m in metrics:
        assert m["rpo/cache_hit_rate"] == 1.0  # every prompt was filled before training
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
    if name == "rpo_dapo":
        assert {a["reward"] for a in audit} <= {1.0, -1.0}  # the audit keeps raw rewards


def test_cache_saved_with_the_checkpoint(run: Any) -> None:
    _, run_dir = run
    cache = ExperienceCache.load(run_dir / "checkpoints" / f"step_{STEPS}" / "rpo_cache.npz")
    assert len(cache) == PROMPTS and cache.num_tokens > 0
    trained = {a["prompt_uid"] for a in read_jsonl(run_dir / "staleness.jsonl")}
    assert all(uid in cache for uid in trained)
