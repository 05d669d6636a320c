"""The README's Performance table, generated from benchmarks/results/*.json.

    python benchmarks/table.py                  # print the table (markdown)
    python benchmarks/table.py --update-readme  # rewrite it between the README's markers

One row per results file that has a formatter below: the headline figure, the target it is held
to (issue 8 / the papers' claims), and the machine and date it was measured on (from the JSON, as
`benchmarks/common.write_results` records them). Files without a formatter are listed by name.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START, END = "<!-- performance-table:start -->", "<!-- performance-table:end -->"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def async_vs_sync(d: dict[str, Any]) -> tuple[str, str]:
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
    others = ", ".join(f"{100 * r['gain']:+.1f}% every {r['update_every_s']:g} s"
                       for r in d.get("by_interval", [])[1:])
    return (f"**{100 * d['gain']:+.1f}%** tokens/s with a new version every "
            f"{d.get('update_every_s', 1):g} s ({d['tokens_per_s_interruptible']:.0f} vs "
            f"{d['tokens_per_s_non_interruptible']:.0f})" + (f"; {others}" if others else ""),
            ">= +10%")


def rollout_overhead(d: dict[str, Any]) -> tuple[str, str]:
    cores = d["settings"].get("engine_cores")
    where = f"engine pinned to core {cores}" if cores else "engine and driver share the cores"
    rounds = d.get("ratios_by_round", [])
    spread = f" over {len(rounds)} rounds ({min(rounds):.2f}–{max(rounds):.2f})" if rounds else ""
    return (f"ratio **{d['ratio']:.3f}**{spread}, pooled {d['ratio_pooled']:.3f} "
            f"({d['tokens_per_s_worker']:.0f} vs {d['tokens_per_s_bare']:.0f} tokens/s; tiny "
            f"model, {where})", ">= 0.95")


def controller_throughput(d: dict[str, Any]) -> tuple[str, str]:
    s = d["settings"]
    return (f"**{d['groups_per_s']:.0f} groups/s** at η = {d['eta']} (B = {s['batch_size']}, "
            f"n = {s['n_samples']}, {s['workers']} fake rollout workers)", "-")


def cold_start(d: dict[str, Any]) -> tuple[str, str]:
    return (f"**{d['seconds']:.1f} s** to the first trained step (config and data loaded at "
            f"{d['config_s']:.1f} s, Ray and placement groups ready at {d['ray_s']:.1f} s; "
            "CPU demo, tiny model cached)", "-")


def packing(d: dict[str, Any]) -> tuple[str, str]:
    return (f"**{d['ratio']:.2f}x** tokens/s packed vs padded; padding waste "
            f"{_pct(d['padding_waste'])} vs {_pct(d['padding_waste_padded'])}", "+30%")


def weight_sync(rows: list[dict[str, Any]]) -> tuple[str, str]:
    return ("; ".join(f"{r['model']} {r['backend']} {r['sync_s']:.2f} s" for r in rows), "-")


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
    return (f"RPO vs full GRPO: generated tokens/sample **{-100 * d['tokens_reduction']:+.0f}%**, "
            f"generation time/step **{-100 * d['gen_time_reduction']:+.0f}%**, pass rate "
            f"{_pct(d['pass_rate_rpo'])} vs {_pct(d['pass_rate_full'])} "
            f"({d['pass_rate_diff_points']:+.1f} points: {'met' if _rpo_met(d) else 'missed'})",
            "<= -90% tokens, <= -70% generation time, within 5 points")


def algorithms(d: dict[str, Any]) -> tuple[str, str]:
    rates = {k: v["pass_rate"] for k, v in d.items() if isinstance(v, dict) and "pass_rate" in v}
    return (f"{len(rates)} presets: pass rate after {_pct(min(rates.values()))}–"
            f"{_pct(max(rates.values()))}", "-")


FORMATTERS: dict[str, Callable[[Any], tuple[str, str]]] = {
    "async_vs_sync": async_vs_sync, "interruptible": interruptible,
    "rollout_overhead": rollout_overhead, "rollout_overhead_pinned": rollout_overhead,
    "controller_throughput": controller_throughput,
    "cold_start": cold_start, "packing": packing, "weight_sync": weight_sync,
    "reward_load": reward_load, "reward_load_adversarial": reward_load_adversarial,
    "rpo": rpo, "algorithms": algorithms,
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


def update_readme(text: str, readme: Path = README) -> None:
    content = readme.read_text()
    if START not in content or END not in content:
        raise SystemExit(f"{readme}: markers {START} / {END} not found")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--update-readme", action="store_true")
    a = p.parse_args()
    text = table()
    print(text)
    if a.update_readme:
        update_readme(text)
        print(f"updated {README}", file=sys.stderr)


if __name__ == "__main__":
    main()
