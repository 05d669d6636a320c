"""The long-chain tasks' warm start: the gate, its record, caching by task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from areal_sys.models.chain_model import (
    ChainWarmStart,
    chain_model_key,
    ensure_chain_model,
    gate_passed,
    injected_from_end,
    lr_factor,
)
from areal_sys.models.tiny import ensure_tiny_model


def test_gate_holds_every_position_to_its_own_rate() -> None:
    injected = [0.25, 0.25, 0.003, 0.003]
    # bounds: 1.5 * 0.25 + 0.02 = 0.395 in the tail, 1.5 * 0.003 + 0.02 = 0.0245 before it
    assert gate_passed([0.39, 0.30, 0.02, 0.0], injected, tolerance=1.5, slack=0.02)
    assert not gate_passed([0.40, 0.30, 0.02, 0.0], injected, tolerance=1.5, slack=0.02)
    assert not gate_passed([0.10, 0.10, 0.03, 0.0], injected, tolerance=1.5, slack=0.02)
    assert gate_passed([0.0] * 4, injected, tolerance=1.5, slack=0.02)  # sharper is fine
    with pytest.raises(ValueError):
        gate_passed([0.1], injected, tolerance=1.5, slack=0.02)


def test_injected_rates_by_position_from_the_end() -> None:
    assert injected_from_end("chain_tail", 4) == [0.25, 0.25, 0.003, 0.003]
    assert injected_from_end("chain_uniform", 3) == [0.045] * 3


def test_lr_warms_up_then_decays_to_its_floor() -> None:
    s = ChainWarmStart(warmup_steps=10, chunk_steps=50, max_chunks=2, final_lr_frac=0.1)
    assert lr_factor(0, s) == pytest.approx(0.1)
    assert lr_factor(9, s) == pytest.approx(1.0)
    assert lr_factor(10, s) == pytest.approx(1.0)
    assert lr_factor(55, s) == pytest.approx(0.55)  # halfway through the cosine: the mean
    assert lr_factor(100, s) == pytest.approx(0.1)
    assert lr_factor(500, s) == pytest.approx(0.1)


def test_cache_key_depends_on_task_seed_and_settings() -> None:
    s = ChainWarmStart()
    keys = {chain_model_key("chain_tail", 1, s), chain_model_key("chain_uniform", 1, s),
            chain_model_key("chain_tail", 2, s),
            chain_model_key("chain_tail", 1, ChainWarmStart(chunk_steps=10))}
    assert len(keys) == 4


@pytest.mark.integration  # trains two tiny models for a few steps
def test_build_records_the_gate_and_is_reused(tmp_path: Path) -> None:
    settings = ChainWarmStart(base_sft_steps=2, chunk_steps=2, max_chunks=2, gate_problems=4,
                              batch_size=4, max_new_tokens=40)
    path = ensure_chain_model("chain_tail", seed=0, cache_dir=tmp_path, progress=False,
                              settings=settings)
    assert path.name == f"tiny-chain_tail-{chain_model_key('chain_tail', 0, settings)}"
    record = json.loads((path / "warm_start.json").read_text())
    # two steps of training cannot reach the demonstrator's rates: both chunks run, gate fails
    assert record["gate_passed"] is gate_passed(record["step_error_from_end"],
                                                record["injected_from_end"], 1.5, 0.02)
    assert record["steps"] == 2 * len(record["history"]) and len(record["history"]) <= 2
    assert record["gate_passed"] or len(record["history"]) == 2
    assert len(record["step_error_from_end"]) == 12
    base = ensure_tiny_model(seed=0, sft_steps=2, cache_dir=tmp_path, progress=False)
    assert record["base_model"] == base.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([base.name, path.name])
    mtime = (path / "warm_start.json").stat().st_mtime_ns
    assert ensure_chain_model("chain_tail", seed=0, cache_dir=tmp_path, progress=False,
                              settings=settings) == path
    assert (path / "warm_start.json").stat().st_mtime_ns == mtime
