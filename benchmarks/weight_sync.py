"""Weight-sync latency: trainer export start → the rollout engine serving the new weights.

    python benchmarks/weight_sync.py [--models tiny,0.5b] [--dtypes float32,bfloat16] [--repeats 3]

For each model (the built-in tiny model, and a randomly initialised model with the shape of
Qwen2.5-0.5B: 24 layers, hidden 896, vocab 151 936, ~494M parameters) it starts one real
TrainerWorker (DeepSpeed ZeRO-1) and one real RolloutWorker (vLLM AsyncLLM), then times each
backend `--repeats` times:

- `shm_file`: rank 0 gathers the weights and writes a safetensors file in /dev/shm; the engine
  reloads it (`update_weights(path, v)`);
- `collective`: rank 0 broadcasts the weights in buckets over the gloo group (NCCL on GPU) while
  the engine receives and reloads them (`update_weights(None, v)`).

`sync_s` is the median wall time from the start of the export to the engine's return (weights
loaded, prefix cache reset, ready to sample). Both run in this process (the engine core is its own
process, as in a run), so no Ray scheduling is included. Per repeat, `detail` splits it:
`gather_s` (the trainer's full state dict), `export_s` (trainer side: gather + file write, or
gather + broadcast), `reload_s` (engine side: `reload_weights`, which for `collective` includes
receiving), `load_s` (the engine's whole load: reload + prefix-cache reset + version label).
`--dtypes`: `model.dtype` of both sides (bfloat16: the trainer's module and the engine in bf16,
so bf16 bytes travel). As in a local run on CPU, the engine is bound to core 0 and the trainer to
the other cores (`--no-pin`: both everywhere). Writes benchmarks/results/weight_sync.json (a list
of {"model", "dtype", "backend", "sync_s", ...}) and weight_sync.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from areal_sys.ports import free_port  # noqa: E402
from benchmarks.common import figure_path, write_results  # noqa: E402

QWEN25_05B = dict(  # the published Qwen2.5-0.5B shape
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
    tie_word_embeddings=True,
)


def build_model(kind: str, root: Path) -> Path:
    from areal_sys.models.tiny import build_tokenizer, save_random_tiny_model

    if kind == "tiny":
        return save_random_tiny_model(root / "tiny", seed=0)
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_tokenizer()
    cfg = Qwen2Config(**QWEN25_05B, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      rope_theta=1e6, torch_dtype="float32")
    torch.manual_seed(0)
    out = root / "qwen2.5-0.5b-shaped"
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


async def time_backends(model_dir: Path, repeats: int, bucket_mb: int, dtype: str,
                        pin: bool) -> list[dict[str, Any]]:
    from areal_sys.config import ExperimentConfig
    from workers.deepspeed_engine import CPU_CORES_ENV
    from workers.rollout import RolloutWorker
    from workers.trainer import TrainerWorker

    cores = sorted(os.sched_getaffinity(0))
    if pin and len(cores) > 1:  # as controller/runtime.py cpu_placement pins a local run
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(cores[0])
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        os.environ[CPU_CORES_ENV] = ",".join(map(str, cores[1:]))
    cfg = ExperimentConfig.model_validate({"model": {"dtype": dtype},
                                           "trainer": {"max_tokens_per_microbatch": 40960}})
    trainer = TrainerWorker(str(model_dir), cfg, rank=0, world_size=1, master_port=free_port())
    trainer.setup()
    engine = RolloutWorker(str(model_dir), kv_cache_gib=1.0, max_model_len=512, dtype=dtype)
    await engine.start()
    rows = []
    try:
        meta = trainer.weight_meta()
        port, bucket = free_port(), bucket_mb << 20
        await asyncio.gather(
            asyncio.to_thread(trainer.init_weight_group, 0, "127.0.0.1", port, meta, bucket,
                              "gloo", 600.0),
            engine.init_weight_group("127.0.0.1", port, 1, 2, [list(m) for m in meta], bucket,
                                     "gloo", 600.0),
        )
        path = str(Path(tempfile.mkdtemp(dir="/dev/shm")) / "weights.safetensors")
        version = 0
        for backend in ("shm_file", "collective"):
            times, detail = [], []
            for _ in range(repeats):
                version += 1
                t0 = time.perf_counter()
                if backend == "shm_file":
                    export = await asyncio.to_thread(trainer.export_weights, path)
                    load = await engine.update_weights(path, version)
                else:
                    export, load = await asyncio.gather(
                        asyncio.to_thread(trainer.broadcast_weights),
                        engine.update_weights(None, version),
                    )
                times.append(time.perf_counter() - t0)
                detail.append({k: v[k] for v, keys in ((export, ("gather_s", "export_s")),
                                                        (load, ("reload_s", "load_s")))
                               for k in keys})
            rows.append({
                "backend": backend, "sync_s": statistics.median(times), "all_s": times,
                "bytes": export["num_bytes"], "detail": detail,
            })
            print(f"  {backend:10s} sync {statistics.median(times):.3f} s "
                  f"({export['num_bytes'] / 2**20:.0f} MiB)", flush=True)
    finally:
        await engine.shutdown()
        trainer.shutdown()
        for var in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU", CPU_CORES_ENV):
            os.environ.pop(var, None)
        os.sched_setaffinity(0, cores)  # the trainer pinned this process
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,0.5b")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="model.dtype of both sides")
    ap.add_argument("--no-pin", action="store_true", help="engine and trainer on every core")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-mb", type=int, default=256)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="weight_sync_bench-"))
    results = []
    for kind in args.models.split(","):
        model_dir = build_model(kind, root)
        for dtype in args.dtypes.split(","):
            print(f"{kind} {dtype}: starting trainer + engine ...", flush=True)
            for row in asyncio.run(time_backends(model_dir, args.repeats, args.bucket_mb, dtype,
                                                 pin=not args.no_pin)):
                results.append({"model": kind, "dtype": dtype, **row})
    out_dir = args.out or Path(__file__).resolve().parent / "results"
    settings = {"repeats": args.repeats, "bucket_mb": args.bucket_mb, "trainer": "DeepSpeed ZeRO-1",
                "engine": "vLLM AsyncLLM", "dtypes": args.dtypes, "pinned": not args.no_pin,
                "send": "bucket k+1 filled / received while bucket k is on the wire / loaded"}
    path = write_results("weight_sync", results, settings, out_dir)
    _plot(results, figure_path("weight_sync", out_dir))
    for r in results:
        print(f"{r['model']} {r['dtype']} {r['backend']}: {r['sync_s']:.3f} s "
              f"({r['bytes'] / 2**20:.0f} MiB)")
    print(f"wrote {path}")
    return results


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in results}, key=[r["model"] for r in results].index)
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        rows = [r for r in results if r["model"] == m]
        ax.bar([f"{r['backend']}\n{r.get('dtype', 'float32')}" for r in rows],
               [r["sync_s"] for r in rows])
        ax.set(title=f"{m}: export start -> engine serving", ylabel="seconds (median)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
