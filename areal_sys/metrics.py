"""Run outputs: append-only JSON-lines files in RUN_DIR (metrics, staleness audit, timeline)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from areal_sys.config import LoggingConfig
    from areal_sys.trajectory import Trajectory


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlWriter:
    """One JSON object per line, flushed after every write so a crash loses nothing written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


SPAN_KINDS = ("generate", "reward", "train", "sync", "eval", "cache_fill")


class Timeline:
    """Spans of work per worker, one line each in RUN_DIR/timeline.jsonl:
    `{"worker", "kind", "start", "end", **fields}` with `start`/`end` in time.time() seconds and
    `kind` one of SPAN_KINDS; `fields` carry `step`, `group_id`, `version` where meaningful.

    Workers are named by role: `rollout<i>` (one per engine), `reward`, `trainer`, `sync`. Spans
    of one worker may overlap (an engine generates many groups at once); `areal-sys report` counts
    a worker busy while at least one of its spans is open. Only completed spans are written.
    """

    def __init__(self, path: str | Path) -> None:
        self._out = JsonlWriter(path)

    def add(self, worker: str, kind: str, start: float, end: float, **fields: Any) -> None:
        if kind not in SPAN_KINDS:
            raise ValueError(f"timeline: unknown span kind {kind!r}; one of {SPAN_KINDS}")
        self._out.write({"worker": worker, "kind": kind, "start": start, "end": end, **fields})

    @contextmanager
    def span(self, worker: str, kind: str, **fields: Any) -> Iterator[None]:
        """Time the body (also around awaits) as one span; nothing is written if it raises."""
        start = time.time()
        yield
        self.add(worker, kind, start, time.time(), **fields)

    def trajectories(self, trajs: Iterable[Trajectory], kind: str, **fields: Any) -> None:
        """One span per rollout worker over `trajs`: its earliest `submit_time` to its latest
        `finish_time` (a group, or every request of an evaluation / cache-fill pass)."""
        spans: dict[int, tuple[float, float]] = {}
        for t in trajs:
            if t.finish_time <= 0:  # never timed (e.g. built outside a rollout worker)
                continue
            lo, hi = spans.get(t.worker_id, (t.submit_time, t.finish_time))
            spans[t.worker_id] = (min(lo, t.submit_time), max(hi, t.finish_time))
        for worker, (start, end) in sorted(spans.items()):
            self.add(f"rollout{worker}", kind, start, end, **fields)

    def close(self) -> None:
        self._out.close()


class MetricsLogger:
    """Per-step metrics: always to RUN_DIR/metrics.jsonl; also to TensorBoard (event files in
    RUN_DIR/tensorboard/) and Weights & Biases (RUN_DIR/wandb/) when `logging.tensorboard` /
    `logging.wandb` are on. Both packages are imported here, only when enabled (the config
    check in config.py has already named a missing one). The sinks get the numeric fields of a
    record, at x = the record's `step`.
    """

    def __init__(self, run_dir: str | Path, logging: LoggingConfig,
                 config: dict[str, Any] | None = None) -> None:
        run_dir = Path(run_dir)
        self._jsonl = JsonlWriter(run_dir / "metrics.jsonl")
        self._tb: Any = None
        self._wandb: Any = None
        if logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if logging.wandb:
            import wandb

            mode = {"mode": logging.wandb_mode} if logging.wandb_mode else {}  # else WANDB_MODE
            self._wandb = wandb.init(project=logging.wandb_project, dir=str(run_dir),
                                     name=run_dir.name, config=config, **mode)

    def write(self, record: dict[str, Any]) -> None:
        """One step's record: a line of metrics.jsonl, and its numbers to the enabled sinks."""
        self._jsonl.write(record)
        self.log(record, step=int(record.get("step", 0)))

    def log(self, values: dict[str, Any], step: int) -> None:
        """Numbers to TensorBoard / W&B only (e.g. `eval/pass_rate`, which has its own file)."""
        scalars = {k: float(v) for k, v in values.items()
                   if isinstance(v, int | float) and math.isfinite(v) and k != "step"}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, global_step=step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
