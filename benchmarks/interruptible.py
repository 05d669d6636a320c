"""Weight-update modes under periodic updates: rollout tokens/s (abort, keep, wait), and the
effect on a short training run.

    python benchmarks/interruptible.py [--update-every-s 1,2,4] [--window-s 15] [--runs 3]
                                       [--train-seeds 3] [--train-steps 20]
    areal-sys bench interruptible ...

Throughput. One real RolloutWorker (vLLM AsyncLLM on CPU, the cached tiny model: long-tailed
response lengths) is kept busy by a closed loop of `--concurrency` groups (`--n-samples` samples
each, T = 1): as soon as a group finishes, the next prompt is submitted, as the controller does
under its staleness gate. Every `--update-every-s` seconds a new policy version arrives
(`update_weights` from a safetensors file: the same weights, so the responses do not change, but
the full protocol runs) in one of the worker's `update_mode`s (workers/rollout.py):

- abort (AReaL's interruptible generation): abort in-flight requests, load, reset the prefix
  cache, resubmit prompt + partial tokens with the remaining budget (a re-prefill);
- keep (vLLM's pause_generation(mode="keep"), PipelineRL's in-flight update): freeze requests in
  place, load, resume; no re-prefill, the KV of earlier tokens stays from the older weights;
- wait (baseline; pause_generation(mode="wait")): the engine finishes requests on the old weights.

Each mode gets `--runs` windows of `--window-s` seconds per interval on the same engine, in a
rotated order (abort keep wait, keep wait abort, ...) so a slow drift of the shared machine
spreads over the modes. tokens/s = tokens streamed by the engine in a window / its length (partial
tokens of an aborted request are kept, never regenerated, so they count once); `prefill_tokens`
= prompt tokens vLLM prefilled in the window (its own statistics: what abort pays again). Per
interval and mode: mean tokens/s with a 95% CI over the runs; `gain` = abort / wait - 1 and
`gain_keep` = keep / wait - 1 at the first interval (1 s: about one training step of the CPU
demo), `by_interval` for every interval.

Training (`--train-seeds` > 0): `configs/local_tiny.yaml` for `--train-steps` steps with each
`rollout.update_mode`, seeds 1..K (`model.tiny_seed` fixed): final held-out pass rate, training
wall seconds and rollout tokens/s per mode (mean, 95% CI). Writes
benchmarks/results/interruptible.json and .png (or under `--out-dir`).
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

from benchmarks.common import (  # noqa: E402
    RESULTS,
    Setting,
    figure_path,
    learning_overrides,
    pipeline_run,
    run_grid,
    setting_figures,
    write_results,
)

MODES = ("abort", "keep", "wait")


async def window(worker: Any, mode: str, weights: str, a: argparse.Namespace, every_s: float,
                 problems: list[list[int]], version: itertools.count) -> dict[str, Any]:
    """One measurement window in one mode: closed-loop load plus periodic updates."""
    worker.update_mode = mode
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

    before = await worker.stats()
    t0 = time.perf_counter()
    clients = [asyncio.create_task(client()) for _ in range(a.concurrency)]
    updates = await updater()
    await asyncio.sleep(max(0.0, stop - time.perf_counter()))
    after = await worker.stats()  # counted up to the window end
    elapsed = time.perf_counter() - t0
    await asyncio.gather(*clients)  # let the last groups finish outside the window
    return {
        "mode": mode, "update_every_s": every_s, "seconds": elapsed,
        "tokens_per_s": (after["tokens_generated"] - before["tokens_generated"]) / elapsed,
        "prefill_tokens": after["prefill_tokens"] - before["prefill_tokens"],
        "preemptions": after["preemptions"] - before["preemptions"],
        "updates": len(updates),
        "drain_s_mean": sum(u["drain_s"] for u in updates) / max(len(updates), 1),
        "interrupted": sum(u["interrupted"] for u in updates),
        "kept": sum(u["kept"] for u in updates),
    }


async def measure(a: argparse.Namespace, model: Path) -> dict[str, Any]:
    from areal_sys.data.synthetic import make_problems
    from areal_sys.models.tiny import build_tokenizer
    from benchmarks.stats import summarize
    from workers.rollout import RolloutWorker

    tok = build_tokenizer()
    problems = [tok(p["prompt"])["input_ids"] for p in make_problems(1024, seed=a.seed)]
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    tmp = tempfile.mkdtemp(prefix="areal_sys-bench-", dir=shm)
    weights = str(shutil.copy(model / "model.safetensors", Path(tmp) / "weights.safetensors"))
    worker = RolloutWorker(str(model), seed=a.seed, kv_cache_gib=1.0, max_model_len=256,
                           engine_stats=True)
    await worker.start()
    version = itertools.count(1)
    rows = []
    try:
        warm_up = argparse.Namespace(**{**vars(a), "window_s": a.warm_up_s})
        await window(worker, "abort", weights, warm_up, 1.0, problems, version)
        for every_s, r in itertools.product(a.update_every_s, range(a.runs)):
            for mode in MODES[r % 3:] + MODES[: r % 3]:
                rows.append(await window(worker, mode, weights, a, every_s, problems, version))
                w = rows[-1]
                print(f"every {every_s:g} s run {r} {mode:<5} {w['tokens_per_s']:.0f} tok/s, "
                      f"{w['updates']} updates, stop {w['drain_s_mean']:.3f} s, "
                      f"{w['interrupted']} aborted, {w['kept']} kept, "
                      f"{w['prefill_tokens']:.0f} prefill tokens", flush=True)
    finally:
        await worker.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    def of(mode: str, every_s: float, key: str) -> list[float]:
        return [w[key] for w in rows if w["mode"] == mode and w["update_every_s"] == every_s]

    by_interval = []
    for e in a.update_every_s:
        tps = {m: summarize(of(m, e, "tokens_per_s")) for m in MODES}
        by_interval.append({
            "update_every_s": e, **{f"tokens_per_s_{m}": tps[m] for m in MODES},
            **{f"prefill_tokens_{m}": summarize(of(m, e, "prefill_tokens")) for m in MODES},
            # the keys of the two-mode version of this benchmark (benchmarks/table.py)
            "tokens_per_s_interruptible": tps["abort"]["mean"],
            "tokens_per_s_non_interruptible": tps["wait"]["mean"],
            "gain": tps["abort"]["mean"] / tps["wait"]["mean"] - 1,
            "gain_keep": tps["keep"]["mean"] / tps["wait"]["mean"] - 1,
            "keep_vs_abort": tps["keep"]["mean"] / tps["abort"]["mean"] - 1,
        })
    return {**by_interval[0], "by_interval": by_interval, "windows": rows}


def train(a: argparse.Namespace) -> dict[str, Any]:
    """Short training runs with each update mode: pass rate, wall time, tokens/s per mode."""
    base = learning_overrides(argparse.Namespace(
        tiny_seed=a.tiny_seed, task="first_decision", steps=a.train_steps, batch_size=16,
        n_samples=a.n_samples, eval_problems=a.eval_problems, eval_k=4), curve_points=1)
    modes = ("rollout.interruptible=null",)  # the config may still name the old flag
    settings = [Setting(m, "configs/local_tiny.yaml", (*base, *modes, f"rollout.update_mode={m}"),
                        {"update_mode": m}) for m in MODES]
    grid = run_grid(settings, list(range(1, a.train_seeds + 1)), pipeline_run,
                    Path(a.runs_dir))
    return {"settings": [s.meta for s in settings], "failures": grid.failures,
            "modes": {s.name: setting_figures(grid.runs[s.name], ("tokens_per_s", "sync_s"))
                      for s in settings}}


def plot(fig_data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = fig_data["by_interval"]
    colors = {"abort": "tab:blue", "keep": "tab:green", "wait": "tab:gray"}
    fig, ax = plt.subplots(figsize=(7, 4))
    for j, m in enumerate(MODES):
        xs = [i + (j - 1) * 0.27 for i in range(len(rows))]
        ys = [r[f"tokens_per_s_{m}"]["mean"] for r in rows]
        err = [r[f"tokens_per_s_{m}"].get("ci95") or 0.0 for r in rows]
        ax.bar(xs, ys, 0.27, yerr=err, color=colors[m], label=m, capsize=3)
    ax.set_xticks(range(len(rows)), [f"update every {r['update_every_s']:g} s" for r in rows])
    ax.set_ylabel("rollout tokens / s (95% CI)")
    ax.legend(fontsize=8, title="update_mode")
    ax.set_title("Weight-update modes under periodic updates")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--update-every-s", default="1,2,4", help="comma-separated intervals (s)")
    p.add_argument("--window-s", type=float, default=15.0)
    p.add_argument("--warm-up-s", type=float, default=5.0, help="unmeasured first window")
    p.add_argument("--runs", type=int, default=3, help="windows per mode and interval")
    p.add_argument("--concurrency", type=int, default=32, help="groups in flight")
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train-seeds", type=int, default=3, help="training runs per mode (0: none)")
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--eval-problems", type=int, default=256)
    p.add_argument("--tiny-seed", type=int, default=1, help="model.tiny_seed of the runs")
    p.add_argument("--runs-dir", default="runs/bench_interruptible")
    p.add_argument("--out-dir", default=str(RESULTS), help="where NAME.json and NAME.png go")
    a = p.parse_args()
    if a.runs < 2:
        raise SystemExit("--runs must be >= 2 (a CI needs two windows per mode)")
    a.update_every_s = [float(x) for x in a.update_every_s.split(",")]
    from areal_sys.models.tiny import ensure_tiny_model

    figures = asyncio.run(measure(a, Path(ensure_tiny_model(seed=a.seed, progress=False))))
    for r in figures["by_interval"]:
        print(f"update every {r['update_every_s']:g} s: " + ", ".join(
            f"{m} {r[f'tokens_per_s_{m}']['mean']:.0f}" for m in MODES) + " tok/s; abort "
            f"{100 * r['gain']:+.1f}%, keep {100 * r['gain_keep']:+.1f}% vs wait")
    if a.train_seeds > 0:
        figures["training"] = train(a)
        for m, f in figures["training"]["modes"].items():
            if f.get("n"):
                print(f"training {m}: pass {f['pass_rate']['mean']:.1f}% "
                      f"± {f['pass_rate'].get('ci95') or 0:.1f}, "
                      f"{f['wall_s']['mean']:.0f} s over {f['n']} seeds")
    out_dir = Path(a.out_dir)
    settings = {k: v for k, v in vars(a).items() if k not in ("runs_dir", "out_dir")}  # paths
    out = write_results("interruptible", figures, {**settings, "model": "tiny (cached)"}, out_dir)
    plot(figures, figure_path("interruptible", out_dir))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
