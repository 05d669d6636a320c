"""Full GRPO against RPO + GRPO on the built-in tasks, over seeds (and DAPO on `chain_tail`).

    python benchmarks/rpo.py [--seeds 3] [--tasks first_decision,chain_tail,chain_uniform]
                             [--steps 40] [--train-size 256] [--no-dapo] [--guards scale]
    areal-sys bench rpo --seeds 3 ...

RPO's premise is that the skill RL improves lives in the regenerated tail of a response (or in
weights shared with it). `chain_tail` is the task where it holds (the demonstrator slips in the
last 2 steps), `chain_uniform` spreads the skill over every step, and `first_decision` puts it in
the first token, which a partial rollout never regenerates (the negative control). Every run is
`areal-sys run configs/tiny/{grpo,rpo_grpo}.yaml` (DAPO: `{dapo,rpo_dapo}`) with the same steps,
batch, seeds and `--train-size` train prompts (256: prompts are revisited, so the cache
matters), the fixed model of each task, and one evaluation at the final step (`--eval-k` samples
on `--eval-problems` held-out problems). On `chain_tail`, RPO + GRPO runs once more under each
sparse-signal guard mode in `--guards` (`trainer.sparse_signal`), compared with RPO + GRPO
without it, paired by seed.

The regeneration window is set in tokens per task (`rpo.max_regen_tokens`, `REGEN_TOKENS`):
m ~ U{1..L}. On the long-chain tasks a line is 8 tokens (`vv±b=rr` + newline) and the answer line
with EOS 8, so the result of the k-th step from the end is regenerated when m >= 8k + 3:
`window_arithmetic` writes P(that) for k = 1..4 and the expected share of tokens generated into
the JSON (L = 40 on ~120-token responses: P = 0.75 for the last step, ~83% fewer tokens).

Figures per task and setting (mean and 95% CI over seeds, per-seed values beside them): final
pass rate and gain over the same seed's pass rate before training, generated tokens per sample,
generation busy time per step (`gen_busy_s`), step time, the cache-fill pass's seconds, the
informative groups per step (`train/informative_groups`), and RPO's mechanism metrics
(`rpo/dead_prefix_frac`, `rpo/cache_refreshes`, `rpo/suffix_length_frac`,
`rpo/cache_correct_frac`). Per task, paired by seed: RPO's token and generation-time reductions
against the full version, and the pass-rate difference in points. The acceptance of the RPO issue
on `chain_tail` is evaluated from the data (>= 80% fewer tokens, >= 60% less generation time,
pass rate within 5 points of full GRPO, full GRPO gaining >= 15 points); never tuned toward.
Writes benchmarks/results/rpo.json and .png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    TASKS,
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

REGEN_TOKENS = {"first_decision": 8, "chain_tail": 40, "chain_uniform": 40}
LINE_TOKENS, ANSWER_TOKENS = 8, 8  # long-chain tasks: `vv±b=rr\n`, `#### rr` + EOS
CONFIGS = {"grpo": ("configs/tiny/grpo.yaml", "configs/tiny/rpo_grpo.yaml"),
           "dapo": ("configs/tiny/dapo.yaml", "configs/tiny/rpo_dapo.yaml")}
STEP_METRICS = ("gen_tokens_per_sample", "gen_busy_s", "step_time_s", "reward_mean",
                "train/informative_groups", "rpo/dead_prefix_frac", "rpo/cache_refreshes",
                "rpo/suffix_length_frac", "rpo/cache_correct_frac", "prefix_len_mean")
GOAL = {"tokens_reduction": 0.80, "gen_time_reduction": 0.60, "max_pass_rate_drop": 5.0,
        "full_min_gain": 15.0}


def window_arithmetic(limit: int, mean_response_tokens: float = 120.0) -> dict[str, Any]:
    """For m ~ U{1..limit}: P(the k-th step from the end has its result regenerated), k = 1..4
    (m >= 8k + 3 on the long-chain tasks), and the expected share of a response generated."""
    def p_at_least(n: int) -> float:
        return max(0, limit - n + 1) / limit

    mean_m = (limit + 1) / 2
    return {"L": limit, "mean_m": mean_m,
            "p_step_regenerated": {k: p_at_least(LINE_TOKENS * k + 3) for k in range(1, 5)},
            "generated_share": min(1.0, mean_m / mean_response_tokens),
            "mean_response_tokens": mean_response_tokens}


def settings_for(task: str, families: list[str], common: list[str],
                 guards: tuple[str, ...] = ()) -> list[Setting]:
    """Full and RPO runs per family; with `guards`, RPO + GRPO again under each
    `trainer.sparse_signal` mode (does the sparse-signal guard change RPO's result?)."""
    regen = [f"rpo.max_regen_tokens={REGEN_TOKENS[task]}", "rpo.regen_fraction=null"]
    meta = {"task": task, "rpo": True, "max_regen_tokens": REGEN_TOKENS[task]}
    out = []
    for fam in families:
        full, rpo = CONFIGS[fam]
        out.append(Setting(f"{task}/full_{fam}", full, tuple(common), {"task": task, "rpo": False}))
        out.append(Setting(f"{task}/rpo_{fam}", rpo, (*common, *regen), meta))
    for mode in guards:
        out.append(Setting(f"{task}/rpo_grpo_{mode}", CONFIGS["grpo"][1],
                           (*common, *regen, f"trainer.sparse_signal={mode}"),
                           {**meta, "sparse_signal": mode}))
    return out


def run_fn(reuse: bool, collect_only: bool):
    def run(setting: Setting, seed: int, run_dir: Path) -> dict[str, Any]:
        r = pipeline_run(setting, seed, run_dir, reuse, collect_only)
        fill = json.loads((run_dir / "results.json").read_text()).get("rpo_cache_fill") or {}
        return {**r, "cache_fill_s": float(fill.get("seconds", 0.0))}
    return run


def compare(full: dict[int, dict[str, Any]], rpo: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """RPO against the full version, paired by seed: reductions (fractions) of generated tokens
    per sample, of generation busy time per step (without and with the cache fill spread over the
    run) and of step time, and the pass-rate difference in points."""
    def mean_of(r: dict[str, Any], key: str) -> float:
        vals = [m[key] for m in r["metrics"] if key in m]
        return sum(vals) / len(vals)

    seeds = sorted(set(full) & set(rpo))
    if not seeds:
        return {"n": 0}

    def reduction(key: str) -> dict[str, Any]:
        return summarize([1 - mean_of(rpo[s], key) / mean_of(full[s], key) for s in seeds])

    with_fill = [1 - (sum(m["gen_busy_s"] for m in rpo[s]["metrics"]) + rpo[s]["cache_fill_s"])
                 / sum(m["gen_busy_s"] for m in full[s]["metrics"]) for s in seeds]
    return {
        "tokens_reduction": reduction("gen_tokens_per_sample"),
        "gen_time_reduction": reduction("gen_busy_s"),
        "gen_time_reduction_incl_fill": summarize(with_fill),
        "step_time_reduction": reduction("step_time_s"),
        "pass_rate_diff": scaled(paired_difference(
            {s: rpo[s]["pass_rate"] for s in seeds}, {s: full[s]["pass_rate"] for s in seeds}),
            100),
    }


def goal_on(task_figs: dict[str, Any]) -> dict[str, Any]:
    """The RPO issue's acceptance on `chain_tail` (RPO + GRPO against full GRPO), from means."""
    c, full = task_figs["rpo_grpo_vs_full"], task_figs["settings"]["full_grpo"]
    if c.get("n") == 0 or "gain" not in full:
        return {"verdict": "not measured"}
    checks = {
        "tokens_reduction": c["tokens_reduction"]["mean"] >= GOAL["tokens_reduction"],
        "gen_time_reduction": c["gen_time_reduction"]["mean"] >= GOAL["gen_time_reduction"],
        "pass_rate_within": c["pass_rate_diff"]["mean"] >= -GOAL["max_pass_rate_drop"],
        "full_grpo_learns": full["gain"]["mean"] >= GOAL["full_min_gain"],
    }
    return {**checks, "verdict": "met" if all(checks.values()) else "not met", "goal": GOAL}


def plot(by_task: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(by_task)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    panels = [("pass_rate", "final held-out pass rate (%)", 1.0),
              ("gen_tokens_per_sample", "generated tokens / sample", 1.0),
              ("gen_busy_s", "generation busy time / step (s)", 1.0)]
    width = 0.8 / max(len(s) for s in (by_task[t]["settings"] for t in tasks))
    for ax, (key, title, factor) in zip(axes, panels, strict=True):
        for ti, task in enumerate(tasks):
            for si, (name, f) in enumerate(by_task[task]["settings"].items()):
                if key not in f:
                    continue
                x = ti + (si - (len(by_task[task]["settings"]) - 1) / 2) * width
                ax.bar(x, f[key]["mean"] * factor, width, yerr=(f[key]["ci95"] or 0) * factor,
                       capsize=3, color="tab:green" if name.startswith("rpo") else "tab:gray")
                ax.text(x, 0, name.replace("_", "\n"), ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_title(title)
    fig.suptitle("RPO against full rollouts by task (mean and 95% CI over seeds; green: RPO)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    seed_args(p, steps=40, eval_problems=512, eval_k=2)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--train-size", type=int, default=256, help="synthetic train prompts")
    p.add_argument("--no-dapo", action="store_true", help="leave out DAPO on chain_tail")
    p.add_argument("--guards", default="scale",
                   help="sparse-signal guard modes run with RPO + GRPO on chain_tail, comma "
                   "separated (skip, scale; empty: none)")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench_rpo"))
    a = p.parse_args()
    seeds, by_task, record = seeds_of(a), {}, {}
    for task in a.tasks.split(","):
        t_args = argparse.Namespace(**{**vars(a), "task": task})
        common = [*learning_overrides(t_args, curve_points=1),
                  f"data.synthetic_train_size={a.train_size}"]
        families = ["grpo"] + (["dapo"] if task == "chain_tail" and not a.no_dapo else [])
        guards = tuple(g for g in a.guards.split(",") if g) if task == "chain_tail" else ()
        settings = settings_for(task, families, common, guards)
        grid = run_grid(settings, seeds, run_fn(a.reuse, a.collect_only), Path(a.runs_dir) / task,
                        before_fn=lambda seed, d, c=common: evaluate_initial(
                            CONFIGS["grpo"][0], c, seed, d, a.collect_only, a.reuse))
        figs = {s.name.split("/")[1]: setting_figures(grid.runs[s.name], STEP_METRICS,
                                                      grid.before) for s in settings}
        by_task[task] = {"settings": figs, "window": window_arithmetic(REGEN_TOKENS[task])}
        for fam in families:
            by_task[task][f"rpo_{fam}_vs_full"] = compare(grid.runs[f"{task}/full_{fam}"],
                                                          grid.runs[f"{task}/rpo_{fam}"])
            c = by_task[task][f"rpo_{fam}_vs_full"]
            if c.get("n") != 0:
                print(f"{task} RPO+{fam.upper()}: tokens -{fmt(c['tokens_reduction'], 100, 1, '%')}"
                      f", generation time -{fmt(c['gen_time_reduction'], 100, 1, '%')}, pass "
                      f"rate {fmt(c['pass_rate_diff'], unit=' points')}", flush=True)
        for mode in guards:  # the guard's effect on RPO + GRPO, paired by seed
            by_task[task][f"rpo_grpo_{mode}_vs_rpo_grpo"] = compare(
                grid.runs[f"{task}/rpo_grpo"], grid.runs[f"{task}/rpo_grpo_{mode}"])
        record[task] = grid_record(grid, keep_metrics=STEP_METRICS)
    summary = {"goal_chain_tail": goal_on(by_task["chain_tail"])} if "chain_tail" in by_task \
        else {}
    print(json.dumps(summary))
    out = write_results("rpo", {**summary, "by_task": by_task, "grids": record},
                        {"regen_tokens": REGEN_TOKENS, "seeds": seeds, "steps": a.steps,
                         "train_size": a.train_size, "configs": CONFIGS,
                         "eval": f"{a.eval_problems} problems x {a.eval_k}"},
                        out_dir=Path(a.out_dir))
    plot(by_task, figure_path("rpo", Path(a.out_dir)))
    print(f"wrote {out} and {figure_path('rpo', Path(a.out_dir))}")


if __name__ == "__main__":
    main()
