"""Interruptible vs non-interruptible generation under periodic weight updates: rollout tokens/s.

    python benchmarks/interruptible.py [--update-every-s 1,2,4] [--window-s 15] [--rounds 2]
    areal-sys bench interruptible ...

One real RolloutWorker (vLLM AsyncLLM on CPU, the cached tiny model: long-tailed response lengths)
is kept busy by a closed loop of `--concurrency` groups (`--n-samples` samples each, T = 1): as
soon as a group finishes, the next prompt is submitted, as the controller does under its
staleness gate. Every `--update-every-s` seconds a new policy version arrives (`update_weights`
from a safetensors file: the same weights, so the responses do not change, but the full protocol
runs):

- interruptible (AReaL): abort in-flight requests, load, reset the prefix cache, resubmit prompt
  + partial tokens with the remaining budget;
- non-interruptible (baseline): stop admitting, wait until every in-flight request has finished on
  the old weights, load, reopen.

The two modes alternate (`--rounds` windows of `--window-s` seconds each, A B A B ...) on the same
engine. tokens/s = tokens streamed by the engine in a window / its length (partial tokens of an
interrupted request are kept, never regenerated, so they count once). Key `gain` =
interruptible / non-interruptible - 1 at the first update interval (1 s: about one training step of
the CPU demo); `by_interval` has the gain for every interval measured (rarer updates, less to
gain). Writes benchmarks/results/interruptible.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import figure_path, write_results  # noqa: E402


async def window(worker: Any, interruptible: bool, weights: str, a: argparse.Namespace,
                 every_s: float, problems: list[list[int]], version: itertools.count
                 ) -> dict[str, Any]:
    """One measurement window in one mode: closed-loop load plus periodic updates."""
    worker.interruptible = interruptible
    stop = time.perf_counter() + a.window_s
    serial = itertools.count()

    async def client() -> None:
        while time.perf_counter() < stop:
            i = next(serial)
            await worker.generate_group(
                group_id=i, prompt_uid=str(i), prompt_ids=problems[i % len(problems)],
                n=a.n_samples, max_new_tokens=a.max_new_tokens, temperature=1.0)

    async def updater() -> list[dict[str, Any]]:
        """A new version every `update_every_s` on a fixed clock, as a trainer that never waits
        delivers them (an update that is late because of draining starts at once)."""
        out, due = [], time.perf_counter() + every_s
        while due < stop:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            out.append(await worker.update_weights(weights, next(version)))
            due += every_s
        return out

    before = (await worker.stats())["tokens_generated"]
    t0 = time.perf_counter()
    clients = [asyncio.create_task(client()) for _ in range(a.concurrency)]
    updates = await updater()
    await asyncio.sleep(max(0.0, stop - time.perf_counter()))
    tokens = (await worker.stats())["tokens_generated"] - before  # counted up to the window end
    elapsed = time.perf_counter() - t0
    await asyncio.gather(*clients)  # let the last groups finish outside the window
    return {
        "interruptible": interruptible, "update_every_s": every_s,
        "tokens_per_s": tokens / elapsed, "seconds": elapsed,
        "updates": len(updates),
        "drain_s_mean": sum(u["drain_s"] for u in updates) / max(len(updates), 1),
        "interrupted": sum(u["interrupted"] for u in updates),
    }


async def measure(a: argparse.Namespace, model: Path) -> dict[str, Any]:
    from areal_sys.data.synthetic import make_problems
    from areal_sys.models.tiny import build_tokenizer
    from workers.rollout import RolloutWorker

    tok = build_tokenizer()
    problems = [tok(p["prompt"])["input_ids"] for p in make_problems(1024, seed=a.seed)]
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    tmp = tempfile.mkdtemp(prefix="areal_sys-bench-", dir=shm)
    weights = str(shutil.copy(model / "model.safetensors", Path(tmp) / "weights.safetensors"))
    worker = RolloutWorker(str(model), seed=a.seed, kv_cache_gib=1.0, max_model_len=256)
    await worker.start()
    version = itertools.count(1)
    rows = []
    try:
        warm_up = argparse.Namespace(**{**vars(a), "window_s": 5.0})
        await window(worker, True, weights, warm_up, 1.0, problems, version)
        for every_s, r in itertools.product(a.update_every_s, range(a.rounds)):
            for mode in (True, False) if r % 2 == 0 else (False, True):
                rows.append(await window(worker, mode, weights, a, every_s, problems, version))
                w = rows[-1]
                print(f"every {every_s:g} s round {r} {'interruptible' if mode else 'drain':<13} "
                      f"{w['tokens_per_s']:.0f} tok/s, {w['updates']} updates, "
                      f"drain {w['drain_s_mean']:.3f} s, {w['interrupted']} aborted", flush=True)
    finally:
        await worker.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    def mean(mode: bool, every_s: float) -> float:
        picked = [w for w in rows if w["interruptible"] == mode and w["update_every_s"] == every_s]
        return sum(w["tokens_per_s"] * w["seconds"] for w in picked) / sum(
            w["seconds"] for w in picked)

    by_interval = [{"update_every_s": e, "tokens_per_s_interruptible": mean(True, e),
                    "tokens_per_s_non_interruptible": mean(False, e),
                    "gain": mean(True, e) / mean(False, e) - 1} for e in a.update_every_s]
    return {**by_interval[0], "by_interval": by_interval, "windows": rows}


def plot(fig_data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = fig_data["by_interval"]
    fig, ax = plt.subplots(figsize=(6, 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["tokens_per_s_non_interruptible"] for r in rows], 0.4,
           color="tab:gray", label="non-interruptible (drain)")
    ax.bar([i + 0.2 for i in x], [r["tokens_per_s_interruptible"] for r in rows], 0.4,
           color="tab:blue", label="interruptible (abort + resume)")
    ax.set_xticks(list(x), [f"update every {r['update_every_s']:g} s\n"
                            f"gain {100 * r['gain']:+.1f}%" for r in rows])
    ax.set_ylabel("rollout tokens / s")
    ax.legend(fontsize=8)
    ax.set_title("Interruptible generation under periodic weight updates")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--update-every-s", default="1,2,4", help="comma-separated intervals (s)")
    p.add_argument("--window-s", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=32, help="groups in flight")
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    a.update_every_s = [float(x) for x in a.update_every_s.split(",")]
    from areal_sys.models.tiny import ensure_tiny_model

    figures = asyncio.run(measure(a, Path(ensure_tiny_model(seed=a.seed, progress=False))))
    for r in figures["by_interval"]:
        print(f"update every {r['update_every_s']:g} s: interruptible "
              f"{r['tokens_per_s_interruptible']:.0f} tok/s, non-interruptible "
              f"{r['tokens_per_s_non_interruptible']:.0f} tok/s: gain {100 * r['gain']:+.1f}%")
    out = write_results("interruptible", figures, {**vars(a), "model": "tiny (cached)"})
    plot(figures, figure_path("interruptible"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
