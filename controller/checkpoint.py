"""Checkpoint directories of a run: atomic writes, finding the latest complete one, pruning.

Layout of `RUN_DIR/checkpoints/step_N/` (N = policy version = completed optimiser steps):

    policy/              Hugging Face model + tokenizer (transformers and vLLM load it)
    trainer/             DeepSpeed checkpoint of every trainer rank (weights, optimiser state)
    critic/              the value model's DeepSpeed checkpoint (PPO only)
    rpo_cache.npz        the RPO experience cache (when enabled)
    controller.pkl       the controller's state (see `Controller.snapshot`), written last

Everything is written into `checkpoints/.step_N.tmp/` and the directory is renamed to `step_N`
only when complete (fsync, then an atomic `os.replace`), so a crash mid-save leaves a `.tmp`
directory that `latest` ignores and the next save removes. `trainer.keep_last` bounds disk use.

The run's JSON-lines files are append-only; the controller state records their sizes at the
checkpoint, and a resume truncates them back (`truncate_files`), so metrics, the staleness audit
and filtered.jsonl continue without duplicate steps.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

STATE_FILE = "controller.pkl"
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
    with open(tmp / STATE_FILE, "wb") as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
    _fsync_tree(tmp)
    final = tmp.parent / tmp.name.removeprefix(".").removesuffix(".tmp")
    if final.exists():  # a checkpoint of this version from an earlier attempt
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = _STEP_DIR.match(path.name)
        if m and (path / STATE_FILE).is_file():
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
    with open(ckpt / STATE_FILE, "rb") as f:
        return pickle.load(f)


def file_sizes(paths: list[Path]) -> dict[str, int]:
    return {p.name: (p.stat().st_size if p.exists() else 0) for p in paths}


def truncate_files(run_dir: str | Path, sizes: dict[str, int]) -> None:
    """Cut each run file back to its size at the checkpoint (lines written after it go)."""
    for name, size in sizes.items():
        path = Path(run_dir) / name
        if path.exists() and path.stat().st_size > size:
            with open(path, "r+b") as f:
                f.truncate(size)
