"""The README's learning tables and the Performance rows of the multi-seed benchmarks
(benchmarks/table.py), from results files built by the benchmarks' own summarising functions on
synthetic per-seed runs."""

import json
from pathlib import Path

from benchmarks import table
from benchmarks.async_vs_sync import summarise as async_summary
from benchmarks.common import setting_figures
from benchmarks.staleness import summarise as staleness_summary

MACHINE = {"cpus_usable": 2, "cpu": "x86_64", "memory_gib": 23.5}
COMMON = ["trainer.total_steps=40", "controller.batch_size=16", "rollout.n_samples=8",
          "eval.num_problems=512", "eval.k=4"]


def _run(rate: float, wall: float = 10.0, kl: float = 0.01) -> dict:
    return {"pass_rate": rate, "curve": [(40, rate)], "wall_s": wall, "staleness_hist": {0: 1},
            "gen_idle_frac": 0.25,
            "metrics": [{"train/approx_kl_behav": kl, "train/behav_capped_frac": 0.001}]}


def _write(path: Path, record: dict) -> None:
    path.write_text(json.dumps({**record, "machine": MACHINE, "time": "2026-11-29T12:00:00"}))


def test_staleness_table_and_row(tmp_path: Path) -> None:
    rates = {"decoupled_eta0": (0.50, 0.60), "naive_eta0": (0.50, 0.60),
             "decoupled_eta4": (0.49, 0.59), "naive_eta4": (0.40, 0.52)}
    runs = {n: {1: _run(r[0]), 2: _run(r[1])} for n, r in rates.items()}
    figs = {n: {"eta": int(n[-1]), **setting_figures(r, ("train/approx_kl_behav",
                                                         "train/behav_capped_frac"))}
            for n, r in runs.items()}
    summary = staleness_summary({n: {s: r["pass_rate"] for s, r in v.items()}
                                 for n, v in runs.items()}, [0, 4])
    _write(tmp_path / "staleness.json", {
        **summary, "settings_by_name": figs, "per_seed": {},
        "settings": {"etas": [0, 4], "minibatches": 4, "lr": 1e-4, "task": "first_decision",
                     "seeds": [1, 2], "common_overrides": COMMON}})
    text = table.learning_tables(tmp_path)
    assert "task `first_decision`, 40 steps, B = 16 × 8, seeds [1, 2], held-out 512 problems × " \
           "k = 4" in text
    # eta 4: decoupled 49, 59 -> 54.0; naive 40, 52 -> 46.0; decoupled - naive 9, 7 -> 8.0 with
    # half-width 12.706 * 1.414 / sqrt(2) = 12.7; drops 1, 1 and 10, 8 points
    assert ("| 4 | 54.0 ± 63.5 | 46.0 ± 76.2 | 8.0 ± 12.7 | 1.0 ± 0.0 | 9.0 ± 12.7 | 0.10 ± 0.00 | "
            "0.0100 ± 0.0000 / 0.0100 ± 0.0000 | 10 ± 0 / 10 ± 0 |") in text
    assert "| 0 | 55.0 ± 63.5 | 55.0 ± 63.5 | 0.0 ± 0.0 | - | - |" in text
    assert "**met on the means only (not at 95%)**" in text
    figure, _ = table.FORMATTERS["staleness"](json.loads((tmp_path / "staleness.json").read_text()))
    assert "decoupled **1.0 ± 0.0 (n = 2)** points, naive **9.0 ± 12.7 (n = 2)**" in figure


def test_async_vs_sync_table_and_row(tmp_path: Path) -> None:
    runs = {"sync": {1: _run(0.70, 100.0), 2: _run(0.60, 120.0)},
            "eta2": {1: _run(0.68, 50.0), 2: _run(0.61, 40.0)}}
    figs = {n: {"eta": 0 if n == "sync" else 2, **setting_figures(r),
                "gen_idle_frac": {"mean": 0.25, "ci95": 0.0, "n": 2}} for n, r in runs.items()}
    _write(tmp_path / "async_vs_sync.json", {
        **async_summary(runs, [2]), "settings_by_name": figs, "per_seed": {},
        "settings": {"task": "first_decision", "seeds": [1, 2], "common_overrides": COMMON}})
    record = json.loads((tmp_path / "async_vs_sync.json").read_text())
    figure, target = table.async_vs_sync(record)
    assert figure.startswith("**2.50 ± 6.35x (n = 2)** at the fixed η = 2 (training loop 110 s "
                             "sync vs 45 s") and target == ">= 2.0x, ±3 points"
    text = table.learning_tables(tmp_path)
    # speedups 100/50 = 2, 120/40 = 3; pass rate differences -2 and +1 points
    assert "| eta2 | 2 | 45 ± 64 | 25.0 ± 0.0 | 64.5 ± 44.5 | 2.50 ± 6.35 | -0.5 ± 19.1 |" in text
    assert "| sync | 0 |" in text and text.count("| - | - |") == 1


def test_learning_tables_skip_one_seed_files_and_update_the_readme(tmp_path: Path) -> None:
    _write(tmp_path / "algorithms.json", {"grpo": {"pass_rate": 0.6}})  # the earlier format
    text = table.learning_tables(tmp_path)
    assert "No multi-seed results yet" in text and "#### `algorithms`" not in text
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{table.START}\nP\n{table.END}\nb\n{table.LEARNING_START}\nOLD\n"
                      f"{table.LEARNING_END}\nc\n")
    table.update_readme(text, readme, table.LEARNING_START, table.LEARNING_END)
    updated = readme.read_text()
    assert "OLD" not in updated and text in updated and "\nP\n" in updated
    assert updated.endswith(f"{table.LEARNING_END}\nc\n")


def test_interruptible_row_reads_the_three_mode_and_the_two_mode_results() -> None:
    def interval(every: float, abort: float, keep: float, wait: float) -> dict:
        return {"update_every_s": every, "tokens_per_s_interruptible": abort,
                "tokens_per_s_keep": {"mean": keep}, "tokens_per_s_non_interruptible": wait,
                "gain": abort / wait - 1, "gain_keep": keep / wait - 1}

    rows = [interval(1, 1100, 1500, 1000), interval(2, 1050, 1200, 1000)]
    text, target = table.interruptible({**rows[0], "by_interval": rows})
    assert text.startswith("tokens/s against `wait` with a new version every 1 s: abort "
                           "**+10.0%**, keep **+50.0%** (1100 / 1500 / 1000)")
    assert text.endswith("; every 2 s abort +5.0%, keep +20.0%") and target == ">= +10% (abort)"
    old = {"update_every_s": 1, "gain": 0.35, "tokens_per_s_interruptible": 4443,
           "tokens_per_s_non_interruptible": 3288}
    assert table.interruptible(old)[0] == (
        "**+35.0%** tokens/s with a new version every 1 s (4443 vs 3288)")
