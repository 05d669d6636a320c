"""Weights out of a TrainerWorker: full HF-named weights for the rollout engines and checkpoints.

A mixin of `TrainerWorker` (workers/trainer.py), kept apart so that the trainer module holds the
update and this one the two weight-sync paths (DESIGN.md, "Weight sync"):

- `shm_file`: rank 0 writes one safetensors file (in /dev/shm) that the engines reload;
- `collective`: rank 0 joins a stateless group with every engine and broadcasts in buckets.

It uses the trainer's `engine`, `cfg`, `rank`, `world_size`, `dtype`, `model_path` and
`_weight_group`.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from areal_sys.ports import free_port
from workers.deepspeed_engine import load_engine_state, save_engine_state
from workers.weight_sync import SyncGroup, TensorMeta, tensor_meta, write_safetensors

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class WeightsOut:
    """Export, broadcast and save the trainer's full weights (see the module doc)."""

    engine: Any
    cfg: dict
    rank: int
    world_size: int
    dtype: str
    model_path: str
    _weight_group: SyncGroup | None

    def _full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """HF-named full weights on rank 0 (None elsewhere), tied duplicates dropped (as HF saves
        them). Collective under ZeRO-3: every rank must call it."""
        if self.cfg["zero_stage"] == 3:
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

    def export_weights(self, path: str) -> dict[str, float]:
        """`shm_file` sync: rank 0 writes the full HF-named weights as one safetensors file,
        atomically, so a reader never sees a partial file."""
        t0 = time.perf_counter()
        sd = self._full_state_dict()
        num_bytes = write_safetensors(sd, path) if sd is not None else 0
        self._barrier()
        return {"export_s": time.perf_counter() - t0, "num_bytes": float(num_bytes)}

    def weight_sync_endpoint(self) -> tuple[str, int]:
        """Where rank 0 hosts the `collective` group's store: this node's address, a free port."""
        import ray

        return ray.util.get_node_ip_address(), free_port("")

    def weight_meta(self) -> list[TensorMeta] | None:
        """(name, shape, dtype) of every exported weight on rank 0 (collective under ZeRO-3)."""
        sd = self._full_state_dict()
        return tensor_meta(sd) if sd is not None else None

    def init_weight_group(
        self, host: str, port: int, world_size: int, meta: list[TensorMeta],
        bucket_bytes: int, backend: str, timeout_s: float = 1800.0,
    ) -> bool:
        """Rank 0 joins the `collective` group as its rank 0, together with every rollout engine
        (they call `RolloutWorker.init_weight_group` at the same time). Other ranks do nothing."""
        if self.rank == 0:
            self._weight_group = SyncGroup(
                host, port, 0, world_size, meta,
                bucket_bytes=bucket_bytes, backend=backend, timeout_s=timeout_s,
            )
        return True

    def broadcast_weights(self) -> dict[str, float]:
        """`collective` sync: gather the full weights (every rank calls it) and broadcast them
        from rank 0 while the rollout engines receive (`RolloutWorker.update_weights(None, v)`)."""
        t0 = time.perf_counter()
        sd = self._full_state_dict()
        num_bytes = 0
        if sd is not None:
            if self._weight_group is None:
                raise RuntimeError("broadcast_weights before init_weight_group")
            num_bytes = self._weight_group.send(sd)
        self._barrier()
        return {"export_s": time.perf_counter() - t0, "num_bytes": float(num_bytes)}

    def save_hf(self, out_dir: str) -> None:
        """HF-format model + tokenizer in `out_dir` (rank 0), loadable by transformers and vLLM."""
        from transformers import AutoTokenizer

        sd = self._full_state_dict()
        if sd is not None:
            module = self.engine.module
            module.config.dtype = _DTYPES[self.dtype]
            module.save_pretrained(out_dir, state_dict=sd)
            AutoTokenizer.from_pretrained(self.model_path).save_pretrained(out_dir)
        self._barrier()

    def save_checkpoint(self, out_dir: str) -> None:
        """Resumable state into `out_dir` (call on every rank): the DeepSpeed checkpoint (weights
        and optimiser state of each rank) in `trainer/`, the HF policy in `policy/` (rank 0)."""
        save_engine_state(self.engine, f"{out_dir}/trainer")
        self.save_hf(f"{out_dir}/policy")

    def load_checkpoint(self, ckpt_dir: str) -> None:
        """Restore weights and optimiser state saved by `save_checkpoint` (every rank). The
        reference policy stays the initial one. The learning rate is a function of the step."""
        load_engine_state(self.engine, f"{ckpt_dir}/trainer")

    def _barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
