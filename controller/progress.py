"""The console during training: a progress bar (`logging.progress_bar`) and, every
`logging.log_every` steps and after the last, one line of the step's metrics.

The line goes through tqdm, so it scrolls above the bar instead of breaking it, and it prints with
the bar turned off too (a Ray job's log, a redirected run). Only the console is thinned:
metrics.jsonl, TensorBoard and W&B get every step, because resume and `areal-sys report` read
every step back.
"""

from __future__ import annotations

import math
from typing import Any

from areal_sys.config import ExperimentConfig


def progress_bar(cfg: ExperimentConfig, first_step: int = 0) -> Any:
    from tqdm import tqdm

    return tqdm(total=cfg.trainer.total_steps, initial=first_step, desc="train", unit="step",
                disable=not cfg.logging.progress_bar, dynamic_ncols=True)


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
