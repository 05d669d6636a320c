"""Every algorithm preset on a CPU task with the same budget, over seeds (Minimal-RL's ordering).

    python benchmarks/algorithms.py [--seeds 3] [--task first_decision] [--steps 40]
                                    [--presets raft,raft_pp,grpo,...]
    areal-sys bench algorithms --seeds 3 ...

Runs `areal-sys run configs/tiny/<preset>.yaml` for each setting and seed with common overrides
(steps, batch, the fixed model `model.tiny_seed`, the task, evaluation with `--eval-k` samples on
`--eval-problems` held-out problems every `--steps / --curve-points` steps, the KL to the initial
policy logged every step). Settings: the presets raft, raft_pp, grpo, reinforce, reinforce_rej,
dr_grpo, dapo, ppo, and Minimal-RL's ablation "Reinforce + remove all-wrong prompts":

- `reinforce_pm1`: the reinforce preset under ±1 rewards (the paper's Reinforce; under the
  preset's 0/1 rewards a wrong response has A = 0, so removing all-wrong groups would remove
  groups that carry no gradient anyway);
- `reinforce_rm_wrong`: the same with `algorithm.filter=remove_all_wrong` (areal_sys/algorithms/
  filters.py: drop groups with no correct response). The ablation is the paired difference
  reinforce_rm_wrong − reinforce_pm1.

Figures per setting (mean and 95% CI over seeds, per-seed values beside them): final held-out
pass rate (avg@k), gain over the same seed's pass rate before training, learning curve, policy
entropy per step (train/entropy) and its drop (mean of the first quarter of the steps − mean of
the last quarter), KL to the initial policy per step (train/kl_to_initial), reward and filtered
groups per step, training wall time.

The paper's directions, each read off a paired difference's CI (points; benchmarks/stats.py):
RAFT < RAFT++ ("holds" when the CI of raft_pp − raft is above 0), RAFT++ ≈ GRPO ≈ Reinforce-Rej
(within ±3 points: "holds" when the CI is inside, "contradicted" when outside, else
"inconclusive"), RAFT++'s entropy falling fastest (its drop above every other preset's), RAFT++
ahead early and overtaken by GRPO at the end, and the ablation (removing all-wrong groups helps
Reinforce). Writes benchmarks/results/algorithms.json and .png (algorithms_TASK.* for a task
other than first_decision).
"""

from __future__ import annotations

import argparse
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
    per_step,
    pipeline_run,
    run_grid,
    seed_args,
    seeds_of,
    setting_figures,
    write_results,
)
from benchmarks.stats import (  # noqa: E402
    fmt,
    paired_difference,
    scaled,
    summarize,
    verdict_greater,
    verdict_within,
)

PRESET_NAMES = ("raft", "raft_pp", "grpo", "reinforce", "reinforce_rej", "dr_grpo", "dapo", "ppo")
PM1 = ("reward.correct_reward=1.0", "reward.wrong_reward=-1.0")
EXTRA = {"reinforce_pm1": ("reinforce", PM1),
         "reinforce_rm_wrong": ("reinforce", (*PM1, "algorithm.filter=remove_all_wrong"))}
DEFAULT = ",".join((*PRESET_NAMES, *EXTRA))
APPROX_POINTS = 3.0  # "≈": a paired difference whose CI lies within ±3 points
STEP_METRICS = ("train/entropy", "train/kl_to_initial", "reward_mean", "groups_filtered")


def settings(names: list[str], common: list[str]) -> list[Setting]:
    out = []
    for n in names:
        preset, extra = EXTRA.get(n, (n, ()))
        out.append(Setting(n, f"configs/tiny/{preset}.yaml", (*common, *extra),
                           {"preset": preset, "extra_overrides": list(extra)}))
    return out


def entropy_drop(series: list[float]) -> float:
    """Mean entropy of the first quarter of the steps − of the last quarter (at least one step
    each): how far the policy's entropy fell over the run."""
    if not series:
        raise ValueError("no entropy logged")
    w = max(1, len(series) // 4)
    return sum(series[:w]) / w - sum(series[-w:]) / w


def _diff(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Paired difference a − b in points (None: no seed ran both)."""
    return scaled(paired_difference(a, b), 100) if set(a) & set(b) else None


def summarise(rates: dict[str, dict[int, float]], drops: dict[str, dict[int, float]],
              early: dict[str, dict[int, float]]) -> dict[str, Any]:
    """The paper's directions from per-seed figures: final pass `rates` and `early` pass rates
    (first evaluation) as fractions, entropy `drops` in nats; each a paired difference and a
    verdict. A direction whose settings were not run is left out."""
    out: dict[str, Any] = {}

    def greater(key: str, a: str, b: str, src: dict[str, dict[int, float]], factor: float = 100,
                claim: str = "") -> None:
        if a in src and b in src and set(src[a]) & set(src[b]):
            d = scaled(paired_difference(src[a], src[b]), factor)
            out[key] = {"claim": claim, "difference": d, "verdict": verdict_greater(d)}

    def within(key: str, a: str, b: str, claim: str) -> None:
        if a in rates and b in rates and (d := _diff(rates[a], rates[b])) is not None:
            out[key] = {"claim": claim, "difference": d,
                        "verdict": verdict_within(d, APPROX_POINTS)}

    greater("raft_below_raft_pp", "raft_pp", "raft", rates, claim="RAFT < RAFT++ (final pass)")
    within("raft_pp_approx_grpo", "grpo", "raft_pp", "RAFT++ ≈ GRPO (±3 points)")
    within("raft_pp_approx_reinforce_rej", "reinforce_rej", "raft_pp",
           "RAFT++ ≈ Reinforce-Rej (±3 points)")
    within("grpo_approx_reinforce_rej", "reinforce_rej", "grpo", "GRPO ≈ Reinforce-Rej (±3 points)")
    greater("raft_pp_ahead_early", "raft_pp", "grpo", early,
            claim="RAFT++ ahead of GRPO at the first evaluation")
    greater("grpo_ahead_at_end", "grpo", "raft_pp", rates, claim="GRPO ahead of RAFT++ at the end")
    greater("remove_all_wrong_helps_reinforce", "reinforce_rm_wrong", "reinforce_pm1", rates,
            claim="Reinforce (±1) + remove all-wrong groups > Reinforce (±1)")
    if "raft_pp" in drops:
        each = {}
        for other in sorted(set(drops) - {"raft_pp"}):
            if set(drops[other]) & set(drops["raft_pp"]):
                d = paired_difference(drops["raft_pp"], drops[other])
                each[other] = {"difference": d, "verdict": verdict_greater(d)}
        verdicts = {v["verdict"] for v in each.values()}
        overall = ("contradicted" if "contradicted" in verdicts else
                   "holds" if verdicts == {"holds"} else "inconclusive")
        out["raft_pp_entropy_falls_fastest"] = {
            "claim": "RAFT++'s entropy drop (nats) exceeds every other setting's",
            "vs": each, "verdict": overall if each else "inconclusive"}
    return out


def plot(figs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(figs)
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    rate = [figs[n]["pass_rate"] for n in names]
    axes[0].bar(names, [r["mean"] for r in rate], yerr=[r["ci95"] or 0.0 for r in rate],
                capsize=4, color="tab:blue", label="after (mean ± 95% CI)")
    before = [figs[n].get("pass_rate_before") for n in names]
    if all(b is not None for b in before):
        axes[0].plot(names, [b["mean"] for b in before], "k_", markersize=18, label="before")
    axes[0].set_ylabel("held-out pass rate (%)")
    axes[0].tick_params(axis="x", rotation=60)
    axes[0].legend()
    for n in names:
        c = figs[n]["curve"]
        axes[1].errorbar([p["step"] for p in c], [p["mean"] for p in c],
                         yerr=[p["ci95"] or 0.0 for p in c], fmt="o-", capsize=3, label=n)
        axes[2].plot(figs[n].get("train/entropy_by_step", []), label=n)
        axes[3].plot(figs[n].get("train/kl_to_initial_by_step", []), label=n)
    axes[1].set(xlabel="step", ylabel="held-out pass rate (%)")
    axes[2].set(xlabel="step", ylabel="policy entropy (nats/token), mean over seeds")
    axes[3].set(xlabel="step", ylabel="KL to the initial policy (k3), mean over seeds")
    axes[3].legend(fontsize=7)
    fig.suptitle("Algorithm presets (same budget; mean over seeds, error bars 95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def results_name(task: str) -> str:
    """`algorithms` for the default task, `algorithms_TASK` for another, so that each task's
    results stay beside the others'."""
    return "algorithms" if task == "first_decision" else f"algorithms_{task}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    seed_args(p, steps=40)
    p.add_argument("--presets", default=DEFAULT, help=f"settings (default {DEFAULT})")
    p.add_argument("--curve-points", type=int, default=4, help="evaluations per run")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench_algorithms"))
    a = p.parse_args()
    names, seeds = a.presets.split(","), seeds_of(a)
    unknown = [n for n in names if n not in PRESET_NAMES and n not in EXTRA]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; known: {DEFAULT}")
    common = learning_overrides(a, curve_points=a.curve_points, kl_to_initial=True)
    grid: Grid = run_grid(
        settings(names, common), seeds,
        lambda s, seed, d: pipeline_run(s, seed, d, a.reuse, a.collect_only),
        Path(a.runs_dir),
        before_fn=lambda seed, d: evaluate_initial("configs/tiny/grpo.yaml", common, seed, d,
                                                  a.collect_only, a.reuse))
    before = scaled(summarize([b["pass_rate"] for b in grid.before.values()]), 100) \
        if grid.before else None
    figs: dict[str, dict[str, Any]] = {}
    drops: dict[str, dict[int, float]] = {}
    early: dict[str, dict[int, float]] = {}
    for s in grid.settings:
        runs = grid.runs[s.name]
        figs[s.name] = {**s.meta, **setting_figures(runs, STEP_METRICS, grid.before),
                        "pass_rate_before": before}
        if not runs:
            continue
        drops[s.name] = {seed: entropy_drop(v)
                         for seed, v in per_step(runs, "train/entropy").items() if v}
        figs[s.name]["entropy_drop"] = summarize(list(drops[s.name].values()))
        early[s.name] = {seed: r["curve"][0][1] for seed, r in runs.items()}
        print(f"{s.name:<20} pass {fmt(figs[s.name]['pass_rate'])}  gain "
              f"{fmt(figs[s.name].get('gain'))}  entropy drop "
              f"{fmt(figs[s.name]['entropy_drop'], 1, 3)}")
    directions = summarise({n: grid.per_seed(n, "pass_rate") for n in names if grid.runs[n]},
                           drops, early)
    for key, d in directions.items():
        print(f"{key}: {d['verdict']}")
    out_dir, name = Path(a.out_dir), results_name(a.task)
    out = write_results(name, {"directions": directions, "pass_rate_before": before,
                                       "settings_by_name": figs, **grid_record(grid, STEP_METRICS)},
                        {"configs": "configs/tiny/<preset>.yaml", "common_overrides": common,
                         "task": a.task, "seeds": seeds, "settings": names}, out_dir)
    plot({n: f for n, f in figs.items() if f.get("n")}, figure_path(name, out_dir))
    print(f"wrote {out} and {figure_path(name, out_dir)}")


if __name__ == "__main__":
    main()
