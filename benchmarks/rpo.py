"""Full GRPO against RPO + GRPO on the CPU task: the same steps, batch, seed and evaluation.

Runs `areal-sys run configs/tiny/grpo.yaml` and `configs/tiny/rpo_grpo.yaml` (the same file plus
the `rpo` section) one after the other with common overrides, then writes
`benchmarks/results/rpo.json` and a PNG:

- `tokens_per_sample_full` / `_rpo`: tokens generated per trained sample (the RPO prefix is not
  generated, so it does not count), over all steps;
- `gen_time_s_full` / `_rpo`: generation time per step, the seconds the rollout engine had at least
  one request in flight (`gen_busy_s` of metrics.jsonl), averaged over the steps;
- `step_time_s_full` / `_rpo`: wall time per training step (controller loop), averaged;
- `pass_rate_full` / `_rpo`: the final held-out pass rate (256 problems, one sample each);
- the cache-fill pass RPO runs before training (one full response per train prompt), reported
  apart: `rpo_cache_fill_s`, `rpo_cache_fill_tokens`, and the reductions with it amortised over
  the run (`gen_time_reduction_incl_fill`);
- `ablations`: the same figures for RPO with a fixed L = 8 regenerated tokens (`rpo_L8`), which
  regenerates whole short responses more often: the trade-off between generated tokens and what
  the suffix-only updates can learn.

    .venv/bin/python benchmarks/rpo.py [--steps 40] [--train-size 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, figure_path, run_experiment, write_results  # noqa: E402

CONFIGS = {"full": "configs/tiny/grpo.yaml", "rpo": "configs/tiny/rpo_grpo.yaml",
           "rpo_L8": "configs/tiny/rpo_grpo.yaml"}
EXTRA = {"rpo_L8": ["rpo.regen_fraction=null", "rpo.max_regen_tokens=8"]}


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    m = run["metrics"]
    return {  # every step trains B x n samples: per-sample means are means over steps
        "tokens_per_sample": sum(mm["gen_tokens_per_sample"] for mm in m) / len(m),
        "gen_time_s": sum(mm["gen_busy_s"] for mm in m) / len(m),
        "step_time_s": sum(mm["step_time_s"] for mm in m) / len(m),
        "pass_rate": run["pass_rate_after"],
        "pass_rate_before": run["pass_rate_before"],
        "tokens_curve": [mm["gen_tokens_per_sample"] for mm in m],
        "gen_time_curve": [mm["gen_busy_s"] for mm in m],
        "reward_curve": [mm["reward_mean"] for mm in m],
        "prefix_len_mean": sum(mm["prefix_len_mean"] for mm in m) / len(m),
        "response_len_mean": sum(mm["response_len_mean"] for mm in m) / len(m),
        "wall_s": run["wall_s"],
        "steps": len(m),
        "cache_fill": run.get("rpo_cache_fill"),
    }


def figures_of(full: dict[str, Any], rpo: dict[str, Any]) -> dict[str, Any]:
    fill = rpo["cache_fill"] or {"seconds": 0.0, "tokens": 0.0}
    steps = rpo["steps"]
    return {
        "tokens_per_sample_full": full["tokens_per_sample"],
        "tokens_per_sample_rpo": rpo["tokens_per_sample"],
        "gen_time_s_full": full["gen_time_s"],
        "gen_time_s_rpo": rpo["gen_time_s"],
        "step_time_s_full": full["step_time_s"],
        "step_time_s_rpo": rpo["step_time_s"],
        "pass_rate_full": full["pass_rate"],
        "pass_rate_rpo": rpo["pass_rate"],
        "pass_rate_before": full["pass_rate_before"],
        "tokens_reduction": 1 - rpo["tokens_per_sample"] / full["tokens_per_sample"],
        "gen_time_reduction": 1 - rpo["gen_time_s"] / full["gen_time_s"],
        "step_time_reduction": 1 - rpo["step_time_s"] / full["step_time_s"],
        "pass_rate_diff_points": 100 * (rpo["pass_rate"] - full["pass_rate"]),
        "rpo_cache_fill_s": fill["seconds"],
        "rpo_cache_fill_tokens": fill["tokens"],
        "gen_time_reduction_incl_fill": 1 - (rpo["gen_time_s"] * steps + fill["seconds"])
        / (full["gen_time_s"] * full["steps"]),
        "rpo_prefix_len_mean": rpo["prefix_len_mean"],
        "response_len_mean_full": full["response_len_mean"],
        "response_len_mean_rpo": rpo["response_len_mean"],
        "wall_s_full": full["wall_s"],
        "wall_s_rpo": rpo["wall_s"],
        "curves": {k: {"tokens_per_sample": v["tokens_curve"], "gen_time_s": v["gen_time_curve"],
                       "reward": v["reward_curve"]} for k, v in (("full", full), ("rpo", rpo))},
    }


def plot(fig_data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    l8 = fig_data.get("ablations", {}).get("rpo_L8")
    labels = ["full GRPO", "RPO + GRPO", *(["RPO, L = 8"] if l8 else [])]
    colors = ["tab:gray", "tab:green", "tab:olive"][: len(labels)]
    bars = [("tokens_per_sample", "generated tokens / sample"),
            ("gen_time_s", "generation time / step (s)"),
            ("pass_rate", "final held-out pass rate")]
    for ax, (key, title) in zip(axes[:3], bars, strict=True):
        vals = [fig_data[f"{key}_full"], fig_data[f"{key}_rpo"]]
        vals += [l8[f"{key}_rpo"]] if l8 else []
        ax.bar(labels, vals, color=colors)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom")
        ax.set_title(title, pad=12)
    axes[2].axhline(fig_data["pass_rate_before"], color="k", ls=":", label="before training")
    axes[2].legend(loc="lower right", fontsize=8)
    curves = fig_data["curves"]
    for key, color, label in zip(("full", "rpo"), colors, labels, strict=False):
        axes[3].plot(curves[key]["reward"], color=color, label=label)
    axes[3].set(xlabel="step", ylabel="mean reward of the trained batch")
    axes[3].legend()
    fig.suptitle(f"RPO vs full GRPO on the CPU task: {100 * fig_data['tokens_reduction']:.0f}% "
                 f"fewer generated tokens, {100 * fig_data['gen_time_reduction']:.0f}% less "
                 f"generation time per step, pass rate "
                 f"{fig_data['pass_rate_diff_points']:+.1f} points")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--train-size", type=int, default=512, help="synthetic train prompts")
    p.add_argument("--eval-problems", type=int, default=256)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench_rpo"))
    p.add_argument("--out-name", default="rpo")
    p.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON")
    a = p.parse_args()
    if a.plot_only:
        plot(json.loads((RESULTS / f"{a.out_name}.json").read_text()), figure_path(a.out_name))
        return
    common = [
        f"trainer.total_steps={a.steps}", f"data.synthetic_train_size={a.train_size}",
        f"eval.num_problems={a.eval_problems}", f"seed={a.seed}",
        "eval.before_and_after=true", "logging.progress_bar=false",
    ]
    subprocess.run([sys.executable, "-m", "areal_sys.cli", "make-tiny-model",
                    f"--seed={a.seed}"], cwd=ROOT, check=True, capture_output=True)
    runs = {}
    for name, config in CONFIGS.items():
        extra = EXTRA.get(name, [])
        runs[name] = summarize(run_experiment(config, Path(a.runs_dir) / name, common + extra))
        r = runs[name]
        print(f"{name:<5} tokens/sample {r['tokens_per_sample']:6.2f}  gen/step "
              f"{r['gen_time_s']:.3f} s  step {r['step_time_s']:.3f} s  pass "
              f"{100 * r['pass_rate_before']:.1f}% -> {100 * r['pass_rate']:.1f}%  "
              f"({r['wall_s']:.0f} s)", flush=True)
    figs = figures_of(runs["full"], runs["rpo"])
    ablation = figures_of(runs["full"], runs["rpo_L8"])
    figs["ablations"] = {"rpo_L8": {k: v for k, v in ablation.items()
                                    if k.endswith("_rpo") or "reduction" in k or "diff" in k}}
    print(f"RPO: {100 * figs['tokens_reduction']:.1f}% fewer generated tokens per sample, "
          f"{100 * figs['gen_time_reduction']:.1f}% less generation time per step, "
          f"{100 * figs['step_time_reduction']:.1f}% less step time, pass rate "
          f"{figs['pass_rate_diff_points']:+.1f} points; "
          f"cache fill {figs['rpo_cache_fill_s']:.1f} s")
    settings = {"configs": CONFIGS, "common_overrides": common, "extra_overrides": EXTRA}
    out = write_results(a.out_name, figs, settings)
    plot(figs, figure_path(a.out_name))
    print(f"wrote {out} and {figure_path(a.out_name)}")


if __name__ == "__main__":
    main()
