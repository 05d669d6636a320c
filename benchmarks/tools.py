"""The tool demo over seeds: does RL raise the call rate and the pass rate?

    python benchmarks/tools.py [--seeds 3] [--steps 40]
    areal-sys bench tools --seeds 3 ...

Runs `areal-sys run configs/tiny/tool_grpo.yaml` (GRPO on `tool_mul`: multi-turn episodes in which
the tiny tool model may call the calculator) once per seed, the model fixed by `model.tiny_seed`,
`seed=S` varying data order, sampling and RL. The before-training evaluation runs once per seed on
the same held-out problems.

Figures across seeds (mean and 95% CI, per-seed values beside them): the held-out pass rate
before and after and its gain (points); the fraction of held-out episodes that called the tool
before and after (`call_rate`, points) and its rise; the per-step call rate of training episodes;
the training loop's wall time and the whole command's (the demo's budget: 10 minutes).
Writes benchmarks/results/tools.json and .png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
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
from benchmarks.stats import fmt, scaled, summarize  # noqa: E402

CONFIG = "configs/tiny/tool_grpo.yaml"
STEP_METRICS = ("episode/call_rate", "episode/tool_errors", "episode/turns", "reward_mean")


def call_rates(before: dict[int, dict[str, Any]],
               runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Call rate (points) before and after training, and its rise paired by seed."""
    seeds = sorted(set(before) & set(runs))
    if not seeds:
        return {"before": None, "after": None, "rise": None}
    pre = [before[s]["eval"]["call_rate"] for s in seeds]
    post = [runs[s]["eval_final"]["call_rate"] for s in seeds]
    return {"before": scaled(summarize(pre), 100), "after": scaled(summarize(post), 100),
            "rise": scaled(summarize([b - a for a, b in zip(pre, post, strict=True)]), 100)}


def plot(figs: dict[str, Any], calls: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    bars = [("pass before", figs["pass_rate_before"]), ("pass after", figs["pass_rate"]),
            ("calls before", calls["before"]), ("calls after", calls["after"])]
    bars = [(n, v) for n, v in bars if v]
    axes[0].bar([n for n, _ in bars], [v["mean"] for _, v in bars],
                yerr=[v["ci95"] or 0.0 for _, v in bars], capsize=4,
                color=["tab:gray", "tab:blue", "tab:gray", "tab:orange"][: len(bars)])
    axes[0].set_ylabel("% of held-out episodes")
    series = figs.get("episode/call_rate_by_step") or []
    axes[1].plot(range(len(series)), [100 * v for v in series], color="tab:orange")
    axes[1].set(xlabel="step", ylabel="episodes with a call (%)",
                title="training episodes (mean over seeds)")
    fig.suptitle(f"Tool demo over {figs.get('n', 0)} seeds (mean ± 95% CI): pass rate "
                 f"+{fmt(figs.get('gain'))} points, call rate +{fmt(calls['rise'])} points")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    seed_args(p, steps=40, task=False)
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench_tools"))
    a = p.parse_args()
    a.task = "tool_mul"  # the config's own task (learning_overrides names it in every run)
    seeds = seeds_of(a)
    common = learning_overrides(a, curve_points=1)
    setting = Setting("tool_grpo", CONFIG, tuple(common))
    grid = run_grid([setting], seeds,
                    lambda s, seed, d: pipeline_run(s, seed, d, a.reuse, a.collect_only),
                    Path(a.runs_dir),
                    before_fn=lambda seed, d: evaluate_initial(CONFIG, common, seed, d,
                                                               a.collect_only, a.reuse))
    runs = grid.runs[setting.name]
    figs = setting_figures(runs, STEP_METRICS, grid.before)
    figs["pass_rate_before"] = scaled(summarize([b["pass_rate"] for b in grid.before.values()]),
                                      100) if grid.before else None
    figs["command_s"] = summarize([r["command_s"] for r in runs.values() if "command_s" in r]) \
        if any("command_s" in r for r in runs.values()) else None
    calls = call_rates(grid.before, runs)
    print(f"pass rate {fmt(figs.get('pass_rate_before'))} -> {fmt(figs.get('pass_rate'))} "
          f"(gain {fmt(figs.get('gain'))} points); call rate {fmt(calls['before'])} -> "
          f"{fmt(calls['after'])} (rise {fmt(calls['rise'])} points)")
    out_dir = Path(a.out_dir)
    out = write_results("tools", {"settings_by_name": {setting.name: figs}, "call_rate": calls,
                                  **grid_record(grid, STEP_METRICS)},
                        {"config": CONFIG, "common_overrides": common, "task": a.task,
                         "seeds": seeds}, out_dir)
    if figs.get("n"):
        plot(figs, calls, figure_path("tools", out_dir))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
