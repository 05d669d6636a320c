"""Every algorithm preset on the CPU task with the same budget and seed.

Runs `areal-sys run configs/tiny/<name>.yaml` for each preset, one after the other, with common
overrides (steps, batch, seed, evaluation), and writes `benchmarks/results/algorithms.json`, keyed
by preset: the final held-out `pass_rate` (and the one before training), per-step `entropy`
(policy entropy over the trained tokens), per-step `kl` (k3 KL of the policy to the initial one),
per-step `reward`, `groups_filtered` and `wall_s` (the whole run, start-up included). Plus a PNG:
pass rate per preset and the entropy and KL curves.

The paper's expected direction (Minimal-RL): RAFT <= RAFT++ ~ GRPO ~ Reinforce-Rej in accuracy,
RAFT++'s entropy falling fastest. A few dozen steps of a tiny model on one seed is a smoke-scale
comparison, not a replication: report what it shows either way.

    .venv/bin/python benchmarks/algorithms.py [--steps 40] [--presets grpo,raft]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from areal_sys.algorithms.presets import PRESETS  # noqa: E402
from benchmarks.common import figure_path, run_experiment, write_results  # noqa: E402


def run_preset(name: str, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    run = run_experiment(f"configs/tiny/{name}.yaml", run_dir, overrides)
    metrics = run["metrics"]
    return {
        "pass_rate": run["pass_rate_after"],
        "pass_rate_before": run["pass_rate_before"],
        "entropy": [m["train/entropy"] for m in metrics],
        "kl": [m["train/kl_to_initial"] for m in metrics],
        "reward": [m["reward_mean"] for m in metrics],
        "groups_filtered": int(run.get("groups_filtered", 0)),
        "wall_s": run["wall_s"],
    }


def plot(figures: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(figures)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].bar(names, [100 * figures[n]["pass_rate"] for n in names], color="tab:blue",
                label="after")
    axes[0].plot(names, [100 * figures[n]["pass_rate_before"] for n in names], "k_",
                 markersize=18, label="before")
    axes[0].set_ylabel("held-out pass rate (%)")
    axes[0].tick_params(axis="x", rotation=45)
    axes[0].legend()
    for n in names:
        axes[1].plot(figures[n]["entropy"], label=n)
        axes[2].plot(figures[n]["kl"], label=n)
    axes[1].set(xlabel="step", ylabel="policy entropy (nats/token)")
    axes[2].set(xlabel="step", ylabel="KL to the initial policy (k3)")
    axes[2].legend(fontsize=8)
    fig.suptitle("Algorithm presets on the CPU task (same budget and seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--eval-problems", type=int, default=256)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--presets", default=",".join(PRESETS))
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench_algorithms"))
    a = p.parse_args()
    overrides = [
        f"trainer.total_steps={a.steps}", f"controller.batch_size={a.batch_size}",
        f"rollout.n_samples={a.n_samples}", f"eval.num_problems={a.eval_problems}",
        f"seed={a.seed}", "eval.before_and_after=true", "logging.progress_bar=false",
        "logging.kl_to_initial=true",
    ]
    # build (or reuse) the tiny model once, outside the timed runs
    subprocess.run([sys.executable, "-m", "areal_sys.cli", "make-tiny-model",
                    f"--seed={a.seed}"], cwd=ROOT, check=True, capture_output=True)
    figures = {}
    for name in a.presets.split(","):
        figures[name] = run_preset(name, Path(a.runs_dir) / name, overrides)
        f = figures[name]
        print(f"{name:<14} pass {100 * f['pass_rate_before']:5.1f}% -> {100 * f['pass_rate']:5.1f}%"
              f"  entropy {f['entropy'][0]:.3f} -> {f['entropy'][-1]:.3f}"
              f"  kl {f['kl'][-1]:.4f}  filtered {f['groups_filtered']}  {f['wall_s']:.0f} s",
              flush=True)
    settings = {"overrides": overrides, "configs": "configs/tiny/<preset>.yaml"}
    out = write_results("algorithms", figures, settings)
    plot(figures, figure_path("algorithms"))
    print(f"wrote {out} and {figure_path('algorithms')}")


if __name__ == "__main__":
    main()
