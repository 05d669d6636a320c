"""Shared by every benchmark: the machine description and writing `results/NAME.json` + PNG.

Benchmarks print ratios measured in one run (these machines are shared and noisy); they never
assert speed. Each writes `benchmarks/results/NAME.json` with its figures, its settings and the
machine it ran on (`write_results`), and a PNG next to it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu": platform.processor() or platform.machine(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_results(name: str, figures: dict[str, Any] | list[dict[str, Any]],
                  settings: dict[str, Any], out_dir: Path = RESULTS) -> Path:
    """Write `out_dir/NAME.json` and return its path.

    A dict of figures is written with its keys at the top level plus "settings", "machine" and
    "time". A list (one row per measurement) stays a list; every row gets "machine" and
    "settings" so it stands on its own.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    meta = {"settings": settings, "machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if isinstance(figures, list):
        record: Any = [{**row, **meta} for row in figures]
    else:
        record = {**figures, **meta}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def figure_path(name: str, out_dir: Path = RESULTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir / f"{name}.png"


def run_experiment(config: str, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """`areal-sys run CONFIG run_dir=RUN_DIR OVERRIDES...` in a subprocess (the real pipeline).

    Returns the run's `results.json` plus `metrics` (metrics.jsonl rows) and `wall_s` (the whole
    command, start-up included). Raises with the end of stderr when the run fails.
    """
    import subprocess
    import sys

    from areal_sys.metrics import read_jsonl

    root = Path(__file__).resolve().parent.parent
    args = [sys.executable, "-m", "areal_sys.cli", "run", config, "--overwrite",
            f"run_dir={run_dir}", *overrides]
    t0 = time.time()
    res = subprocess.run(args, cwd=root, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{res.stderr[-3000:]}")
    results = json.loads((Path(run_dir) / "results.json").read_text())
    return {**results, "metrics": read_jsonl(Path(run_dir) / "metrics.jsonl"), "wall_s": wall}
