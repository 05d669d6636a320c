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
