"""Groups per second the controller alone can admit, route, score, buffer, audit and batch.

    python benchmarks/controller_throughput.py [--steps 40] [--batch-size 64] [--n-samples 8]
    areal-sys bench controller_throughput ...

A microbenchmark of `controller/controller.py`: the real `Controller` (staleness gate, load-based
routing, reward round trip, algorithm filter, buffer, staleness audit and metrics files, weight
push protocol) drives the fake actors of the fast tests (tests/controller/fakes.py): a fake
rollout worker streams `--response-tokens` tokens per sample (one per turn of the event loop), the
fake reward grades at once, the fake trainer returns at once. Actor calls are asyncio tasks, so
Ray's per-call cost (~0.1-1 ms) is not included: the figure is an upper bound set by the
controller's own Python. Key `groups_per_s` (trained groups / wall time of `Controller.run`),
measured for every eta in `--etas` (the headline is eta = 4) with `--workers` rollout workers.
Writes benchmarks/results/controller_throughput.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import figure_path, write_results  # noqa: E402
from tests.controller import fakes  # noqa: E402


def measure(eta: int, a: argparse.Namespace, run_dir: Path) -> dict[str, float]:
    cfg = fakes.config(
        run_dir, f"trainer.total_steps={a.steps}", f"controller.max_staleness={eta}",
        f"controller.batch_size={a.batch_size}", f"rollout.n_samples={a.n_samples}",
        f"rollout.num_workers={a.workers}", f"seed={a.seed}")
    actors = fakes.fake_actors(run_dir, workers=a.workers, response_tokens=a.response_tokens,
                               seed=a.seed)
    controller = fakes.controller(cfg, actors, fakes.prompts(4096))
    t0 = time.perf_counter()
    try:
        results = asyncio.run(controller.run())
    finally:
        controller.close()
    wall = time.perf_counter() - t0
    groups = results["steps"] * a.batch_size
    return {"eta": eta, "groups_per_s": groups / wall,
            "trajectories_per_s": groups * a.n_samples / wall, "wall_s": wall}


def plot(rows: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([f"eta={int(r['eta'])}" for r in rows], [r["groups_per_s"] for r in rows])
    ax.set_ylabel("groups / s (controller alone, instant fake actors)")
    ax.set_title("Controller throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--response-tokens", type=int, default=64)
    p.add_argument("--etas", default="0,4")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for eta in map(int, a.etas.split(",")):
            rows.append(measure(eta, a, Path(tmp) / f"eta{eta}"))
            print(f"eta={eta}: {rows[-1]['groups_per_s']:.0f} groups/s "
                  f"({rows[-1]['trajectories_per_s']:.0f} trajectories/s)", flush=True)
    head = next((r for r in rows if r["eta"] == 4), rows[-1])
    settings = {k: v for k, v in vars(a).items()}
    out = write_results("controller_throughput",
                        {"groups_per_s": head["groups_per_s"], "eta": head["eta"], "rows": rows},
                        settings)
    plot(rows, figure_path("controller_throughput"))
    print(f"wrote {out} and {figure_path('controller_throughput')}")


if __name__ == "__main__":
    main()
