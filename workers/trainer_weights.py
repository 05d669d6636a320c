"""Weights out of a trainer: full HF-named weights for the rollout engines and checkpoints.

`WeightsOut` is a component of `TrainerWorker` (workers/trainer.py), built in `setup()` over the
trainer's DeepSpeed engine, so that the trainer module holds the update and this one the two
weight-sync paths (DESIGN.md, "Weight sync") and the checkpoint files:

- `shm_file`: rank 0 writes one safetensors file (in /dev/shm) that the engines reload;
- `collective`: rank 0 joins a stateless two-rank group with each engine and broadcasts in
  buckets on all of them at once (weight_sync.py `fan_out`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from areal_sys.ports import free_port
from workers.deepspeed_engine import load_engine_state, save_engine_state
from workers.weight_sync import SyncGroup, TensorMeta, fan_out, tensor_meta, write_safetensors

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class WeightsOut:
    """Export, broadcast and save the full weights of one trainer rank's `engine`. Methods that
    gather weights are collective under ZeRO-3: every rank calls them."""

    def __init__(
        self, engine: Any, *, rank: int, world_size: int, zero_stage: int, dtype: str,
        model_path: str,
    ) -> None:
        self.engine = engine
        self.rank, self.world_size = rank, world_size
        self.zero_stage, self.dtype, self.model_path = zero_stage, dtype, model_path
        self.groups: dict[int, SyncGroup] = {}  # `collective`: rank 0's group with engine i

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """HF-named full weights on rank 0 (None elsewhere), tied duplicates dropped (as HF saves
        them)."""
        if self.zero_stage == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            sd = self.engine.module.state_dict() if self.rank == 0 else None
        if sd is None:
            return None
        out: dict[str, torch.Tensor] = {}
        seen: set[tuple[int, tuple[int, ...]]] = set()
        for name, t in sd.items():
            key = (t.data_ptr(), tuple(t.shape))
            if key in seen:  # a tied weight (lm_head.weight = embed_tokens.weight)
                continue
            seen.add(key)
            out[name] = t.detach().to("cpu").contiguous()
        return out

    def export(self, path: str) -> dict[str, float]:
        """`shm_file` sync: rank 0 writes the full HF-named weights as one safetensors file,
        atomically, so a reader never sees a partial file."""
        t0 = time.perf_counter()
        sd = self.full_state_dict()
        gathered = time.perf_counter()
        num_bytes = write_safetensors(sd, path) if sd is not None else 0
        self.barrier()
        return {"export_s": time.perf_counter() - t0, "gather_s": gathered - t0,
                "num_bytes": float(num_bytes)}

    @staticmethod
    def endpoint() -> tuple[str, int]:
        """Where rank 0 hosts the `collective` group's store: this node's address, a free port."""
        import ray

        return ray.util.get_node_ip_address(), free_port("")

    def meta(self) -> list[TensorMeta] | None:
        """(name, shape, dtype) of every exported weight on rank 0."""
        sd = self.full_state_dict()
        return tensor_meta(sd) if sd is not None else None

    def join_group(
        self, worker: int, host: str, port: int, meta: list[TensorMeta],
        bucket_bytes: int, backend: str, timeout_s: float,
    ) -> None:
        """Rank 0 makes its group with rollout engine `worker` (rank 0 of two; the engine calls
        `RolloutWorker.init_weight_group` at the same time), replacing an earlier one: a
        restarted engine joins anew. Other ranks do nothing."""
        if self.rank == 0:
            self.groups[worker] = SyncGroup(
                host, port, 0, 2, meta,
                bucket_bytes=bucket_bytes, backend=backend, timeout_s=timeout_s,
            )

    def broadcast(self, only: list[int] | None = None) -> dict[str, Any]:
        """`collective` sync: gather the full weights and broadcast them from rank 0 to every
        engine (or the engines in `only`) while they receive
        (`RolloutWorker.update_weights(None, v)`). `failed`: engine -> error, for a transfer
        that broke (its engine died); the others got every bucket."""
        t0 = time.perf_counter()
        sd = self.full_state_dict()
        gathered = time.perf_counter()
        num_bytes, failed = 0, {}
        if sd is not None:
            if not self.groups:
                raise RuntimeError("broadcast_weights before init_weight_group")
            targets = {i: g for i, g in self.groups.items() if only is None or i in only}
            num_bytes, failed = fan_out(targets, sd)
        self.barrier()
        return {"export_s": time.perf_counter() - t0, "gather_s": gathered - t0,
                "num_bytes": float(num_bytes), "failed": failed}

    def save_hf(self, out_dir: str) -> None:
        """HF-format model + tokenizer in `out_dir` (rank 0), loadable by transformers and vLLM."""
        from transformers import AutoTokenizer

        sd = self.full_state_dict()
        if sd is not None:
            module = self.engine.module
            module.config.dtype = DTYPES[self.dtype]
            module.save_pretrained(out_dir, state_dict=sd)
            AutoTokenizer.from_pretrained(self.model_path).save_pretrained(out_dir)
        self.barrier()

    def save_checkpoint(self, out_dir: str) -> None:
        """Resumable state into `out_dir`: the DeepSpeed checkpoint (weights and optimiser state
        of each rank) in `trainer/`, the HF policy in `policy/` (rank 0)."""
        save_engine_state(self.engine, f"{out_dir}/trainer")
        self.save_hf(f"{out_dir}/policy")

    def load_checkpoint(self, ckpt_dir: str) -> None:
        """Restore weights and optimiser state saved by `save_checkpoint`."""
        load_engine_state(self.engine, f"{ckpt_dir}/trainer")

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
