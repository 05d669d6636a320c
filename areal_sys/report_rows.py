"""The run files as `areal-sys report` reads them: rows of JSON-lines files read defensively, the
numbers a figure may use, and the figures' data (busy fractions, staleness histogram).

Every function here is pure data: no matplotlib. areal_sys/report.py writes the report and
areal_sys/report_figures.py draws; both read the run through this module (the module doc of
report.py says how damaged files are treated).
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections import Counter
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


MISMATCH_PREFIXES = ("mismatch/", "train/mismatch/")  # as written now; as runs before wrote it


def mismatch_prefix(rows: list[dict[str, Any]]) -> str:
    """The prefix under which metrics.jsonl holds the trainer's `mismatch/*` metrics: the first
    of MISMATCH_PREFIXES that some row has `k3` under; SkipFigure when none has (a run from before
    these metrics, or one whose batches held no token of the trainer's own version)."""
    for prefix in MISMATCH_PREFIXES:
        if any(number(r.get(prefix + "k3")) is not None for r in rows):
            return prefix
    raise SkipFigure("no row of metrics.jsonl has mismatch/k3 (a run before the mismatch "
                     "metrics, or no token generated at the trainer's version)")


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
