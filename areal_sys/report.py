"""`areal-sys report RUN_DIR`: PNG figures of a run from its JSON-lines files, in RUN_DIR/report/.

| figure | source | what |
|---|---|---|
| reward.png | metrics.jsonl | mean reward of each step's batch, and its running mean |
| pass_rate.png | eval.jsonl | held-out pass rate at each evaluated policy version |
| staleness.png | staleness.jsonl | histogram of trainer_version - min_token_version |
| throughput.png | metrics.jsonl | generated tokens per second of step time, per step |
| timeline.png | timeline.jsonl | Gantt chart: each worker's spans by kind; white is idle |
| mismatch.png | metrics.jsonl | train–inference mismatch on tokens of the trainer's version |

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

The run files are read in areal_sys/report_rows.py; the figures are drawn in
areal_sys/report_figures.py, imported only by `write_report` (matplotlib stays out of
`import areal_sys`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from areal_sys.report_rows import Report, ReportError, SkipFigure, label, read_rows

__all__ = ["Report", "ReportError", "write_report"]


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
        ("mismatch.png", "metrics.jsonl", fig.plot_mismatch),
        ("pass_rate.png", "eval.jsonl", fig.plot_pass_rate),
        ("staleness.png", "staleness.jsonl", fig.plot_staleness),
        ("timeline.png", "timeline.jsonl", fig.plot_timeline)]
    if any("episode/call_rate" in m for m in metrics):  # a tool_use run
        panels.append(("episodes.png", "metrics.jsonl", fig.plot_episodes))
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
