"""The console during training: a live progress line (`logging.progress_bar`) and, every
`logging.log_every` steps and after the last, one printed line of the step's metrics.

The live line (step/total, ETA, reward, staleness, tokens/s, sync time) is drawn by the
terminal's Console (areal_sys/console.py) below the printed lines, and only on a terminal: a Ray
job's log or a redirected run gets the printed lines alone. Only the console is thinned:
metrics.jsonl, TensorBoard and W&B get every step, because resume and `areal-sys report` read
every step back.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

from areal_sys.config import ExperimentConfig
from areal_sys.console import Console

# how each live field reads (`set_postfix` keywords); others read "name value"
LIVE_FIELDS = {"reward": "reward {}", "stale": "staleness {}", "tok_s": "{} tok/s",
               "sync": "sync {} s"}


def duration(seconds: float) -> str:
    """`seconds` as m:ss, or h:mm:ss from an hour."""
    s = max(0, round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def live_line(label: str, done: int, total: int, elapsed_s: float, timed: int,
              fields: dict[str, Any]) -> str:
    """`label done/total`, the ETA from the `timed` steps of this process that took
    `elapsed_s`, and the fields. E.g. `train 12/100 ETA 3:05 | reward 0.412, staleness 1`."""
    if done >= total:
        when = f"in {duration(elapsed_s)}"
    elif timed > 0:
        when = f"ETA {duration(elapsed_s / timed * (total - done))}"
    else:
        when = "ETA -"
    parts = [LIVE_FIELDS.get(k, k + " {}").format(v) for k, v in fields.items()]
    return f"{label} {done}/{total} {when}" + (" | " + ", ".join(parts) if parts else "")


class Progress:
    """A loop's live line on the terminal's Console, with the part of tqdm's interface the
    loops use (`update`, `set_postfix`, `write`, `close`). Without a Console on `sys.stdout`
    (verbose off a terminal, tests) or when disabled, only `write` prints."""

    def __init__(self, total: int, label: str, initial: int = 0, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.label, self.done, self.initial = total, label, initial, initial
        self.fields: dict[str, Any] = {}
        self.clock = clock
        self.t0 = clock()
        console = sys.stdout
        self.console = console if enabled and isinstance(console, Console) else None
        self._show()

    def update(self, n: int = 1) -> None:
        self.done += n
        self._show()

    def set_postfix(self, **fields: Any) -> None:
        self.fields = fields
        self._show()

    def write(self, line: str) -> None:
        print(line, flush=True)

    def close(self) -> None:
        if self.console is not None:
            self.console.end_live(keep=True)

    def _show(self) -> None:
        if self.console is not None:
            self.console.set_live(live_line(self.label, self.done, self.total,
                                            self.clock() - self.t0, self.done - self.initial,
                                            self.fields))


def progress_bar(cfg: ExperimentConfig, first_step: int = 0) -> Progress:
    return Progress(cfg.trainer.total_steps, "train", initial=first_step,
                    enabled=cfg.logging.progress_bar)


def log_due(step: int, every: int, total_steps: int) -> bool:
    """Whether 0-based `step` prints its line: steps N, 2N, ... (counted from 1) and the last."""
    return (step + 1) % every == 0 or step + 1 == total_steps


def _fmt(value: Any, spec: str) -> str:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return format(value, spec) if ok else "n/a"


def step_line(record: dict[str, Any], total_steps: int) -> str:
    """One line of a step record (controller.py `_step_record`): what a user watches."""
    loss = record.get("train/loss")
    return (f"step {record['step'] + 1}/{total_steps}: reward {_fmt(record['reward_mean'], '.3f')}"
            f", staleness max {record['staleness_max']}"
            f", {_fmt(record['tokens_per_s'], '.0f')} tokens/s"
            f", step {_fmt(record['step_time_s'], '.1f')} s (waited {_fmt(record['wait_s'], '.1f')}"
            f" s, sync {_fmt(record.get('sync_s'), '.2f')} s)"
            + (f", loss {_fmt(loss, '.4f')}" if loss is not None else "")
            + (f", {record['groups_filtered']} groups filtered" if record.get("groups_filtered")
               else ""))


def eval_line(tag: str, figures: dict[str, Any]) -> str:
    """One line of an evaluation (controller/evaluation.py's figures): its pass rate (and, in
    tool_use runs, the fraction of episodes that called a tool)."""
    k = int(figures.get("k", 1))
    calls = (f", tool calls in {_fmt(100 * figures['call_rate'], '.1f')}% of episodes"
             if "call_rate" in figures else "")
    return (f"eval {tag}: pass rate {_fmt(100 * figures['pass_rate'], '.1f')}% "
            f"(avg@{k} over {int(figures.get('n', 0))} problems){calls}")
