"""benchmarks/rpo.py's arithmetic and summaries on hand-made per-seed runs (nothing is run)."""

from __future__ import annotations

import pytest

from benchmarks.rpo import compare, goal_on, settings_for, window_arithmetic
from benchmarks.table import rpo as rpo_row


def test_window_arithmetic_for_40_tokens_on_the_chain_tasks() -> None:
    w = window_arithmetic(40, mean_response_tokens=120.0)
    # the last step's result is regenerated when m >= 11: 30 of the 40 draws
    assert w["p_step_regenerated"] == {1: 0.75, 2: 0.55, 3: 0.35, 4: 0.15}
    assert w["mean_m"] == 20.5 and w["generated_share"] == pytest.approx(20.5 / 120)
    assert window_arithmetic(8)["p_step_regenerated"][1] == 0.0  # m <= 8 never reaches a result


def _run(pass_rate: float, tokens: float, busy: float, step: float, fill: float = 0.0):
    rows = [{"gen_tokens_per_sample": tokens, "gen_busy_s": busy, "step_time_s": step}] * 4
    return {"pass_rate": pass_rate, "metrics": rows, "cache_fill_s": fill}


def test_compare_pairs_reductions_and_pass_rate_by_seed() -> None:
    full = {1: _run(0.70, 100.0, 2.0, 4.0), 2: _run(0.60, 120.0, 2.0, 4.0)}
    rpo = {1: _run(0.66, 20.0, 0.5, 2.0, fill=2.0), 2: _run(0.62, 24.0, 1.0, 3.0),
           3: _run(0.0, 1.0, 1.0, 1.0)}
    c = compare(full, rpo)  # seed 3 has no full run: left out
    assert c["tokens_reduction"]["values"] == [0.8, 0.8]
    assert c["gen_time_reduction"]["values"] == [0.75, 0.5]
    assert c["gen_time_reduction_incl_fill"]["values"] == [1 - (2.0 + 2.0) / 8.0, 0.5]
    assert c["step_time_reduction"]["values"] == [0.5, 0.25]
    assert c["pass_rate_diff"]["values"] == pytest.approx([-4.0, 2.0])
    assert compare(full, {}) == {"n": 0}


def test_goal_on_chain_tail_needs_every_check() -> None:
    full = {1: _run(0.70, 100.0, 2.0, 4.0), 2: _run(0.60, 120.0, 2.0, 4.0)}
    rpo = {1: _run(0.66, 20.0, 0.5, 2.0), 2: _run(0.62, 24.0, 1.0, 3.0)}
    figs = {"rpo_grpo_vs_full": compare(full, rpo),
            "settings": {"full_grpo": {"gain": {"mean": 20.0}}}}
    out = goal_on(figs)
    assert out["tokens_reduction"] and out["gen_time_reduction"]  # 0.80 >= 0.80, 0.625 >= 0.60
    assert out["pass_rate_within"] and out["full_grpo_learns"] and out["verdict"] == "met"
    figs["settings"]["full_grpo"]["gain"]["mean"] = 10.0  # the task is not learnt: not met
    assert goal_on(figs)["verdict"] == "not met"
    row, _ = rpo_row({"by_task": {"chain_tail": figs}, "goal_chain_tail": goal_on(figs)})
    assert "chain_tail: tokens **-80 ± 0% (n = 2)**" in row
    assert row.endswith("(goal on chain_tail: not met)")


def test_guard_settings_run_rpo_grpo_under_each_sparse_signal_mode() -> None:
    settings = settings_for("chain_tail", ["grpo", "dapo"], ["seed=1"], guards=("scale",))
    assert [s.name for s in settings] == ["chain_tail/full_grpo", "chain_tail/rpo_grpo",
                                          "chain_tail/full_dapo", "chain_tail/rpo_dapo",
                                          "chain_tail/rpo_grpo_scale"]
    guard = settings[-1]
    assert "trainer.sparse_signal=scale" in guard.overrides
    assert "rpo.max_regen_tokens=40" in guard.overrides
    assert guard.config == "configs/tiny/rpo_grpo.yaml"
    assert all("trainer.sparse_signal=scale" not in s.overrides for s in settings[:-1])
