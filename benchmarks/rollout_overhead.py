"""RolloutWorker vs a bare vLLM AsyncLLM: generation tokens/s on the same prompts and settings.

    python benchmarks/rollout_overhead.py [--prompts 128] [--repeats 8] [--runs 3]
        [--engine-cores 0]
    areal-sys bench rollout_overhead ...

Both engines are built from the same `AsyncEngineArgs` (the worker's own: same model, dtype, seed,
KV cache, eager mode, `processed_logprobs`, weight-sync extension) in this process and bound to the
same cores; they take turns (A B A B ...) on the same workload so that drift on a shared machine
hits both. The workload is one batch of `--prompts` prompts of the built-in task x `--n-samples`
samples, `--max-new-tokens` each, T = 1, submitted at once:

- worker: `RolloutWorker.generate_group` per prompt (its version/interrupt bookkeeping, per-token
  logprobs and versions, `Trajectory` objects with decoded text);
- bare: `AsyncLLM.generate` per sample with the worker's own `SamplingParams`
  (`workers.sampling.sampling_params`: sampled-token logprob in flat lists, streamed deltas, no
  detokenisation), outputs consumed and discarded.

tokens/s = generated tokens / wall time of a batch. A run's `ratio` = worker / bare, the median
over rounds of the ratio within a round (both engines measured back to back), which a round hit by
other load on a shared machine cannot swing; `ratio_pooled` = summed tokens / summed seconds of
each side. With `--runs K` (fresh engines each run) the top-level figures are the medians over
runs, `ratio_by_run` lists each run's ratio and `runs` holds every run's figures.
On CPU the engine's OpenMP threads and this process's Python (the output handler,
the worker's bookkeeping) share cores unless `--engine-cores` gives the engine its own (e.g. `0`:
the engine on core 0, this process on the others, as a deployment gives the engine its device).
The model is the cached tiny model (long-tailed response lengths). Writes
benchmarks/results/NAME.json and .png (`--name`, default rollout_overhead).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import figure_path, write_results  # noqa: E402


def prompts(n: int, seed: int) -> list[list[int]]:
    from areal_sys.data.synthetic import make_problems
    from areal_sys.models.tiny import build_tokenizer

    tok = build_tokenizer()
    return [tok(p["prompt"])["input_ids"] for p in make_problems(n, seed=seed)]


async def worker_batch(worker: Any, batch: list[list[int]], n: int, max_new: int) -> int:
    groups = await asyncio.gather(*[
        worker.generate_group(group_id=i, prompt_uid=str(i), prompt_ids=ids, n=n,
                              max_new_tokens=max_new, temperature=1.0)
        for i, ids in enumerate(batch)
    ])
    return sum(len(t.response_ids) for g in groups for t in g)


async def bare_batch(engine: Any, batch: list[list[int]], n: int, max_new: int,
                     serial: list[int]) -> int:
    from workers.sampling import sampling_params

    params = sampling_params(max_new, temperature=1.0, top_p=1.0)  # the worker's own

    async def one(ids: list[int]) -> int:
        serial[0] += 1
        count = 0
        async for out in engine.generate({"prompt_token_ids": ids}, params, f"bare-{serial[0]}"):
            count += len(out.outputs[0].token_ids)
        return count

    return sum(await asyncio.gather(*[one(ids) for ids in batch for _ in range(n)]))


async def measure(a: argparse.Namespace, model: str) -> dict[str, Any]:
    from vllm.v1.engine.async_llm import AsyncLLM

    from workers.rollout import RolloutWorker


    worker = RolloutWorker(model, seed=a.seed, kv_cache_gib=1.0, max_model_len=256)
    await worker.start()  # sets the CPU environment (KV cache, core binding) the bare one reuses
    bare = AsyncLLM.from_engine_args(worker_engine_args(worker))
    batch, serial = prompts(a.prompts, a.seed), [0]
    totals = {"worker": [0, 0.0], "bare": [0, 0.0]}
    runs: list[dict[str, float]] = []
    try:
        for rep in range(a.repeats + 1):  # the first round warms both engines up
            for name in ("worker", "bare") if rep % 2 == 0 else ("bare", "worker"):
                t0 = time.perf_counter()
                if name == "worker":
                    tokens = await worker_batch(worker, batch, a.n_samples, a.max_new_tokens)
                else:
                    tokens = await bare_batch(bare, batch, a.n_samples, a.max_new_tokens, serial)
                dt = time.perf_counter() - t0
                if rep > 0:
                    totals[name][0] += tokens
                    totals[name][1] += dt
                    runs.append({"round": rep, "engine": name, "tokens": tokens, "seconds": dt})
                print(f"round {rep} {name:<6} {tokens} tokens in {dt:.2f} s "
                      f"({tokens / dt:.0f} tok/s)", flush=True)
    finally:
        bare.shutdown()
        await worker.shutdown()
    tps = {k: v[0] / v[1] for k, v in totals.items()}
    rate = {(r["round"], r["engine"]): r["tokens"] / r["seconds"] for r in runs}
    paired = [rate[(i, "worker")] / rate[(i, "bare")] for i in range(1, a.repeats + 1)]
    return {"ratio": statistics.median(paired), "ratio_pooled": tps["worker"] / tps["bare"],
            "ratios_by_round": paired, "tokens_per_s_worker": tps["worker"],
            "tokens_per_s_bare": tps["bare"], "runs": runs}


def worker_engine_args(worker: Any) -> Any:
    """The AsyncEngineArgs that RolloutWorker.start() builds, from the worker's settings."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform

    from workers.rollout import GIB, WEIGHT_SYNC_EXTENSION

    kv_bytes = int(worker.kv_cache_gib * GIB) if current_platform.is_cpu() else None

    return AsyncEngineArgs(
        model=worker.model_path, dtype=worker.dtype, seed=worker.seed,
        max_model_len=worker.max_model_len, enforce_eager=worker.enforce_eager,
        gpu_memory_utilization=worker.gpu_memory_utilization,
        kv_cache_memory_bytes=kv_bytes, logprobs_mode="processed_logprobs",
        worker_extension_cls=WEIGHT_SYNC_EXTENSION, disable_log_stats=True,
    )


def plot(fig_data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.bar(["bare AsyncLLM", "RolloutWorker"],
           [fig_data["tokens_per_s_bare"], fig_data["tokens_per_s_worker"]],
           color=["tab:gray", "tab:blue"])
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"Rollout worker overhead: ratio {fig_data['ratio']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--runs", type=int, default=1, help="independent runs (fresh engines each)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--engine-cores", default="", help="e.g. 0: pin both engines there (CPU)")
    p.add_argument("--name", default="rollout_overhead", help="results file name")
    a = p.parse_args()
    from areal_sys.models.tiny import ensure_tiny_model

    model = str(ensure_tiny_model(seed=a.seed, progress=False))
    cores = os.sched_getaffinity(0)
    if a.engine_cores:  # the engine's threads on these cores, this process on the rest
        engine = {int(c) for c in a.engine_cores.split(",")}
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, sorted(engine)))
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        os.sched_setaffinity(0, (cores - engine) or engine)
    per_run = []
    for r in range(a.runs):  # each run with fresh engines
        per_run.append(asyncio.run(measure(a, model)))
        print(f"run {r + 1}: ratio {per_run[-1]['ratio']:.3f}", flush=True)
    os.sched_setaffinity(0, cores)  # the machine description counts every usable core
    med = lambda key: statistics.median(f[key] for f in per_run)  # noqa: E731
    figures = {"ratio": med("ratio"), "ratio_by_run": [f["ratio"] for f in per_run],
               "ratio_pooled": med("ratio_pooled"), "tokens_per_s_worker": med(
                   "tokens_per_s_worker"), "tokens_per_s_bare": med("tokens_per_s_bare"),
               "runs": per_run}
    print(f"worker {figures['tokens_per_s_worker']:.0f} tok/s, bare "
          f"{figures['tokens_per_s_bare']:.0f} tok/s (pooled ratio {figures['ratio_pooled']:.3f}); "
          f"ratio (median of paired rounds) {figures['ratio']:.3f}")
    out = write_results(a.name, figures, {**vars(a), "model": "tiny (cached)"})
    plot(figures, figure_path(a.name))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
