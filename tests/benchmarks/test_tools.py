"""benchmarks/tools.py: the call rate before and after, paired by seed, and its runs' config."""

from __future__ import annotations

import argparse

import pytest

from benchmarks.tools import CONFIG, call_rates


def test_call_rates_are_paired_by_seed_in_points() -> None:
    before = {1: {"eval": {"call_rate": 0.2}}, 2: {"eval": {"call_rate": 0.25}},
              3: {"eval": {"call_rate": 0.1}}}
    runs = {1: {"eval_final": {"call_rate": 0.9}}, 2: {"eval_final": {"call_rate": 0.75}}}
    out = call_rates(before, runs)
    assert out["before"]["values"] == pytest.approx([20.0, 25.0])  # seed 3 never trained
    assert out["after"]["values"] == pytest.approx([90.0, 75.0])
    assert out["rise"]["values"] == pytest.approx([70.0, 50.0])
    assert out["rise"]["mean"] == pytest.approx(60.0)
    assert call_rates({}, runs) == {"before": None, "after": None, "rise": None}


def test_the_runs_are_tool_episodes_on_the_tool_task() -> None:
    from areal_sys.config import load_config
    from benchmarks.common import learning_overrides

    a = argparse.Namespace(tiny_seed=1, task="tool_mul", steps=40, batch_size=16, n_samples=8,
                           eval_problems=512, eval_k=4)
    cfg = load_config(CONFIG, [*learning_overrides(a, curve_points=1), "seed=2"])
    assert cfg.data.synthetic_task == "tool_mul" and cfg.rollout.episode.kind == "tool_use"
    assert cfg.eval.every == 40 and not cfg.eval.before_and_after
