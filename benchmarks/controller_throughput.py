"""Groups per second the controller alone can admit, route, score, buffer, audit and batch.

    python benchmarks/controller_throughput.py [--steps 40] [--batch-size 64] [--n-samples 8]
    areal-sys bench controller_throughput ...

A microbenchmark of `controller/controller.py`: the real `Controller` (staleness gate, load-based
routing, reward round trip, algorithm filter, buffer, staleness audit and metrics files, weight
push protocol) drives fake actors that answer at once: `FakeRollout.generate_group` returns `n`
synthetic trajectories of `--response-tokens` tokens, `FakeReward.score` a 0/1 reward, and
`FakeTrainer.train_step` / `export_weights` return immediately. Actor calls are plain coroutines,
so Ray's per-call cost (~0.1-1 ms) is not included: the figure is an upper bound set by the
controller's own Python. Key `groups_per_s` (trained groups / wall time of `Controller.run`),
measured for every eta in `--etas` (the headline is eta = 4) with `--workers` rollout workers.
Writes benchmarks/results/controller_throughput.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from areal_sys.config import load_config  # noqa: E402
from areal_sys.trajectory import Trajectory  # noqa: E402
from benchmarks.common import figure_path, write_results  # noqa: E402
from controller.controller import Controller, Prompt  # noqa: E402


class FakeActor:
    """`actor.method.remote(*args)` -> the coroutine of `obj.method(*args)`, as a Ray handle."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __getattr__(self, name: str) -> Any:
        return SimpleNamespace(remote=getattr(self._obj, name))


class FakeRollout:
    """Answers every group at once with synthetic trajectories."""

    def __init__(self, worker_id: int, response_tokens: int) -> None:
        self.worker_id, self.response_tokens = worker_id, response_tokens
        self.version, self.tokens = 0, 0

    async def generate_group(self, *, group_id: int, prompt_uid: str, prompt_ids: list[int],
                             n: int, max_new_tokens: int, task: str = "synthetic",
                             reference: str = "", **_: Any) -> list[Trajectory]:
        await asyncio.sleep(0)  # yield once, as a real actor call would
        k = min(self.response_tokens, max_new_tokens)
        self.tokens += n * k
        return [Trajectory(prompt_uid=prompt_uid, group_id=group_id, prompt_ids=prompt_ids,
                           response_ids=[5] * k, behav_logprobs=[-0.5] * k,
                           versions=[self.version] * k, loss_mask=[1] * k, task=task,
                           reference=reference, response_text="#### 1",
                           worker_id=self.worker_id)
                for _ in range(n)]

    async def update_weights(self, path: str | None, version: int) -> dict[str, float]:
        self.version = version
        return {"version": version, "interrupted": 0}

    async def stats(self) -> dict[str, float]:
        return {"tokens_generated": float(self.tokens), "busy_s": 0.0}


class FakeReward:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    async def score(self, items: list[dict[str, Any]]) -> list[SimpleNamespace]:
        return [SimpleNamespace(reward=float(self.rng.random() < 0.5), ok=True, reason="")
                for _ in items]


class FakeTrainer:
    async def train_step(self, batch: list[Any], step: int, *_: Any) -> dict[str, float]:
        return {"loss": 0.0, "n_loss_tokens": float(sum(g.num_tokens_generated for g in batch))}

    async def export_weights(self, path: str) -> None:
        return None


def measure(eta: int, a: argparse.Namespace, run_dir: Path) -> dict[str, float]:
    cfg = load_config(None, [
        f"run_dir={run_dir}", f"trainer.total_steps={a.steps}", f"controller.max_staleness={eta}",
        f"controller.batch_size={a.batch_size}", f"rollout.n_samples={a.n_samples}",
        f"rollout.num_workers={a.workers}", "eval.before_and_after=false",
        "logging.progress_bar=false", f"seed={a.seed}",
    ])
    prompts = [Prompt(f"p{i}", [1 + i % 50] * 12, "1", "synthetic") for i in range(4096)]
    actors = SimpleNamespace(
        rollout=[FakeActor(FakeRollout(i, a.response_tokens)) for i in range(a.workers)],
        trainers=[FakeActor(FakeTrainer())], reward=FakeActor(FakeReward(a.seed)),
        critic=None, sync_dir=str(run_dir),
    )
    controller = Controller(cfg, actors, prompts, prompts[:8])
    t0 = time.perf_counter()
    results = asyncio.run(controller.run())
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
