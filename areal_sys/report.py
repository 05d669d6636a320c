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

Damaged or partial run files (a killed run, a hand-edited file) never end in a traceback:

- metrics.jsonl is required: missing, empty, unreadable, over MAX_FILE_BYTES, or with a line that
  is not a UTF-8 JSON object is a ReportError (one line naming the file and line; exit code 2).
- an optional file (eval, staleness, timeline) with any of those problems skips its figure, and
  the reason is listed in `Report.skipped`;
- a cut-off last line (a crash mid-write: no newline after it) is ignored;
- rows lacking a figure's fields, or holding NaN, infinities or wrong types there, are left out of
  that figure, and how many is listed in `Report.skipped`;
- outliers cannot make a figure slow: the staleness histogram has at most MAX_STALENESS_BARS bars
  (larger values share the last), the Gantt chart at most MAX_TIMELINE_WORKERS rows.

The figures are drawn in areal_sys/report_figures.py, imported only by `write_report` (matplotlib
stays out of `import areal_sys`).
"""

from __future__ import annotations

import json
import math
import os
import stat
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KIND_COLORS = {"generate": "tab:blue", "reward": "tab:orange", "train": "tab:green",
               "sync": "tab:red", "eval": "tab:purple", "cache_fill": "tab:brown"}
ROLE_ORDER = ("rollout", "reward", "trainer", "critic", "sync")
MAX_FILE_BYTES = 512 << 20  # a run file larger than this is refused, not read
MAX_STALENESS_BARS = 25  # per-integer bars; larger staleness values share one last bar
MAX_TIMELINE_WORKERS = 64  # Gantt rows drawn (busy fractions count every worker)
MAX_EVAL_SERIES = 8  # pass@k lines drawn on the pass-rate figure
MAX_LABEL_CHARS = 32  # worker names and eval tags are cut to this in figures


class ReportError(ValueError):
    """A missing or unreadable run directory or file; printed as one line (exit code 2)."""


class SkipFigure(Exception):
    """A figure that cannot be drawn from what the run wrote; the reason is reported."""


@dataclass
class Report:
    figures: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "figure: why" or "file: rows left out"
    busy: dict[str, float] = field(default_factory=dict)  # worker -> busy fraction
    window_s: float = 0.0  # first span start to last span end


# ---------------------------------------------------------------------------- reading
def read_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file. A cut-off last line (no newline after it: a crash
    mid-write) is ignored; any other line that is not a UTF-8 JSON object, a file that is not a
    regular file or is over MAX_FILE_BYTES, or one that cannot be read is a ReportError naming
    the file (and line)."""
    rows = []
    lines = _read_bytes(path).split(b"\n")
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError too
            if i == len(lines) - 1:  # no newline after it: cut off mid-write
                break
            what = {UnicodeDecodeError: "not UTF-8", json.JSONDecodeError: "not JSON"}.get(
                type(e), "JSON past this reader's limits (nesting depth or number size)")
            raise ReportError(f"{path}: line {i + 1} is {what}") from None
        if not isinstance(row, dict):
            raise ReportError(f"{path}: line {i + 1} is not a JSON object but a "
                              f"{type(row).__name__}")
        rows.append(row)
    return rows


def _read_bytes(path: Path, limit: int | None = None) -> bytes:
    """A regular file's bytes, at most `limit` (MAX_FILE_BYTES); opened without blocking, so a
    FIFO in a run directory cannot hang the report."""
    limit = MAX_FILE_BYTES if limit is None else limit
    too_big = ReportError(f"{path}: larger than {limit >> 20} MiB; not a run file this report "
                          "reads")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ReportError(f"{path}: not a regular file")
            if info.st_size > limit:
                raise too_big
            with os.fdopen(os.dup(fd), "rb") as fh:
                data = fh.read(limit + 1)
        finally:
            os.close(fd)
    except OSError as e:
        raise ReportError(f"{path}: cannot read it ({e.strerror or e})") from None
    if len(data) > limit:  # it grew while being read
        raise too_big
    return data


def number(value: Any) -> float | None:
    """A finite real number as float, else None (bools, strings, NaN, infinities, huge ints)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def integer(value: Any) -> int | None:
    """An integer (or a float holding one) as int, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    x = number(value)
    return int(x) if x is not None and x.is_integer() else None


def label(value: Any) -> str:
    """Text from a run file for a figure: at most MAX_LABEL_CHARS, and `$` escaped (matplotlib
    would parse `$...$` as mathematics, and fail on a bad formula)."""
    text = str(value)
    text = text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 3] + "..."
    return text.replace("$", r"\$")


def left_out(source: str, bad: int, total: int, figure: str, need: str) -> str:
    return f"{source}: {bad} of {total} rows not drawn in {figure} (no {need})"


# ---------------------------------------------------------------------------- busy time
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
            number = suffix.isascii() and suffix.isdigit() and len(suffix) <= 18
            return rank, int(suffix) if number else -1, name
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
        busy[worker] = min(1.0, covered / window) if window > 0 else 1.0
    return busy, window


def clean_spans(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Timeline rows usable as spans (string worker and kind, finite start <= end), with their
    times as floats; and how many rows were left out."""
    spans = []
    for r in rows:
        start, end = number(r.get("start")), number(r.get("end"))
        worker, kind = r.get("worker"), r.get("kind")
        if (isinstance(worker, str) and isinstance(kind, str) and start is not None
                and end is not None and start <= end):
            spans.append({"worker": worker, "kind": kind, "start": start, "end": end})
    return spans, len(rows) - len(spans)


# ---------------------------------------------------------------------------- the report
def write_report(run_dir: str | Path) -> Report:
    """Every figure whose source file exists, into RUN_DIR/report/ (module doc)."""
    run = Path(run_dir)
    try:
        return _write_report(run)
    except OSError as e:  # a directory or file that cannot be listed, made or written
        where = e.filename if e.filename is not None else run
        raise ReportError(f"{where}: {e.strerror or e}") from None


def _write_report(run: Path) -> Report:
    if not run.exists():
        raise ReportError(f"run directory {str(run)!r} does not exist")
    if not run.is_dir():
        raise ReportError(f"{run}: not a directory (give the run's run_dir)")
    if not (run / "metrics.jsonl").exists():
        raise ReportError(f"{run}: no metrics.jsonl, so not a run directory (or no step finished)")
    metrics = read_rows(run / "metrics.jsonl")
    if not metrics:
        raise ReportError(f"{run / 'metrics.jsonl'}: empty (no step finished)")
    try:
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise ReportError("report needs matplotlib: pip install matplotlib "
                          "(or pip install -e '.[observe]')") from None
    out = run / "report"
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out}: exists and is not a directory; move it away")
    out.mkdir(exist_ok=True)
    report = Report()
    from areal_sys import report_figures as fig

    panels: list[tuple[str, str, Callable[..., Path]]] = [
        ("reward.png", "metrics.jsonl", fig.plot_reward),
        ("throughput.png", "metrics.jsonl", fig.plot_throughput),
        ("pass_rate.png", "eval.jsonl", fig.plot_pass_rate),
        ("staleness.png", "staleness.jsonl", fig.plot_staleness),
        ("timeline.png", "timeline.jsonl", fig.plot_timeline)]
    for name, source, plot in panels:
        path = run / source
        if source == "metrics.jsonl":
            rows = metrics
        elif not path.exists():
            report.skipped.append(f"{name}: no {source} or it is empty")
            continue
        else:
            try:
                rows = read_rows(path)
            except ReportError as e:
                report.skipped.append(f"{name}: {e}")
                continue
        if not rows:
            report.skipped.append(f"{name}: no {source} or it is empty")
            continue
        _draw(report, name, lambda p=plot, r=rows, n=name: p(r, out / n, run, report))
    return report


def _draw(report: Report, name: str, draw: Callable[[], Path]) -> None:
    """One figure; one that the run's data cannot make is skipped with the reason."""
    with warnings.catch_warnings():  # matplotlib/numpy chatter on odd data is not for the user
        warnings.simplefilter("ignore")
        try:
            report.figures.append(draw())
        except SkipFigure as e:
            report.skipped.append(f"{name}: {e}")
        except OSError:
            raise  # the report directory cannot be written: nothing else could be either
        except Exception as e:  # noqa: BLE001 - damaged data: this figure only, never a traceback
            why = str(e).splitlines()[0] if str(e) else ""
            report.skipped.append(f"{name}: cannot be drawn from this data "
                                  f"({type(e).__name__}{': ' + label(why) if why else ''})")


def staleness_values(rows: list[dict[str, Any]]) -> tuple[list[int], int, int]:
    """Staleness of each audited trajectory (trainer_version - min_token_version, integers
    >= 0), how many rows had no generated token (RPO: min_token_version null or negative), and
    how many rows were malformed (missing, non-integer or negative staleness)."""
    values, no_tokens = [], 0
    for r in rows:
        trained, oldest = integer(r.get("trainer_version")), integer(r.get("min_token_version"))
        if trained is None:
            continue
        if ("min_token_version" in r and r["min_token_version"] is None) or (
                oldest is not None and oldest < 0):
            no_tokens += 1
        elif oldest is not None and trained >= oldest:
            values.append(trained - oldest)
    return values, no_tokens, len(rows) - len(values) - no_tokens


def staleness_bars(values: list[int]) -> tuple[list[str], list[int]]:
    """Histogram bars (labels, counts): one per integer from the smallest value to the largest,
    or, when that is more than MAX_STALENESS_BARS, to the largest value within the first
    MAX_STALENESS_BARS - 1 integers, and one '>N' bar for the rest: an outlier (10**12) costs
    one bar, not 10**12."""
    counts = Counter(values)
    lo, hi = min(values), max(values)
    last = hi if hi - lo < MAX_STALENESS_BARS else max(
        v for v in counts if v <= lo + MAX_STALENESS_BARS - 2)
    labels = [str(v) for v in range(lo, last + 1)]
    bars = [counts.get(v, 0) for v in range(lo, last + 1)]
    if last < hi:
        labels.append(f">{last}")
        bars.append(sum(c for v, c in counts.items() if v > last))
    return labels, bars


def max_staleness(run: Path) -> int | None:
    """eta from the run's resolved config.yaml, if there is one and it says."""
    import yaml

    try:
        cfg = yaml.safe_load(_read_bytes(run / "config.yaml", limit=1 << 20))
        eta = cfg["controller"]["max_staleness"]
    except (ReportError, TypeError, KeyError, ValueError, RecursionError, yaml.YAMLError):
        return None
    return integer(eta)
