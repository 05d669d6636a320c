"""Cold start: seconds from `areal-sys run` to the first trained step.

    python benchmarks/cold_start.py [--repeats 2] [--config configs/local_tiny.yaml]
    areal-sys bench cold_start ...

Launches `areal-sys run CONFIG trainer.total_steps=1 eval.before_and_after=false` (the real
pipeline: config, data, tokenizer, Ray, placement groups, vLLM engine and DeepSpeed trainer started
in parallel, the reward service, one batch generated and trained) and timestamps its output:

- `config_s`: the config, datasets and tokenizer are loaded (the line `algorithm: ...`);
- `ray_s`: Ray is up and the placement groups are reserved (the line `cluster: reserved ...`);
- `seconds`: the first trained step is on disk (its line appears in `metrics.jsonl`);
- the run's own phase marks (results.json `startup`, controller/startup.py), seconds from the
  command's start to the end of each: `validated_s`, `ray_s` (Ray up), `placed_s` (placement
  groups reserved, actors created), `engines_s` / `trainers_s` (each role ready; they start in
  parallel), `weight_group_s`, `first_step_s`.

The tiny model is built once beforehand (cached), so a first-ever run adds its build (~1 min).
Reports the median over `--repeats` runs (each a fresh process and a fresh Ray instance).
Writes benchmarks/results/cold_start.json and .png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import figure_path, write_results  # noqa: E402

MARKS = {"config_s": "algorithm:"}
PHASES = ("validated", "ray", "placed", "trainers", "engines", "weight_group", "first_step")


def one_run(config: str, run_dir: Path, extra: list[str]) -> dict[str, float]:
    args = [sys.executable, "-m", "areal_sys.cli", "run", config, "--overwrite",
            f"run_dir={run_dir}",
            "trainer.total_steps=1", "eval.before_and_after=false", "logging.progress_bar=false",
            *extra]
    marks: dict[str, float] = {}
    metrics = run_dir / "metrics.jsonl"
    t0 = time.time()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)

    def read_output() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            for key, prefix in MARKS.items():
                if key not in marks and line.startswith(prefix):
                    marks[key] = time.time() - t0

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    while proc.poll() is None and "seconds" not in marks:
        if metrics.is_file() and metrics.read_text().strip():
            marks["seconds"] = time.time() - t0
        time.sleep(0.05)
    rc = proc.wait()
    reader.join(timeout=10)
    marks["total_s"] = time.time() - t0
    if rc != 0 or "seconds" not in marks:
        raise RuntimeError(f"run failed with exit code {rc}")
    phases = json.loads((run_dir / "results.json").read_text()).get("startup", {})
    return {**marks, **{f"{k}_s": float(v) for k, v in phases.items()}}


def plot(runs: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for i, r in enumerate(runs):  # each segment ends at its phase's mark
        marks = sorted((r[f"{k}_s"], k) for k in PHASES if f"{k}_s" in r)
        left = 0.0
        for end, name in marks:
            ax.barh(i, end - left, left=left, color=f"C{PHASES.index(name)}",
                    label=name if i == 0 else None)
            left = end
    ax.set_yticks(range(len(runs)), [f"run {i + 1}" for i in range(len(runs))])
    ax.set_xlabel("seconds since `areal-sys run`")
    ax.set_title("Cold start to the first trained step")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/local_tiny.yaml")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="extra dotted overrides for the run")
    a = p.parse_args()
    subprocess.run([sys.executable, "-m", "areal_sys.cli", "make-tiny-model"], cwd=ROOT,
                   check=True, capture_output=True)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            runs.append(one_run(a.config, Path(tmp) / f"run{i}", a.overrides))
            print(" ".join(f"{k} {v:.1f}" for k, v in runs[-1].items()), flush=True)
    keys = [k for k in ("seconds", "config_s", *(f"{p}_s" for p in PHASES), "total_s")
            if all(k in r for r in runs)]
    figures = {k: statistics.median(r[k] for r in runs) for k in keys}
    out = write_results("cold_start", {**figures, "runs": runs},
                        {"config": a.config, "repeats": a.repeats, "overrides": a.overrides})
    plot(runs, figure_path("cold_start"))
    print(f"first trained step after {figures['seconds']:.1f} s (median of {a.repeats}); "
          f"wrote {out}")


if __name__ == "__main__":
    main()
