"""The DeepSpeed set-up shared by the policy trainer and the critic: joining the process group,
wrapping a model in a ZeRO engine with a torch AdamW, and summing metrics over the ranks.

CPU facts (ENVIRONMENT.md): gloo backend; DeepSpeed builds a shared-memory comm op on CPU at
process-group start (~23 s compile on first use) that only `inference_all_reduce` (tensor-parallel
inference) uses, never training, so it is switched off here at every world size. DeepSpeed's own
"optimizer" block would compile a CPU FusedAdam (~40 s); a torch AdamW is passed instead.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any

import torch

from areal_sys.config import TrainerConfig

CPU_CORES_ENV = "AREAL_SYS_CPU_CORES"  # comma-separated core ids this rank may use (CPU only)


def join_process_group(rank: int, world_size: int, master_addr: str, master_port: int,
                       timeout_s: float = 600.0) -> bool:
    """Set the rank's environment, pin it (CUDA device, or the CPU cores the controller gave it in
    `AREAL_SYS_CPU_CORES`) and join DeepSpeed's process group (nccl on GPU, gloo on CPU).
    Returns whether this rank runs on a GPU."""
    import deepspeed

    on_gpu = torch.cuda.is_available()
    local_rank = rank % torch.cuda.device_count() if on_gpu else 0
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(local_rank),
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
    )
    if on_gpu:
        torch.cuda.set_device(local_rank)
    else:
        if cores := os.environ.get(CPU_CORES_ENV):  # pinned by the controller (local CPU runs)
            ids = [int(c) for c in cores.split(",")]
            os.sched_setaffinity(0, ids)
            torch.set_num_threads(len(ids))
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # see the module doc
    deepspeed.utils.logger.setLevel(logging.WARNING)
    # a collective waits at most timeout_s for a rank that vanished (then raises, not hangs)
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo",
                               timeout=datetime.timedelta(seconds=timeout_s))
    return on_gpu


def build_engine(model: torch.nn.Module, cfg: TrainerConfig, *, lr: float, dtype: str) -> Any:
    """`model` under ZeRO stage `cfg.zero_stage` with AdamW (`lr`, `cfg`'s betas, eps, weight
    decay), gradient clipping and bf16/fp16 by `dtype`. The caller drives accumulation: the number
    of micro-batches varies per step, and `engine.step()` is the boundary."""
    import deepspeed

    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=tuple(cfg.adam_betas),
        weight_decay=cfg.weight_decay, eps=cfg.adam_eps,
    )
    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": dtype == "bfloat16"},
        "fp16": {"enabled": dtype == "float16"},
        "steps_per_print": 2**31 - 1,
    }
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config, dist_init_required=False
    )
    return engine


def save_engine_state(engine: Any, out_dir: str) -> None:
    """DeepSpeed checkpoint of `engine` (weights and optimiser state of this rank) in `out_dir`;
    collective: every rank calls it."""
    engine.save_checkpoint(out_dir, tag="state", save_latest=False)


def load_engine_state(engine: Any, ckpt_dir: str) -> None:
    """Restore what `save_engine_state` wrote (every rank). Learning rates are set per step by
    the caller, so no scheduler state is loaded."""
    path, _ = engine.load_checkpoint(ckpt_dir, tag="state", load_optimizer_states=True,
                                     load_lr_scheduler_states=False)
    if path is None:
        raise RuntimeError(f"no DeepSpeed checkpoint in {ckpt_dir}")


def release_engine(engine: Any) -> None:
    """Destroy `engine` and leave the process group through deepspeed.comm (not torch.distributed),
    so DeepSpeed drops its cached groups and a later set-up in the same process can join anew."""
    import deepspeed.comm as ds_dist

    engine.destroy()
    if ds_dist.is_initialized():
        ds_dist.destroy_process_group()


def reduce_over_ranks(sums: dict[str, float], world_size: int, device: Any) -> dict[str, float]:
    """Metric numerators summed over the data-parallel ranks (`*_max` keys: their maximum);
    no communication for one rank."""
    if world_size == 1:
        return sums
    import torch.distributed as dist

    keys = sorted(sums)
    total = torch.tensor([0.0 if k.endswith("_max") else sums[k] for k in keys], device=device)
    peak = torch.tensor([sums[k] if k.endswith("_max") else 0.0 for k in keys], device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return {k: float(peak[j] if k.endswith("_max") else total[j]) for j, k in enumerate(keys)}
