"""Checkpoints of a run: what a checkpoint holds, how it is written atomically, saved and restored.

Layout of `RUN_DIR/checkpoints/step_N/` (N = policy version = completed optimiser steps):

    policy/              Hugging Face model + tokenizer (transformers and vLLM load it)
    trainer/             DeepSpeed checkpoint of every trainer rank (weights, optimiser state)
    critic/              the value model's DeepSpeed checkpoint (PPO only)
    rpo_cache.npz        the RPO experience cache (when enabled)
    controller.json      the controller's state (`format_version` 1), written last

A checkpoint is taken between steps, right after the weights of version V were pushed: the
trainer ranks (and the critic) write their DeepSpeed state and the HF policy, and the controller
writes the admission state taken at one instant of its event loop (controller/admission.py: sampler
position, gate counters, buffered and in-flight groups, refill budget, RPO random state) and the
sizes of the run's JSON-lines files, which a resume truncates back to (`truncate_files`), so
metrics, the staleness audit and filtered.jsonl continue without duplicate steps. Every prompt the
sampler handed out before the checkpoint is, at resume, in exactly one place: trained (audit),
filtered (filtered.jsonl), buffered or in flight; nothing is trained twice and versions continue
at V.

`controller.json` is plain JSON: groups, trajectories and prompts by their field names
(`to_dict` / `from_dict` in areal_sys/trajectory.py), never pickled classes, so renaming a class
does not break a saved run. A checkpoint of the earlier pickle format (`controller.pkl`) is refused
with one line (`ConfigError`) saying what to do.

Everything is written into `checkpoints/.step_N.tmp/` and the directory is renamed to `step_N`
only when complete (fsync, then an atomic `os.replace`), so a crash mid-save leaves a `.tmp`
directory that `latest` ignores and the next save removes. `trainer.keep_last` bounds disk use.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from areal_sys.config import ConfigError
from areal_sys.trajectory import Group, Prompt
from controller.actors import Trainers
from controller.admission import Admission

STATE_FILE = "controller.json"
FORMAT_VERSION = 1
LEGACY_STATE_FILE = "controller.pkl"  # before format_version 1: refused (`load_state`)
RUN_FILES = ("metrics.jsonl", "staleness.jsonl", "filtered.jsonl", "timeline.jsonl",
             "eval.jsonl")
# Fault injection for the crash tests: seconds to wait between writing a checkpoint's files and
# committing it, so that a test can kill the run while the checkpoint is incomplete.
FAULT_PAUSE_ENV = "AREAL_SYS_FAULT_CHECKPOINT_PAUSE_S"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def begin(run_dir: str | Path, version: int) -> Path:
    """A fresh temporary directory for the checkpoint of `version` (an old leftover is removed)."""
    tmp = checkpoints_dir(run_dir) / f".step_{version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, state: dict[str, Any]) -> Path:
    """Write the controller state last, flush everything, and rename `.step_N.tmp` → `step_N`."""
    with open(tmp / STATE_FILE, "w", encoding="utf-8") as f:
        json.dump(_encode(state), f)
    _fsync_tree(tmp)
    final = tmp.parent / tmp.name.removeprefix(".").removesuffix(".tmp")
    if final.exists():  # a checkpoint of this version from an earlier attempt
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories, oldest first (one of the earlier pickle format counts,
    so that resuming it is refused by `load_state` rather than silently skipped)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = _STEP_DIR.match(path.name)
        if m and any((path / f).is_file() for f in (STATE_FILE, LEGACY_STATE_FILE)):
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def latest(run_dir: str | Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def prune(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Remove all but the `keep_last` newest complete checkpoints; returns what was removed."""
    done = complete_checkpoints(run_dir)
    old = done[:-keep_last] if keep_last > 0 else []
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old


def load_state(ckpt: Path) -> dict[str, Any]:
    """The controller state of checkpoint `ckpt`, groups and prompts rebuilt; a ConfigError of
    one line for a checkpoint this version cannot read."""
    path = Path(ckpt) / STATE_FILE
    if not path.is_file() and (Path(ckpt) / LEGACY_STATE_FILE).is_file():
        raise ConfigError(
            f"resume: {ckpt} was written by an earlier areal-sys (controller.pkl, before "
            f"checkpoint format {FORMAT_VERSION}); resume it with that version, or start the run "
            "again with --overwrite")
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    if state.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"resume: {path} has checkpoint format {state.get('format_version')!r}"
                          f"; this areal-sys reads format {FORMAT_VERSION}")
    return _decode(state)


def _encode(state: dict[str, Any]) -> dict[str, Any]:
    """JSON of a controller state: objects by their fields (module doc)."""
    out = {**state, "format_version": FORMAT_VERSION}
    if "buffered" in state:
        out["buffered"] = [{"seq": s, "deadline": d, "group": g.to_dict()}
                           for s, d, g in state["buffered"]]
    if "inflight" in state:
        out["inflight"] = [{"seq": s, "prompt": p.to_dict(), "admit_version": v, "deadline": d}
                           for s, p, v, d in state["inflight"]]
    return out


def _decode(state: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in state.items() if k != "format_version"}
    if "buffered" in state:
        out["buffered"] = [(r["seq"], r["deadline"], Group.from_dict(r["group"]))
                           for r in state["buffered"]]
    if "inflight" in state:
        out["inflight"] = [(r["seq"], Prompt.from_dict(r["prompt"]), r["admit_version"],
                            r["deadline"]) for r in state["inflight"]]
    return out


def file_sizes(paths: list[Path]) -> dict[str, int]:
    return {p.name: (p.stat().st_size if p.exists() else 0) for p in paths}


def truncate_files(run_dir: str | Path, sizes: dict[str, int]) -> None:
    """Cut each run file back to its size at the checkpoint (lines written after it go)."""
    for name, size in sizes.items():
        path = Path(run_dir) / name
        if path.exists() and path.stat().st_size > size:
            with open(path, "r+b") as f:
                f.truncate(size)


async def save(run_dir: Path, admission: Admission, trainers: Trainers, keep_last: int) -> Path:
    """`checkpoints/step_V/` of the current version, written atomically; older ones beyond
    `keep_last` removed. The controller state is taken first, at one instant (no await before)."""
    state = {**admission.state_dict(),
             "files": file_sizes([run_dir / name for name in RUN_FILES])}
    tmp = begin(run_dir, admission.version)
    if admission.rpo is not None:
        admission.rpo.cache.save(tmp / "rpo_cache.npz")
    await trainers.save_checkpoint(tmp)
    if pause := float(os.environ.get(FAULT_PAUSE_ENV, "0")):  # fault injection (tests)
        await asyncio.sleep(pause)
    final = commit(tmp, state)
    prune(run_dir, keep_last)
    return final


async def restore(ckpt: Path, state: dict[str, Any], admission: Admission, trainers: Trainers,
                  push_weights: Callable[[int], Awaitable[Any]]) -> int:
    """Load checkpoint `ckpt` (its `load_state`): trainer ranks and critic, the engines serving
    its version V, the admission state, the RPO cache. Returns V (the next step)."""
    await trainers.load_checkpoint(ckpt)
    await push_weights(state["version"])
    admission.load_state_dict(state)
    if admission.rpo is not None:
        from areal_sys.algorithms.rpo import ExperienceCache

        admission.rpo.cache = ExperienceCache.load(ckpt / "rpo_cache.npz")
    print(f"resumed from {ckpt} (version {state['version']}: {len(state['buffered'])} "
          f"buffered and {len(state['inflight'])} in-flight groups)", flush=True)
    return int(state["version"])
