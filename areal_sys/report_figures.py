"""The figures of `areal-sys report` (areal_sys/report.py), one function per PNG.

Each takes the rows of its source file, the PNG's path, the run directory and the Report; it
leaves out rows lacking its fields (and says how many in `Report.skipped`) and raises SkipFigure
when nothing is left. Drawn through matplotlib's object API: no pyplot, no display needed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from areal_sys.report_rows import (
    KIND_COLORS,
    MAX_EVAL_SERIES,
    MAX_STALENESS_BARS,
    MAX_TIMELINE_WORKERS,
    Report,
    SkipFigure,
    busy_fractions,
    clean_spans,
    label,
    left_out,
    max_staleness,
    merge_intervals,
    mismatch_prefix,
    number,
    staleness_bars,
    staleness_values,
)


def _figure(width: float = 7.0, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    """Write through a temporary file and rename it over `path`: a symlink at `path` is replaced,
    never followed, and a failed write leaves no half PNG."""
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)
    return path


def _series(rows: list[dict[str, Any]], key: str, figure: str,
            report: Report) -> tuple[list[float], list[float]]:
    """(step, value) of every row where both are finite numbers; `SkipFigure` when there is none."""
    pairs = [(number(r.get("step")), number(r.get(key))) for r in rows]
    good = [(s, v) for s, v in pairs if s is not None and v is not None]
    if not good:
        raise SkipFigure(f"no row of metrics.jsonl has a numeric step and {key}")
    if len(good) < len(rows):
        report.skipped.append(left_out("metrics.jsonl", len(rows) - len(good), len(rows),
                                        figure, f"numeric step and {key}"))
    return [p[0] for p in good], [p[1] for p in good]


def _running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_reward(metrics: list[dict[str, Any]], path: Path, run: Path, report: Report) -> Path:
    steps, reward = _series(metrics, "reward_mean", path.name, report)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(steps, reward, ".-", color="tab:blue", alpha=0.5, label="batch mean")
    window = max(1, len(reward) // 10)
    if window > 1:
        ax.plot(steps, _running_mean(reward, window), color="tab:blue",
                label=f"running mean ({window} steps)")
    ax.set(xlabel="step", ylabel="reward", title="mean reward of the trained batch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_throughput(metrics: list[dict[str, Any]], path: Path, run: Path, report: Report) -> Path:
    steps, tok_s = _series(metrics, "tokens_per_s", path.name, report)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(steps, tok_s, ".-", color="tab:green", label="per step")
    mean = sum(v / len(tok_s) for v in tok_s)  # divided first: no overflow on huge values
    if math.isfinite(mean):
        ax.axhline(mean, color="gray", ls="--", label=f"mean {mean:.0f} tokens/s")
    ax.set(xlabel="step", ylabel="tokens / s",
           title="generated tokens per second of step time (batch tokens / step time)")
    ax.set_ylim(bottom=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_pass_rate(rows: list[dict[str, Any]], path: Path, run: Path, report: Report) -> Path:
    points = sorted((number(r.get("version")) or 0.0, 100 * rate, label(r.get("tag", "")))
                    for r in rows if (rate := number(r.get("pass_rate"))) is not None)
    if not points:
        raise SkipFigure("no row of eval.jsonl has a numeric pass_rate")
    if len(points) < len(rows):
        report.skipped.append(left_out("eval.jsonl", len(rows) - len(points), len(rows),
                                        path.name, "numeric pass_rate"))
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color="tab:purple",
            label="pass rate (avg@k)")
    for version, rate, tag in points[:MAX_STALENESS_BARS]:  # labels only while they can be read
        ax.annotate(f"{rate:.1f}%" + (f" ({tag})" if tag else ""), (version, rate),
                    textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    pass_at = sorted({k for r in rows for k in r if k.startswith("pass@")})  # controller eval
    for key in pass_at[:MAX_EVAL_SERIES]:
        xs = sorted((number(r.get("version")) or 0.0, 100 * v) for r in rows
                    if (v := number(r.get(key))) is not None)
        ax.plot([x for x, _ in xs], [y for _, y in xs], "s--", ms=4, alpha=0.7,
                label=label(key))
    ax.margins(x=0.1)
    ax.set(xlabel="policy version (steps trained)", ylabel="pass rate (%)",
           title="held-out pass rate", ylim=(0, 105))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_staleness(rows: list[dict[str, Any]], path: Path, run: Path, report: Report) -> Path:
    values, no_tokens, bad = staleness_values(rows)
    if bad:
        report.skipped.append(left_out("staleness.jsonl", bad, len(rows), path.name,
                                        "integer trainer_version >= min_token_version"))
    if not values and not no_tokens:
        raise SkipFigure("no row of staleness.jsonl has integer trainer_version and "
                    "min_token_version")
    fig = _figure()
    ax = fig.add_subplot()
    eta = max_staleness(run)
    first = min(values) if values else 0
    if values:
        labels, counts = staleness_bars(values)
        bars = ax.bar(range(len(counts)), counts, color="tab:orange", width=0.8)
        ax.bar_label(bars, fontsize=8, labels=[
            f"{c} ({100 * c / len(values):.0f}%)" if len(counts) <= 12 else str(c) for c in counts])
        ax.set_xticks(range(len(counts)), labels=labels)
        last_integer = first + len(counts) - 1 - (labels[-1].startswith(">"))
        if eta is not None and first - 1 <= eta <= last_integer:  # else off the drawn bars
            ax.axvline(eta - first + 0.5, color="gray", ls="--", label=f"bound: eta = {eta}")
            ax.set_xlim(min(-0.6, eta - first), max(len(counts) - 0.4, eta - first + 1.0))
            ax.legend()
    ax.margins(y=0.12)
    extra = f"; {no_tokens} with no generated token left out" if no_tokens else ""
    ax.set(xlabel="staleness = trainer version - oldest token version",
           ylabel="trajectories", title=f"staleness of {len(values)} trained trajectories{extra}")
    return _save(fig, path)


def plot_timeline(rows: list[dict[str, Any]], path: Path, run: Path, report: Report) -> Path:
    from matplotlib.patches import Patch

    spans, bad = clean_spans(rows)
    if bad:
        report.skipped.append(left_out("timeline.jsonl", bad, len(rows), path.name,
                                        "string worker and kind, numeric start <= end"))
    if not spans:
        raise SkipFigure("no row of timeline.jsonl is a span")
    busy, window = busy_fractions(spans)
    if not math.isfinite(window):
        raise SkipFigure("its spans' times are out of range (the window is not finite)")
    report.busy, report.window_s = busy, window
    t0 = min(s["start"] for s in spans)
    workers = list(busy)[:MAX_TIMELINE_WORKERS]
    if len(busy) > len(workers):
        report.skipped.append(f"timeline.png: {len(busy) - len(workers)} workers past the first "
                              f"{MAX_TIMELINE_WORKERS} not drawn")
    by_row: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for s in spans:
        by_row.setdefault((s["worker"], s["kind"]), []).append((s["start"], s["end"]))
    fig = _figure(10.0, 1.2 + 0.55 * len(workers))
    ax = fig.add_subplot()
    kinds_seen: list[str] = []
    for row, worker in enumerate(workers):
        for kind, color in KIND_COLORS.items():
            intervals = by_row.get((worker, kind))
            if not intervals:
                continue
            if kind not in kinds_seen:
                kinds_seen.append(kind)
            bars = [(start - t0, end - start) for start, end in merge_intervals(intervals)]
            ax.broken_barh(bars, (row - 0.35, 0.7), facecolors=color)
    ax.set_yticks(range(len(workers)),
                  labels=[f"{label(w)}  {100 * busy[w]:.0f}% busy" for w in workers])
    ax.invert_yaxis()
    ax.set_xlim(0, window if window > 0 else 1.0)
    ax.set(xlabel="seconds since the first span",
           title=f"timeline: busy (coloured) and idle (white) time per worker, {window:.1f} s")
    if kinds_seen:
        fig.legend(handles=[Patch(color=KIND_COLORS[k], label=k) for k in kinds_seen],
                   loc="outside lower center", ncol=len(kinds_seen), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _pairs(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(step, value) of the rows where both are finite numbers (no skip note: the figure's main
    series says how many rows it left out)."""
    good = [(s, v) for r in rows
            if (s := number(r.get("step"))) is not None and (v := number(r.get(key))) is not None]
    return [p[0] for p in good], [p[1] for p in good]


def _log_if_positive(ax: Any, *series: list[float], spread: float = 1.0) -> None:
    """Log y scale when every value is positive and max/min exceeds `spread`."""
    values = [v for vs in series for v in vs]
    if values and min(values) > 0 and max(values) / min(values) > spread:
        ax.set_yscale("log")


def plot_mismatch(metrics: list[dict[str, Any]], path: Path, run: Path, report: Report) -> Path:
    """Train–inference mismatch per step (areal_sys/algorithms/mismatch.py): the log-prob gap
    between the engine and the trainer's π_prox on the tokens generated at the trainer's version,
    the behaviour weight's range there, and the fraction of those tokens off by more than 1%,
    10% and a factor 2 (with the share of response tokens the figures cover). Steps with no such
    token (`tokens` 0: with a staleness bound the rollouts run ahead, so most steps train on
    older tokens) are drawn only in that share."""
    pre = mismatch_prefix(metrics)
    # a step whose batch held no token of the trainer's version (usual with a staleness bound:
    # rollouts run ahead) has only the counts: not drawn, and not counted as damaged
    covered = [r for r in metrics if number(r.get(pre + "tokens")) != 0]
    steps, k3 = _series(covered, pre + "k3", path.name, report)
    fig = _figure(7.0, 8.0)
    gap, weight, tails = fig.subplots(3, 1, sharex=True)
    drawn = [k3]
    gap.plot(steps, k3, ".-", color="tab:red", label="k3 KL(π_b ‖ π_prox)")
    for key, style, name in (("abs_logp_diff_mean", "tab:blue", "mean |Δ log p|"),
                             ("abs_logp_diff_max", "tab:purple", "max |Δ log p|")):
        xs, ys = _pairs(covered, pre + key)
        gap.plot(xs, ys, ".-", color=style, label=name)
        drawn.append(ys)
    _log_if_positive(gap, *drawn)
    gap.set(ylabel="nats", title=f"engine vs trainer, tokens at the trainer's version: "
            f"{len(steps)} of {len(metrics)} steps")
    weights = []
    for key, style in (("weight_max", "tab:red"), ("weight_mean", "tab:green"),
                       ("weight_min", "tab:blue")):
        xs, ys = _pairs(covered, pre + key)
        weight.plot(xs, ys, ".-", color=style, label=key.replace("_", " "))
        weights.append(ys)
    weight.axhline(1.0, color="gray", ls="--", lw=0.8)
    _log_if_positive(weight, *weights, spread=10.0)
    if weight.get_yscale() == "linear":
        weight.ticklabel_format(axis="y", useOffset=False)  # 1.00001, not 1e-5 + 1
    weight.set(ylabel="π_prox / π_b", title="behaviour weight on those tokens")
    for key, style in (("weight_out_1pct_frac", "tab:olive"),
                       ("weight_out_10pct_frac", "tab:orange"),
                       ("weight_out_2x_frac", "tab:red")):
        xs, ys = _pairs(covered, pre + key)
        tails.plot(xs, ys, ".-", color=style,
                   label="off by > " + key.split("_")[2].replace("pct", "%"))
    xs, ys = _pairs(metrics, pre + "token_frac")  # every step, 0 where none
    tails.plot(xs, ys, ":", color="gray", label="tokens covered (of all)")
    tails.set(xlabel="step", ylabel="fraction of tokens", ylim=(-0.02, 1.02),
              title="weight tails")
    tails.xaxis.get_major_locator().set_params(integer=True)
    for ax in (gap, weight, tails):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_episodes(metrics: list[dict[str, Any]], path: Path, run: Path, report: Report) -> Path:
    """tool_use runs: how often episodes call tools and fail, and their tokens by source."""
    steps, calls = _series(metrics, "episode/call_rate", path.name, report)
    fig = _figure(11.0, 4.0)
    left, right = fig.subplots(1, 2)
    left.plot(steps, [100 * v for v in calls], ".-", color="tab:orange",
              label="episodes with a call (%)")
    err_steps, errors = _pairs(metrics, "episode/tool_errors")
    if errors:
        left.plot(err_steps, [100 * v for v in errors], ".-", color="tab:red",
                  label="failed calls per 100 episodes")
    left.set(xlabel="step", ylabel="%", title="tool calls of the trained episodes")
    for key, color, name in (("episode/model_tokens", "tab:blue", "model"),
                             ("episode/tool_tokens", "tab:gray", "tool results")):
        s, v = _pairs(metrics, key)
        if v:
            right.plot(s, v, ".-", color=color, label=name)
    right.set(xlabel="step", ylabel="tokens per episode", title="response tokens by source")
    for ax in (left, right):
        ax.set_ylim(bottom=0)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)
