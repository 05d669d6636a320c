"""The tool task's tiny model (areal_sys/models/tool_model.py): built, measured, cached; its
tokenizer keeps whitespace when transformers loads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from areal_sys.models.tool_model import ToolWarmStart, ensure_tool_model, tool_model_key


def test_cache_key_depends_on_seed_and_settings() -> None:
    s = ToolWarmStart()
    assert tool_model_key(1, s) == tool_model_key(1, ToolWarmStart())
    assert len({tool_model_key(1, s), tool_model_key(2, s),
                tool_model_key(1, ToolWarmStart(call_prob=0.5))}) == 3


@pytest.mark.integration  # trains two tiny models for a few steps
def test_build_measures_episodes_and_is_reused(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    settings = ToolWarmStart(base_sft_steps=2, steps=3, batch_size=4, measure_problems=4)
    path = ensure_tool_model(seed=0, cache_dir=tmp_path, progress=False, settings=settings)
    record = json.loads((path / "warm_start.json").read_text())
    assert record["task"] == "tool_mul" and record["settings"]["steps"] == 3
    # rates over 4 measured episodes
    assert record["call_rate"] * 4 == int(record["call_rate"] * 4)
    assert 0.0 <= record["pass_rate"] <= 1.0 and record["build_s"] > 0
    tok = AutoTokenizer.from_pretrained(path)  # the auto_map: one token per character
    ids = tok.encode("=1776\n#### 1 2", add_special_tokens=False)
    assert len(ids) == 14 and tok.decode(ids) == "=1776\n#### 1 2"
    mtime = (path / "warm_start.json").stat().st_mtime_ns
    assert ensure_tool_model(seed=0, cache_dir=tmp_path, progress=False,
                             settings=settings) == path
    assert (path / "warm_start.json").stat().st_mtime_ns == mtime
