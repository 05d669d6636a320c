"""Weight-sync latency: trainer export start → the rollout engine serving the new weights.

    python benchmarks/weight_sync.py [--models tiny,0.5b] [--repeats 3]

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
process, as in a run), so no Ray scheduling is included. Writes benchmarks/results/weight_sync.json
(a list of {"model", "backend", "sync_s", ...}) and weight_sync.png.
"""

from __future__ import annotations

import argparse
import asyncio
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


async def time_backends(model_dir: Path, repeats: int, bucket_mb: int) -> list[dict[str, Any]]:
    from areal_sys.config import ExperimentConfig
    from workers.rollout import RolloutWorker
    from workers.trainer import TrainerWorker

    cfg = ExperimentConfig.model_validate({"trainer": {"max_tokens_per_microbatch": 40960}})
    trainer = TrainerWorker(str(model_dir), cfg, rank=0, world_size=1, master_port=free_port())
    trainer.setup()
    engine = RolloutWorker(str(model_dir), kv_cache_gib=1.0, max_model_len=512)
    await engine.start()
    rows = []
    try:
        meta = trainer.weight_meta()
        port, bucket = free_port(), bucket_mb << 20
        await asyncio.gather(
            asyncio.to_thread(trainer.init_weight_group, "127.0.0.1", port, 2, meta, bucket,
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
                detail.append({"export_s": export["export_s"], "reload_s": load["reload_s"]})
            rows.append({
                "backend": backend, "sync_s": statistics.median(times), "all_s": times,
                "bytes": export["num_bytes"], "detail": detail,
            })
            print(f"  {backend:10s} sync {statistics.median(times):.3f} s "
                  f"({export['num_bytes'] / 2**20:.0f} MiB)", flush=True)
    finally:
        await engine.shutdown()
        trainer.shutdown()
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,0.5b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-mb", type=int, default=256)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="weight_sync_bench-"))
    results = []
    for kind in args.models.split(","):
        print(f"{kind}: building model and starting trainer + engine ...", flush=True)
        model_dir = build_model(kind, root)
        for row in asyncio.run(time_backends(model_dir, args.repeats, args.bucket_mb)):
            results.append({"model": kind, **row})
    out_dir = args.out or Path(__file__).resolve().parent / "results"
    settings = {"repeats": args.repeats, "bucket_mb": args.bucket_mb, "trainer": "DeepSpeed ZeRO-1",
                "engine": "vLLM AsyncLLM", "dtype": "float32"}
    path = write_results("weight_sync", results, settings, out_dir)
    _plot(results, figure_path("weight_sync", out_dir))
    for kind in args.models.split(","):
        by = {r["backend"]: r["sync_s"] for r in results if r["model"] == kind}
        print(f"{kind}: shm_file {by['shm_file']:.3f} s, collective {by['collective']:.3f} s "
              f"(collective/shm_file = {by['collective'] / by['shm_file']:.2f})")
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
        ax.bar([r["backend"] for r in rows], [r["sync_s"] for r in rows])
        ax.set(title=f"{m}: export start -> engine serving", ylabel="seconds (median)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
