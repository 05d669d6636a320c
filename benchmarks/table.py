"""The README's tables, generated from benchmarks/results/*.json.

    python benchmarks/table.py                  # print the tables (markdown)
    python benchmarks/table.py --update-readme  # rewrite them between the README's markers

The Performance table (markers `performance-table`): one row per results file that has a
formatter below: the headline figure, the target it is held to (issue 8 / the papers' claims),
and the machine and date it was measured on (from the JSON, as `benchmarks/common.write_results`
records them). Files without a formatter are listed by name.

The learning tables (markers `learning-tables`): one table per multi-seed benchmark (staleness,
algorithms, async_vs_sync) with every figure as mean ± 95% CI half-width over n seeds, and the
verdicts those benchmarks computed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.stats import fmt  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START, END = "<!-- performance-table:start -->", "<!-- performance-table:end -->"
LEARNING_START, LEARNING_END = "<!-- learning-tables:start -->", "<!-- learning-tables:end -->"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def async_vs_sync(d: dict[str, Any]) -> tuple[str, str]:
    if "headline_eta" not in d:
        return _async_vs_sync_one_seed(d)
    eta, rows = d["headline_eta"], d["settings_by_name"]
    if d.get("speedup") is None:
        return f"η = {eta} not measured", ">= 2.0x, ±3 points"
    sync, head = rows["sync"], rows[f"eta{eta}"]
    return (f"**{fmt(d['speedup'], 1, 2, 'x')}** at the fixed η = {eta} (training loop "
            f"{sync['wall_s']['mean']:.0f} s sync vs {head['wall_s']['mean']:.0f} s, mean over "
            f"seeds); pass rate {fmt(d['pass_rate_diff'], 1, 1, ' points')} against sync "
            f"({sync['pass_rate']['mean']:.1f}% sync); every η in the learning tables below",
            ">= 2.0x, ±3 points")


def _async_vs_sync_one_seed(d: dict[str, Any]) -> tuple[str, str]:
    """The earlier single-seed format (best η after the fact), kept so that an old results file
    still renders."""
    rows = d.get("settings_by_name", {})
    sync = rows.get("sync", {})
    best = next((r for r in rows.values() if r.get("eta") == d.get("eta_best")
                 and r.get("eta", 0) > 0), None)
    if d.get("speedup") is None or best is None:
        return (f"no asynchronous setting within 3 points of sync "
                f"(sync pass rate {_pct(d['pass_rate_sync'])})", ">= 2.0x")
    steps = len(sync.get("step_time_s", []))
    split = rows.get("sync_split")
    vs_split = (f"; {split['wall_s'] / best['wall_s']:.2f}x against η = 0 on the same split cores"
                if split else "")
    return (f"**{d['speedup']:.2f}x** at η = {d['eta_best']} ({steps} steps: "
            f"{sync['wall_s']:.0f} s sync vs {best['wall_s']:.0f} s); pass rate "
            f"{_pct(d['pass_rate_sync'])} sync vs {_pct(d['pass_rate_async'])}; generation idle "
            f"{_pct(sync['gen_idle_frac'])} vs {_pct(best['gen_idle_frac'])}{vs_split}",
            ">= 2.0x, ±3 points")


def interruptible(d: dict[str, Any]) -> tuple[str, str]:
    if "gain_keep" not in d:  # the two-mode version of the benchmark
        others = ", ".join(f"{100 * r['gain']:+.1f}% every {r['update_every_s']:g} s"
                           for r in d.get("by_interval", [])[1:])
        return (f"**{100 * d['gain']:+.1f}%** tokens/s with a new version every "
                f"{d.get('update_every_s', 1):g} s ({d['tokens_per_s_interruptible']:.0f} vs "
                f"{d['tokens_per_s_non_interruptible']:.0f})" + (f"; {others}" if others else ""),
                ">= +10%")
    others = "; ".join(f"every {r['update_every_s']:g} s abort {100 * r['gain']:+.1f}%, keep "
                       f"{100 * r['gain_keep']:+.1f}%" for r in d.get("by_interval", [])[1:])
    return (f"tokens/s against `wait` with a new version every {d['update_every_s']:g} s: abort "
            f"**{100 * d['gain']:+.1f}%**, keep **{100 * d['gain_keep']:+.1f}%** "
            f"({d['tokens_per_s_interruptible']:.0f} / {d['tokens_per_s_keep']['mean']:.0f} / "
            f"{d['tokens_per_s_non_interruptible']:.0f})" + (f"; {others}" if others else ""),
            ">= +10% (abort)")


def rollout_overhead(d: dict[str, Any]) -> tuple[str, str]:
    cores = d["settings"].get("engine_cores")
    where = f"engine pinned to core {cores}" if cores else "engine and driver share the cores"
    by_run = d.get("ratio_by_run")
    if by_run:  # --runs K: the median of the runs' ratios
        spread = f" (median of {len(by_run)} runs: {', '.join(f'{r:.3f}' for r in by_run)})"
    else:
        rounds = d.get("ratios_by_round", [])
        spread = (f" over {len(rounds)} rounds ({min(rounds):.2f}–{max(rounds):.2f})"
                  if rounds else "")
    before = d.get("before")
    was = (f"; before this change {before['ratio']:.3f} (runs "
           f"{', '.join(f'{r:.3f}' for r in before['ratio_by_run'])})" if before else "")
    return (f"ratio **{d['ratio']:.3f}**{spread}, pooled {d['ratio_pooled']:.3f} "
            f"({d['tokens_per_s_worker']:.0f} vs {d['tokens_per_s_bare']:.0f} tokens/s; tiny "
            f"model, {where}){was}", ">= 0.98 pinned" if cores else ">= 0.95")


def controller_throughput(d: dict[str, Any]) -> tuple[str, str]:
    s = d["settings"]
    return (f"**{d['groups_per_s']:.0f} groups/s** at η = {d['eta']} (B = {s['batch_size']}, "
            f"n = {s['n_samples']}, {s['workers']} fake rollout workers)", "-")


def cold_start(d: dict[str, Any]) -> tuple[str, str]:
    phases = [(k.removesuffix("_s"), d[k]) for k in ("ray_s", "trainers_s", "engines_s",
                                                     "weight_group_s") if k in d]
    marks = ", ".join(f"{name} {t:.1f} s" for name, t in phases)
    return (f"**{d['seconds']:.1f} s** to the first trained step (config and data loaded at "
            f"{d['config_s']:.1f} s; ready at: {marks}; CPU demo, tiny model cached)", "<= 20 s")


def packing(d: dict[str, Any]) -> tuple[str, str]:
    return (f"**{d['ratio']:.2f}x** tokens/s packed vs padded; padding waste "
            f"{_pct(d['padding_waste'])} vs {_pct(d['padding_waste_padded'])}", "+30%")


def weight_sync(rows: list[dict[str, Any]]) -> tuple[str, str]:
    return ("; ".join(f"{r['model']} {r.get('dtype', 'float32')} {r['backend']} "
                      f"{r['sync_s']:.2f} s" for r in rows), "0.5B <= 2 s, tiny <= 50 ms")


def reward_load(d: dict[str, Any]) -> tuple[str, str]:
    return (f"**{d['throughput_rps']:.0f} requests/s**, p99 {d['p99_s']:.2f} s, "
            f"{d['failures']} failures ({d['requests']} mixed requests)", "-")


def reward_load_adversarial(d: dict[str, Any]) -> tuple[str, str]:
    c = d["settings"]["concurrency"]
    return (f"**{d['failures']} failures** of {d['well_formed_requests']} well-formed requests "
            f"next to {d['adversarial_requests']} hostile ones ({d['adversarial_mishandled']} "
            f"mishandled), {c} concurrent clients; p99 {d['p99_s']:.1f} s, p50 {d['p50_s']:.1f} s",
            "0 failures for well-formed items, p99 stated")


def _rpo_met(d: dict[str, Any]) -> bool:
    return (d["tokens_reduction"] >= 0.9 and d["gen_time_reduction"] >= 0.7
            and d["pass_rate_diff_points"] >= -5)


def rpo(d: dict[str, Any]) -> tuple[str, str]:
    target = ">= 80% fewer tokens, >= 60% less generation time, within 5 points (chain_tail)"
    if "by_task" in d:  # the multi-seed format: RPO + GRPO against full GRPO, per task
        parts = []
        for task, t in d["by_task"].items():
            c = t.get("rpo_grpo_vs_full", {})
            if c.get("n") == 0 or not c:
                continue
            parts.append(f"{task}: tokens **-{fmt(c['tokens_reduction'], 100, 0, '%')}**, "
                         f"generation time -{fmt(c['gen_time_reduction'], 100, 0, '%')}, pass "
                         f"rate {fmt(c['pass_rate_diff'], 1, 1, ' points')}")
        verdict = d.get("goal_chain_tail", {}).get("verdict", "not measured")
        return "; ".join(parts) + f" (goal on chain_tail: {verdict})", target
    return (f"RPO vs full GRPO: generated tokens/sample **{-100 * d['tokens_reduction']:+.0f}%**, "
            f"generation time/step **{-100 * d['gen_time_reduction']:+.0f}%**, pass rate "
            f"{_pct(d['pass_rate_rpo'])} vs {_pct(d['pass_rate_full'])} "
            f"({d['pass_rate_diff_points']:+.1f} points: {'met' if _rpo_met(d) else 'missed'}; "
            "one seed, the earlier single-task format)",
            "<= -90% tokens, <= -70% generation time, within 5 points")


def algorithms(d: dict[str, Any]) -> tuple[str, str]:
    if "settings_by_name" in d:
        rates = {k: v["pass_rate"] for k, v in d["settings_by_name"].items() if v.get("n")}
        lo, hi = (min(rates.values(), key=lambda r: r["mean"]),
                  max(rates.values(), key=lambda r: r["mean"]))
        held = [k for k, v in d["directions"].items() if v["verdict"] == "holds"]
        return (f"{len(rates)} settings: pass rate after {fmt(lo)} to {fmt(hi)}; paper's "
                f"directions holding: {', '.join(held) or 'none'} (learning tables below)", "-")
    rates = {k: v["pass_rate"] for k, v in d.items() if isinstance(v, dict) and "pass_rate" in v}
    return (f"{len(rates)} presets: pass rate after {_pct(min(rates.values()))}–"
            f"{_pct(max(rates.values()))}", "-")


def tools(d: dict[str, Any]) -> tuple[str, str]:
    f, calls = d["settings_by_name"]["tool_grpo"], d["call_rate"]
    return (f"tool demo: held-out pass rate {fmt(f.get('pass_rate_before'), 1, 1, '%')} -> "
            f"**{fmt(f.get('pass_rate'), 1, 1, '%')}**, episodes calling the calculator "
            f"{fmt(calls['before'], 1, 1, '%')} -> **{fmt(calls['after'], 1, 1, '%')}**, "
            f"{fmt(f.get('command_s'), 1, 0, ' s')} per run (learning tables below)",
            "the pass rate and the call rate rise; <= 10 min per run")


def staleness(d: dict[str, Any]) -> tuple[str, str]:
    g = d["goal"]
    if "decoupled_drop" not in g:
        return g["verdict"], "decoupled within 3 points of η = 0 at η = 4, naive >= 5 below"
    return (f"at η = 4, drop from η = 0: decoupled **{fmt(g['decoupled_drop'])}** points, naive "
            f"**{fmt(g['naive_drop'])}** points: goal {g['verdict']}",
            "decoupled within 3 points of η = 0 at η = 4, naive >= 5 below")


def vs_trl(d: dict[str, Any]) -> tuple[str, str]:
    """areal_sys against TRL's GRPOTrainer (benchmarks/vs_trl.py): the step-time ratio and both
    pass rates by the shared evaluator."""
    target = ">= 2x faster per step than TRL, pass rate within CI"
    by, st = d["by_system"], d["settings"]
    if d.get("speedup") is None:
        return "no paired run finished", target
    ours, theirs = by["areal_sys"], by["trl"]
    n = st.get("runs")

    def cell(x: dict[str, Any] | None, digits: int, unit: str) -> str:
        return fmt(x, 1, digits, unit, n_expected=n)

    return (f"**{cell(d['speedup'], 2, 'x')}** TRL {st.get('trl_version', '?')} s/step over "
            f"areal_sys's ({cell(theirs['step_s'], 2, ' s')} vs {cell(ours['step_s'], 2, ' s')}, "
            f"{st['steps']} steps of {st['batch_size']} × {st['n_samples']}, {n} runs each); pass "
            f"rate {cell(ours.get('pass_rate'), 1, '%')} vs {cell(theirs.get('pass_rate'), 1, '%')}"
            f" (areal_sys − TRL {cell(d.get('pass_rate_diff'), 1, ' points')}; one evaluator, "
            f"avg@{st['eval_k']})", target)


FORMATTERS: dict[str, Callable[[Any], tuple[str, str]]] = {
    "async_vs_sync": async_vs_sync, "interruptible": interruptible,
    "rollout_overhead": rollout_overhead, "rollout_overhead_pinned": rollout_overhead,
    "controller_throughput": controller_throughput,
    "cold_start": cold_start, "packing": packing, "weight_sync": weight_sync,
    "reward_load": reward_load, "reward_load_adversarial": reward_load_adversarial,
    "rpo": rpo, "algorithms": algorithms, "staleness": staleness, "vs_trl": vs_trl,
    "tools": tools,
}


def machine(record: Any) -> str:
    first = record[0] if isinstance(record, list) else record
    m = first.get("machine", {})
    text = f"{m.get('cpus_usable', '?')} CPU cores ({m.get('cpu', '?')}), {m.get('memory_gib')} GiB"
    if m.get("gpu"):
        text += f", {m['gpu']}"
    date = str(first.get("time", ""))[:10]
    return f"{text}; {date}" if date else text


def table(results: Path = RESULTS) -> str:
    lines = ["| benchmark | measured | target | machine, date |", "|---|---|---|---|"]
    others = []
    for path in sorted(results.glob("*.json")):
        record = json.loads(path.read_text())
        fmt = FORMATTERS.get(path.stem)
        if fmt is None:
            others.append(path.stem)
            continue
        try:
            figure, target = fmt(record)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            figure, target = f"(unreadable: missing {e})", "-"
        lines.append(f"| `{path.stem}` | {figure} | {target} | {machine(record)} |")
    if others:
        lines.append(f"\nAlso in `benchmarks/results/`: {', '.join(others)}.")
    return "\n".join(lines)


def _fmt_for(d: dict[str, Any]) -> Callable[..., str]:
    """`stats.fmt` that leaves '(n = N)' out when N is the record's number of seeds."""
    n = len(d["settings"].get("seeds", []))
    return lambda s, factor=1.0, digits=1, unit="": fmt(s, factor, digits, unit, n_expected=n)


def _caption(d: dict[str, Any], what: str) -> str:
    """The sentence above a learning table: what ran, on what, and how figures read."""
    st = d["settings"]
    over = dict(o.split("=", 1) for o in st.get("common_overrides", []))
    return (f"{what}: task `{st.get('task', '?')}`, {over.get('trainer.total_steps', '?')} steps, "
            f"B = {over.get('controller.batch_size', '?')} × {over.get('rollout.n_samples', '?')}, "
            f"seeds {st.get('seeds')}, held-out {over.get('eval.num_problems', '?')} problems × "
            f"k = {over.get('eval.k', '?')}; mean ± 95% CI half-width over the seeds "
            f"((n = N) where fewer runs finished); "
            f"{machine(d)}.")


def staleness_table(d: dict[str, Any]) -> str:
    cell = _fmt_for(d)
    figs, etas = d["settings_by_name"], d["settings"]["etas"]
    lines = [_caption(d, f"Decoupled vs naive PPO under staleness (`staleness`, "
                         f"{d['settings']['minibatches']} minibatches per step, lr "
                         f"{d['settings']['lr']:g})"), "",
             "| η | decoupled pass (%) | naive pass (%) | decoupled − naive (points) | "
             "drop from η = 0, decoupled | drop from η = 0, naive | capped tokens, decoupled (%)"
             " | KL(behav ‖ current), decoupled / naive | train wall (s), decoupled / naive |",
             "|---|---|---|---|---|---|---|---|---|"]
    for eta in etas:
        dec, nai = figs.get(f"decoupled_eta{eta}", {}), figs.get(f"naive_eta{eta}", {})
        drop = d["drop_from_eta0"]
        lines.append(
            f"| {eta} | {cell(dec.get('pass_rate'))} | {cell(nai.get('pass_rate'))} | "
            f"{cell(d['by_eta'][str(eta)]['decoupled_minus_naive'])} | "
            f"{cell(drop['decoupled'].get(str(eta)))} | {cell(drop['naive'].get(str(eta)))} | "
            f"{cell(dec.get('train/behav_capped_frac'), 100, 2)} | "
            f"{cell(dec.get('train/approx_kl_behav'), 1, 4)} / "
            f"{cell(nai.get('train/approx_kl_behav'), 1, 4)} | "
            f"{cell(dec.get('wall_s'), 1, 0)} / {cell(nai.get('wall_s'), 1, 0)} |")
    lines += ["", f"Goal ({d['goal']['goal']}): **{d['goal']['verdict']}**."]
    return "\n".join(lines)


def algorithms_table(d: dict[str, Any]) -> str:
    cell = _fmt_for(d)
    lines = [_caption(d, "Algorithm presets (`algorithms`)"), "",
             "| setting | pass rate after (%) | gain over before (points) | entropy drop (nats) | "
             "KL to initial, last step | train wall (s) |", "|---|---|---|---|---|---|"]
    for name, f in d["settings_by_name"].items():
        if not f.get("n"):
            lines.append(f"| {name} | (no run finished) | | | | |")
            continue
        kl = f.get("train/kl_to_initial_by_step") or []
        lines.append(f"| {name} | {cell(f['pass_rate'])} | {cell(f.get('gain'))} | "
                     f"{cell(f.get('entropy_drop'), 1, 3)} | {f'{kl[-1]:.4f}' if kl else '-'} | "
                     f"{cell(f['wall_s'], 1, 0)} |")
    lines += ["", "The paper's directions (paired differences over the same seeds):", ""]
    if not d["directions"]:
        lines.append("- none computable from the settings run")
    for key, v in d["directions"].items():
        diff = v.get("difference")
        figure = f": {cell(diff)} points" if diff is not None else ""
        lines.append(f"- {v['claim']}{figure} → **{v['verdict']}** (`{key}`)")
    return "\n".join(lines)


def async_vs_sync_table(d: dict[str, Any]) -> str:
    cell = _fmt_for(d)
    lines = [_caption(d, f"Synchronous vs asynchronous (`async_vs_sync`, headline at the fixed "
                         f"η = {d['headline_eta']})"), "",
             "| setting | η | train wall (s) | generation idle (%) | pass rate (%) | "
             "speedup vs sync | pass rate vs sync (points) |", "|---|---|---|---|---|---|---|"]
    for name, f in d["settings_by_name"].items():
        row = d["by_eta"].get(str(f["eta"])) if name.startswith("eta") else None
        lines.append(f"| {name} | {f['eta']} | {cell(f['wall_s'], 1, 0)} | "
                     f"{cell(f['gen_idle_frac'], 100)} | {cell(f['pass_rate'])} | "
                     f"{cell(row['speedup'], 1, 2) if row else '-'} | "
                     f"{cell(row['pass_rate_diff']) if row else '-'} |")
    return "\n".join(lines)


def tools_table(d: dict[str, Any]) -> str:
    cell = _fmt_for(d)
    f, calls = d["settings_by_name"]["tool_grpo"], d["call_rate"]
    return "\n".join([
        _caption(d, "The tool demo (`tools`, configs/tiny/tool_grpo.yaml)"), "",
        "| pass before (%) | pass after (%) | gain (points) | calls before (%) | calls after (%) "
        "| call rise (points) | train wall (s) | whole command (s) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {cell(f.get('pass_rate_before'))} | {cell(f.get('pass_rate'))} | "
        f"{cell(f.get('gain'))} | {cell(calls['before'])} | {cell(calls['after'])} | "
        f"{cell(calls['rise'])} | {cell(f.get('wall_s'), 1, 0)} | "
        f"{cell(f.get('command_s'), 1, 0)} |"])


LEARNING = {"staleness": staleness_table, "algorithms": algorithms_table,
            "algorithms_chain_tail": algorithms_table, "async_vs_sync": async_vs_sync_table,
            "tools": tools_table}


def learning_tables(results: Path = RESULTS) -> str:
    """The multi-seed tables of the results files in their multi-seed format (the ones with
    per-seed values); a file still in an earlier one-seed format is skipped."""
    parts = []
    for name, render in LEARNING.items():
        path = results / f"{name}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or "per_seed" not in record:
            continue
        try:
            parts.append(f"#### `{name}`\n\n{render(record)}")
        except (KeyError, TypeError, ValueError, IndexError) as e:
            parts.append(f"#### `{name}`\n\n(unreadable: missing {e})")
    head = ("### Learning benchmarks over seeds\n\nGenerated by `python benchmarks/table.py "
            "--update-readme` from `benchmarks/results/{"
            f"{','.join(LEARNING)}}}.json`.")
    if not parts:
        return (f"{head}\n\nNo multi-seed results yet: `areal-sys bench "
                "staleness|algorithms|async_vs_sync --seeds 3` writes them.")
    return "\n\n".join([head, *parts])


def update_readme(text: str, readme: Path = README, start: str = START, end: str = END) -> None:
    """Replace what is between the markers `start` and `end` of `readme` with `text`."""
    content = readme.read_text()
    if start not in content or end not in content:
        raise SystemExit(f"{readme}: markers {start} / {end} not found")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--update-readme", action="store_true")
    a = p.parse_args()
    text, learning = table(), learning_tables(RESULTS)
    print(text, learning, sep="\n\n")
    if a.update_readme:
        update_readme(text)
        update_readme(learning, start=LEARNING_START, end=LEARNING_END)
        print(f"updated {README}", file=sys.stderr)


if __name__ == "__main__":
    main()
