"""`areal-sys report RUN_DIR`: PNG figures of a run from its JSON-lines files, in RUN_DIR/report/.

| figure | source | what |
|---|---|---|
| reward.png | metrics.jsonl | mean reward of each step's batch, and its running mean |
| pass_rate.png | eval.jsonl | held-out pass rate at each evaluated policy version |
| staleness.png | staleness.jsonl | histogram of trainer_version - min_token_version |
| throughput.png | metrics.jsonl | generated tokens per second of step time, per step |
| timeline.png | timeline.jsonl | Gantt chart: each worker's spans by kind; white is idle |

Busy fraction of a worker = |union of its spans| / (last end - first start over all spans), so a
worker's overlapping spans (many groups in one engine) count once and its idle gaps show.

metrics.jsonl is required; a missing optional file skips its figure and says so. matplotlib is
imported inside the functions (`import areal_sys` stays light), through its object API (no
pyplot, no display needed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KIND_COLORS = {"generate": "tab:blue", "reward": "tab:orange", "train": "tab:green",
               "sync": "tab:red", "eval": "tab:purple", "cache_fill": "tab:brown"}
ROLE_ORDER = ("rollout", "reward", "trainer", "critic", "sync")


class ReportError(ValueError):
    """A missing or unreadable run directory or file; printed as one line (exit code 2)."""


@dataclass
class Report:
    figures: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "figure: why"
    busy: dict[str, float] = field(default_factory=dict)  # worker -> busy fraction
    window_s: float = 0.0  # first span start to last span end


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file. A cut-off last line (a crash mid-write) is ignored; any other
    bad line is a ReportError naming the file and line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ReportError(f"{path}: line {i + 1} is not JSON") from None
    return rows


def merge_intervals(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Union of closed intervals, sorted and non-overlapping."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def worker_key(name: str) -> tuple[int, int, str]:
    """Rows of the Gantt chart: rollout0, rollout1, ..., reward, trainer, critic, sync, others."""
    for rank, role in enumerate(ROLE_ORDER):
        if name.startswith(role):
            suffix = name[len(role):]
            return rank, int(suffix) if suffix.isdigit() else -1, name
    return len(ROLE_ORDER), 0, name


def busy_fractions(spans: list[dict[str, Any]]) -> tuple[dict[str, float], float]:
    """Busy fraction per worker (module doc) and the window's length in seconds."""
    if not spans:
        return {}, 0.0
    t0 = min(s["start"] for s in spans)
    window = max(s["end"] for s in spans) - t0
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for s in spans:
        by_worker.setdefault(s["worker"], []).append((s["start"], s["end"]))
    busy = {}
    for worker in sorted(by_worker, key=worker_key):
        covered = sum(e - s for s, e in merge_intervals(by_worker[worker]))
        busy[worker] = covered / window if window > 0 else 1.0
    return busy, window


def write_report(run_dir: str | Path) -> Report:
    """Every figure whose source file exists, into RUN_DIR/report/ (module doc)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ReportError(f"run directory {str(run_dir)!r} does not exist")
    if not (run / "metrics.jsonl").is_file():
        raise ReportError(f"{run}: no metrics.jsonl, so not a run directory (or no step finished)")
    try:
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise ReportError("report needs matplotlib: pip install matplotlib "
                          "(or pip install -e '.[observe]')") from None
    out = run / "report"
    out.mkdir(exist_ok=True)
    report = Report()
    metrics = read_rows(run / "metrics.jsonl")
    if not metrics:
        raise ReportError(f"{run / 'metrics.jsonl'}: empty (no step finished)")
    report.figures += [_reward(metrics, out / "reward.png"),
                       _throughput(metrics, out / "throughput.png")]
    sources = {"pass_rate.png": ("eval.jsonl", _pass_rate),
               "staleness.png": ("staleness.jsonl", _staleness),
               "timeline.png": ("timeline.jsonl", _timeline)}
    for name, (source, plot) in sources.items():
        path = run / source
        rows = read_rows(path) if path.is_file() else []
        if not rows:
            report.skipped.append(f"{name}: no {source} or it is empty")
            continue
        report.figures.append(plot(rows, out / name, run=run))
    timeline = run / "timeline.jsonl"
    if timeline.is_file():
        report.busy, report.window_s = busy_fractions(read_rows(timeline))
    return report


# ---------------------------------------------------------------------------- figures
def _figure(width: float = 7.0, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _reward(metrics: list[dict[str, Any]], path: Path) -> Path:
    steps, reward = _series(metrics, "reward_mean")
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


def _throughput(metrics: list[dict[str, Any]], path: Path) -> Path:
    steps, tok_s = _series(metrics, "tokens_per_s")
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(steps, tok_s, ".-", color="tab:green", label="per step")
    if tok_s:
        mean = sum(tok_s) / len(tok_s)
        ax.axhline(mean, color="gray", ls="--", label=f"mean {mean:.0f} tokens/s")
    ax.set(xlabel="step", ylabel="tokens / s",
           title="generated tokens per second of step time (batch tokens / step time)")
    ax.set_ylim(bottom=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _pass_rate(rows: list[dict[str, Any]], path: Path, run: Path) -> Path:
    points = sorted((r.get("version", 0), 100 * r["pass_rate"], r.get("tag", ""))
                    for r in rows if r.get("pass_rate") is not None)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color="tab:purple",
            label="pass rate (avg@k)")
    for version, rate, tag in points:
        ax.annotate(f"{rate:.1f}%" + (f" ({tag})" if tag else ""), (version, rate),
                    textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    pass_at = sorted({k for r in rows for k in r if k.startswith("pass@")})  # controller eval
    for key in pass_at:
        xs = sorted((r.get("version", 0), 100 * r[key]) for r in rows if r.get(key) is not None)
        ax.plot([x for x, _ in xs], [y for _, y in xs], "s--", ms=4, alpha=0.7, label=key)
    ax.margins(x=0.1)
    ax.set(xlabel="policy version (steps trained)", ylabel="pass rate (%)",
           title="held-out pass rate", ylim=(0, 105))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _staleness(rows: list[dict[str, Any]], path: Path, run: Path) -> Path:
    values = [r["trainer_version"] - r["min_token_version"] for r in rows
              if r.get("min_token_version") is not None and r["min_token_version"] >= 0]
    no_tokens = len(rows) - len(values)  # RPO: nothing generated in this rollout
    fig = _figure()
    ax = fig.add_subplot()
    if values:
        lo, hi = min(values), max(values)
        counts = [values.count(v) for v in range(lo, hi + 1)]
        bars = ax.bar(range(lo, hi + 1), counts, color="tab:orange", width=0.8)
        ax.bar_label(bars, labels=[f"{c} ({100 * c / len(values):.0f}%)" for c in counts],
                     fontsize=8)
        ax.set_xticks(range(lo, hi + 1))
    eta = _max_staleness(run)
    if eta is not None:
        ax.axvline(eta + 0.5, color="gray", ls="--", label=f"bound: eta = {eta}")
        ax.legend()
        if values:
            ax.set_xlim(min(values) - 0.6, max(max(values), eta) + 1.0)
    ax.margins(y=0.12)
    extra = f"; {no_tokens} with no generated token left out" if no_tokens else ""
    ax.set(xlabel="staleness = trainer version - oldest token version",
           ylabel="trajectories", title=f"staleness of {len(values)} trained trajectories{extra}")
    return _save(fig, path)


def _max_staleness(run: Path) -> int | None:
    """eta from the run's resolved config.yaml, if there is one."""
    import yaml

    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        return int(cfg["controller"]["max_staleness"])
    except (OSError, TypeError, KeyError, ValueError, yaml.YAMLError):
        return None


def _timeline(spans: list[dict[str, Any]], path: Path, run: Path) -> Path:
    from matplotlib.patches import Patch

    busy, window = busy_fractions(spans)
    t0 = min(s["start"] for s in spans)
    workers = list(busy)
    fig = _figure(10.0, 1.2 + 0.55 * len(workers))
    ax = fig.add_subplot()
    kinds_seen: list[str] = []
    for row, worker in enumerate(workers):
        for kind, color in KIND_COLORS.items():
            intervals = [(s["start"], s["end"]) for s in spans
                         if s["worker"] == worker and s["kind"] == kind]
            if not intervals:
                continue
            if kind not in kinds_seen:
                kinds_seen.append(kind)
            bars = [(start - t0, end - start) for start, end in merge_intervals(intervals)]
            ax.broken_barh(bars, (row - 0.35, 0.7), facecolors=color)
    ax.set_yticks(range(len(workers)),
                  labels=[f"{w}  {100 * busy[w]:.0f}% busy" for w in workers])
    ax.invert_yaxis()
    ax.set_xlim(0, window)
    ax.set(xlabel="seconds since the first span",
           title=f"timeline: busy (coloured) and idle (white) time per worker, {window:.1f} s")
    fig.legend(handles=[Patch(color=KIND_COLORS[k], label=k) for k in kinds_seen],
               loc="outside lower center", ncol=len(kinds_seen), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
