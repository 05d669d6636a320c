"""The summarising functions of the multi-seed benchmarks on synthetic per-seed figures, checked
by hand: staleness (paired differences, drops, the issue's goal), algorithms (the paper's
directions), async_vs_sync (the fixed-η headline)."""

import pytest

from benchmarks.algorithms import entropy_drop
from benchmarks.algorithms import summarise as algorithms_summary
from benchmarks.async_vs_sync import HEADLINE_ETA
from benchmarks.async_vs_sync import summarise as async_summary
from benchmarks.staleness import summarise as staleness_summary

EQ = {1: 0.50, 2: 0.60, 3: 0.70}


def _staleness_rates(naive_eta4: dict[int, float]) -> dict[str, dict[int, float]]:
    return {"decoupled_eta0": EQ, "naive_eta0": EQ,
            "decoupled_eta4": {1: 0.49, 2: 0.58, 3: 0.69}, "naive_eta4": naive_eta4}


def test_staleness_goal_met_when_the_intervals_show_it() -> None:
    out = staleness_summary(_staleness_rates({1: 0.40, 2: 0.50, 3: 0.62}), [0, 4])
    dec = out["drop_from_eta0"]["decoupled"]["4"]
    # drops 1, 2, 1 points: mean 4/3, s = 0.57735, half-width 4.303 * 0.57735 / sqrt(3) = 1.4343
    assert dec["values"] == pytest.approx([1.0, 2.0, 1.0])
    assert dec["ci95"] == pytest.approx(1.4343, abs=1e-4) and dec["hi"] == pytest.approx(2.7677,
                                                                                         abs=1e-4)
    naive = out["drop_from_eta0"]["naive"]["4"]
    # drops 10, 10, 8: mean 9.333, s = 1.1547, half-width 2.8687, lo 6.4646
    assert naive["mean"] == pytest.approx(28 / 3) and naive["lo"] == pytest.approx(6.4646, abs=1e-4)
    gap = out["by_eta"]["4"]["decoupled_minus_naive"]
    assert gap["values"] == pytest.approx([9.0, 8.0, 7.0]) and gap["mean"] == pytest.approx(8.0)
    assert out["by_eta"]["0"]["decoupled_minus_naive"]["mean"] == pytest.approx(0.0)
    assert out["goal"]["met_with_ci"] and out["goal"]["verdict"] == "met"


def test_staleness_goal_on_means_only_and_not_met() -> None:
    # naive drops 9, 2, 8: mean 6.33 >= 5 but the interval reaches below 5
    out = staleness_summary(_staleness_rates({1: 0.41, 2: 0.58, 3: 0.62}), [0, 4])
    assert out["goal"]["met_on_means"] and not out["goal"]["met_with_ci"]
    assert out["goal"]["verdict"] == "met on the means only (not at 95%)"
    # naive drops 1, 1, 1: naive holds up as well as decoupled
    out = staleness_summary(_staleness_rates({1: 0.49, 2: 0.59, 3: 0.69}), [0, 4])
    assert out["goal"]["verdict"] == "not met"
    out = staleness_summary({k: v for k, v in _staleness_rates(EQ).items() if "eta4" not in k},
                            [0])
    assert out["goal"]["verdict"].startswith("not measured")


def test_entropy_drop_compares_first_and_last_quarters() -> None:
    assert entropy_drop([4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0]) == pytest.approx(3.5)
    assert entropy_drop([0.3, 0.1]) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        entropy_drop([])


def test_algorithm_directions_from_paired_differences() -> None:
    rates = {"raft": {1: 0.50, 2: 0.55, 3: 0.60},
             "raft_pp": {1: 0.60, 2: 0.66, 3: 0.70},    # raft_pp - raft: 10, 11, 10 points
             "grpo": {1: 0.61, 2: 0.66, 3: 0.71},       # grpo - raft_pp: 1, 0, 1
             "reinforce_rej": {1: 0.70, 2: 0.40, 3: 0.9},  # wide: inconclusive
             "reinforce_pm1": {1: 0.5, 2: 0.5, 3: 0.5},
             "reinforce_rm_wrong": {1: 0.45, 2: 0.44, 3: 0.45}}  # -5, -6, -5
    early = {"raft_pp": {1: 0.5, 2: 0.5, 3: 0.5}, "grpo": {1: 0.4, 2: 0.41, 3: 0.4}}
    drops = {"raft_pp": {1: 0.20, 2: 0.21, 3: 0.20}, "grpo": {1: 0.10, 2: 0.10, 3: 0.11},
             "raft": {1: 0.30, 2: 0.31, 3: 0.30}}
    out = algorithms_summary(rates, drops, early)
    assert out["raft_below_raft_pp"]["difference"]["values"] == pytest.approx([10.0, 11.0, 10.0])
    assert out["raft_below_raft_pp"]["verdict"] == "holds"
    # 1, 0, 1: mean 0.667, half-width 4.303 * 0.57735 / sqrt(3) = 1.434 -> inside ±3
    assert out["raft_pp_approx_grpo"]["verdict"] == "holds"
    assert out["raft_pp_approx_reinforce_rej"]["verdict"] == "inconclusive"
    assert out["raft_pp_ahead_early"]["verdict"] == "holds"
    assert out["grpo_ahead_at_end"]["verdict"] == "inconclusive"
    assert out["remove_all_wrong_helps_reinforce"]["verdict"] == "contradicted"
    fastest = out["raft_pp_entropy_falls_fastest"]
    assert fastest["vs"]["grpo"]["verdict"] == "holds"
    assert fastest["vs"]["raft"]["verdict"] == "contradicted"
    assert fastest["verdict"] == "contradicted"


def test_algorithm_directions_skip_settings_not_run() -> None:
    out = algorithms_summary({"grpo": {1: 0.5}, "raft": {1: 0.4}}, {}, {})
    assert out == {}


def _run(wall: float, rate: float) -> dict:
    return {"wall_s": wall, "pass_rate": rate}


def test_async_headline_is_the_fixed_eta_not_the_best() -> None:
    assert HEADLINE_ETA == 2
    runs = {"sync": {1: _run(100.0, 0.70), 2: _run(120.0, 0.60)},
            "sync_split": {1: _run(80.0, 0.70), 2: _run(60.0, 0.60)},
            "eta2": {1: _run(50.0, 0.68), 2: _run(40.0, 0.61)},
            "eta8": {1: _run(20.0, 0.70), 2: _run(20.0, 0.60)}}  # faster: still not the headline
    out = async_summary(runs, [2, 8])
    # per-seed speedups 2 and 3: mean 2.5, s = 0.7071, half-width 12.706 * 0.7071 / sqrt(2)
    assert out["headline_eta"] == 2
    assert out["speedup"]["values"] == pytest.approx([2.0, 3.0])
    assert out["speedup"]["ci95"] == pytest.approx(6.353, abs=1e-3)
    assert out["pass_rate_diff"]["values"] == pytest.approx([-2.0, 1.0])
    assert out["speedup_vs_sync_split"]["values"] == pytest.approx([1.6, 1.5])
    assert out["by_eta"]["8"]["speedup"]["mean"] == pytest.approx(5.5)
    out = async_summary({k: v for k, v in runs.items() if k != "eta2"}, [8])
    assert out["speedup"] is None and "8" in out["by_eta"]
