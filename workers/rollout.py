"""RolloutWorker: one vLLM `AsyncLLM` engine that samples groups and takes new weights mid-flight.

The controller runs it as an async Ray actor, so `generate_group` calls for many groups and an
`update_weights` call share one event loop and interleave:

    actor = ray.remote(RolloutWorker).options(num_cpus=k, runtime_env=actor_runtime_env())
    actor = actor.remote(model_path, worker_id=i, ...)

Runtime environment. The actor process must import `workers.rollout` (an installed project, a Ray
`working_dir`, or `engine_start.actor_runtime_env()`, which puts the project root on
`PYTHONPATH`); `start()` puts it there for vLLM's spawned engine process too (it imports
`workers.vllm_ext`). On CPU, `start()` sets the KV cache size and binds the engine's OpenMP
threads to this process's cores (engine_start.configure_cpu_env); several workers on one machine
should each get their own cores through `env_vars` in the runtime_env. On CUDA none of the CPU
settings are touched.

Weight updates (`update_mode`; vLLM's pause API, `AsyncLLM.pause_generation`). Every update
closes the gate for new submissions, loads, labels the engine with the new version
(`update_weight_version`) and reopens. The engine attaches its label to every step's outputs and
returns, with each finished request, spans of output tokens per label (`weight_versions`): a
token's version is the label of the weights that sampled it, exact whatever the mode.

- `abort` (AReaL's interruptible generation; the default): abort every in-flight request (each
  stream ends with finish_reason "abort" and the partial tokens + logprobs), wait until all streams
  have ended, load, reset the prefix cache. Each interrupted sample resubmits prompt + partial
  tokens with the remaining budget (a re-prefill); resumed tokens carry the new version. A sample
  may be interrupted any number of times. Kept hand-rolled: vLLM's mode="abort" would not resubmit.
- `keep` (PipelineRL's in-flight update): `pause_generation(mode="keep", clear_cache=False)`
  freezes requests in the scheduler with their KV cache, load, `resume_generation()`: requests go
  on without a re-prefill, and tokens sampled after the resume carry the new version. The KV of
  the tokens before the resume was computed by older weights and is not recomputed, so a token
  after the resume is sampled from new weights attending to old keys and values: neither version's
  exact distribution (its behaviour logprob is the one it was sampled with; the decoupled loss
  corrects for it like any other behaviour policy). The prefix cache cannot be reset while paused
  requests hold blocks, so every request is salted with its submit version (`cache_salt`): a
  request never reuses KV cached under another version's salt.
- `wait` (baseline): `pause_generation(mode="wait")`: the engine finishes every request holding KV
  on the old weights and clears its caches; requests still queued run after the load.

`update_mode` may be changed between updates.

Behaviour logprobs are the engine's log-probability of each sampled token under the distribution it
was sampled from (after temperature and top-p: `logprobs_mode="processed_logprobs"`).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from areal_sys.config.episode import EpisodeConfig
from areal_sys.trajectory import Trajectory
from workers.engine_start import (
    PROJECT_ROOT,
    EngineNotStarted,
    configure_cpu_env,
    prepend_path,
    refuse_cpu_attention,
    start_engine,
)
from workers.episodes import Episodes, single_turn, turns
from workers.sampling import Sample, sampled_logprobs, sampling_params, token_versions
from workers.vllm_ext import EngineCounters

__all__ = ["RolloutWorker"]

WEIGHT_SYNC_EXTENSION = "workers.vllm_ext.WeightSyncExtension"
GIB = 1 << 30
UPDATE_MODES = ("abort", "keep", "wait")


class RolloutWorker:
    """Samples groups with vLLM; loads new weights by aborting, pausing or draining generation.

    `seed` seeds the engine's sampler: give every worker its own (the controller passes
    `seed + worker_id`), else workers sampling the same prompt draw the same responses.
    `update_mode` ("abort" | "keep" | "wait", see the module docstring) may change between updates.
    `engine_stats` turns on vLLM's per-iteration statistics to count prefills and preemptions
    (`stats()`; the tests and the update-mode benchmark read them); runs leave it off.
    """

    def __init__(
        self,
        model_path: str,
        *,
        worker_id: int = 0,
        seed: int = 0,
        dtype: str = "float32",
        max_model_len: int = 512,
        kv_cache_gib: float = 1.0,
        update_mode: str = "abort",
        enforce_eager: bool = True,
        gpu_memory_utilization: float = 0.85,
        engine_stats: bool = False,
        episode: dict[str, Any] | None = None,
    ) -> None:
        self.model_path = model_path
        self.worker_id = worker_id
        self.seed = seed
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.kv_cache_gib = kv_cache_gib
        if update_mode not in UPDATE_MODES:
            raise ValueError(f"update_mode must be one of {UPDATE_MODES}, got {update_mode!r}")
        self.update_mode = update_mode
        self.enforce_eager = enforce_eager
        self.gpu_memory_utilization = gpu_memory_utilization
        self._engine: Any = None
        self._version = 0
        self._tokens_generated = 0
        self._busy_s = 0.0  # seconds with at least one request in the engine
        self._busy_since = 0.0
        self._epoch = 0  # bumped by every update; a request seeing a new epoch was interrupted
        self._serial = 0
        self._inflight: set[str] = set()
        self._drained = asyncio.Event()
        self._drained.set()
        self._accepting = asyncio.Event()  # cleared while weights are being swapped
        self._accepting.set()
        self._update_lock = asyncio.Lock()
        self._broken: BaseException | None = None
        # vLLM's prefill and preemption counts: its per-iteration statistics, a cost on every
        # engine step, so only for the measurements that read them (tests, benchmarks)
        self._counters = EngineCounters() if engine_stats else None
        # multi-turn episodes (`rollout.episode`); bound to the engine's tokenizer in start()
        self._episodes = Episodes(episode) if EpisodeConfig(**(episode or {})).multi_turn \
            else None

    # ------------------------------------------------------------------ engine lifecycle
    async def start(self) -> None:
        """Build the AsyncLLM (spawns the engine process; ~20-40 s on CPU). Idempotent.

        Fails with an EngineStartError of one line naming the root cause
        (workers/engine_start.py): on CPU, before anything starts, for a model whose attention
        head size vLLM's CPU kernels lack."""
        if self._engine is not None:
            return
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform

        os.environ["PYTHONPATH"] = prepend_path(PROJECT_ROOT, os.environ.get("PYTHONPATH"))
        on_cpu = current_platform.is_cpu()
        if on_cpu:
            refuse_cpu_attention(self.model_path, self.worker_id)
            configure_cpu_env(self.worker_id, self.kv_cache_gib)
        args = AsyncEngineArgs(
            model=self.model_path,
            dtype=self.dtype,
            seed=self.seed,
            max_model_len=self.max_model_len,
            enforce_eager=self.enforce_eager,
            gpu_memory_utilization=self.gpu_memory_utilization,
            kv_cache_memory_bytes=int(self.kv_cache_gib * GIB) if on_cpu else None,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=WEIGHT_SYNC_EXTENSION,
            disable_log_stats=True,
        )
        loggers = [self._counters.stat_logger()] if self._counters is not None else None
        self._engine = start_engine(args, self.model_path, self.worker_id, stat_loggers=loggers)
        await self._engine.update_weight_version(str(self._version))  # labels every token
        if self._episodes is not None:
            self._episodes.bind(self._engine.get_tokenizer())

    async def shutdown(self) -> None:
        """Stop the engine process (call before `ray.shutdown()`, else /dev/shm segments leak)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()

    def _require_engine(self) -> Any:
        if self._engine is None:
            raise EngineNotStarted(f"rollout worker {self.worker_id}: call start() first")
        return self._engine

    # ------------------------------------------------------------------ generation
    async def generate_group(
        self,
        *,
        group_id: int,
        prompt_uid: str,
        prompt_ids: list[int],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        prefix_ids: list[int] | None = None,
        prefix_logprobs: list[float] | None = None,
        prefix_versions: list[int] | None = None,
    ) -> list[Trajectory]:
        """Sample `n` responses to `prompt_ids` (token ids, used as given) as n requests. The
        prompt's task data stays with the controller, which grades the decoded `response_text`.

        RPO: with `prefix_ids` (a cached response's first tokens, with their behaviour log-probs
        and versions) every sample continues prompt + prefix for at most `max_new_tokens` more
        tokens; the trajectory's response is prefix + suffix and `prefix_len` says where the
        suffix starts. The prefix's ids are used as given, never re-tokenised.

        `rollout.episode.kind` tool_use (or a plugin): each sample is an episode of turns and tool
        calls within `max_new_tokens` response tokens (areal_sys/episode.py, workers/episodes.py).
        """
        engine = self._require_engine()
        prefix = list(prefix_ids or [])
        prefix_lps = list(prefix_logprobs or [])
        prefix_vers = list(prefix_versions or [])
        if not len(prefix) == len(prefix_lps) == len(prefix_vers):
            raise ValueError(f"group {group_id}: prefix ids, log-probs and versions differ in "
                             f"length ({len(prefix)}, {len(prefix_lps)}, {len(prefix_vers)})")
        if n < 1 or max_new_tokens < 1 or not prompt_ids:
            raise ValueError(
                f"group {group_id}: need n >= 1, max_new_tokens >= 1 and a non-empty prompt "
                f"(n={n}, max_new_tokens={max_new_tokens}, prompt tokens={len(prompt_ids)})"
            )
        if len(prompt_ids) + len(prefix) + max_new_tokens > self.max_model_len:
            raise ValueError(
                f"group {group_id}: prompt ({len(prompt_ids)} tokens) + prefix ({len(prefix)}) "
                f"+ max_new_tokens ({max_new_tokens}) exceeds max_model_len {self.max_model_len}"
            )
        prompt_ids = list(prompt_ids)
        submit_time = time.time()
        self._serial += 1  # request ids stay unique even if a group id is reused
        rid = f"{self.worker_id}-{group_id}-{self._serial}"
        tokenizer = engine.get_tokenizer()
        if self._episodes is not None:  # multi-turn: each sample an episode
            episodes = await asyncio.gather(*(
                self._episodes.run(turns(self._sample, f"{rid}-{i}", temperature, top_p),
                                   prompt_ids, max_new_tokens) for i in range(n)))
            return [self._episodes.trajectory(e, prompt_uid=prompt_uid, group_id=group_id,
                                              prompt_ids=prompt_ids, submit_time=submit_time,
                                              worker_id=self.worker_id) for e in episodes]
        samples = await asyncio.gather(
            *(
                self._sample(f"{rid}-{i}", prompt_ids + prefix, max_new_tokens, temperature, top_p)
                for i in range(n)
            )
        )
        return [single_turn(s, prefix=prefix, prefix_logprobs=prefix_lps,
                            prefix_versions=prefix_vers,
                            text=tokenizer.decode(prefix + s.tokens, skip_special_tokens=True),
                            prompt_uid=prompt_uid, group_id=group_id,
                            prompt_ids=list(prompt_ids), submit_time=submit_time,
                            worker_id=self.worker_id)
                for s in samples]

    async def _sample(
        self, rid: str, prompt_ids: list[int], max_new_tokens: int, temperature: float,
        top_p: float, stop_ids: list[int] | None = None,
    ) -> Sample:
        """Generate one response, resubmitting prompt + partial tokens after each interruption."""
        s = Sample()
        while True:
            while not self._accepting.is_set():  # a weight update is in progress
                await self._accepting.wait()
            if self._broken is not None:
                raise RuntimeError("rollout engine unusable after a failed weight load") from (
                    self._broken
                )
            # No await between the gate check and registering in _inflight: an update either
            # sees this request in _inflight or happens entirely before it is submitted.
            epoch, salt = self._epoch, f"v{self._version}"
            req_id = f"{rid}-{s.num_interrupts}"
            params = sampling_params(max_new_tokens - len(s.tokens), temperature, top_p,
                                     stop_ids)
            if not self._inflight:
                self._busy_since = time.perf_counter()
            self._inflight.add(req_id)
            self._drained.clear()
            finish: str | None = None
            first = len(s.tokens)  # this request's output tokens start here
            try:
                prompt = {"prompt_token_ids": prompt_ids + s.tokens, "cache_salt": salt}
                async for out in self._engine.generate(prompt, params, req_id):
                    completion = out.outputs[0]
                    new = list(completion.token_ids)
                    s.logprobs += sampled_logprobs(req_id, new, completion.logprobs)
                    s.tokens += new
                    self._tokens_generated += len(new)
                    if out.finished:
                        finish = completion.finish_reason
                        s.versions += token_versions(req_id, completion.weight_versions,
                                                      len(s.tokens) - first)
                    elif self.update_mode == "abort" and self._epoch != epoch:
                        # submitted while an update's abort was being sent: stop it ourselves
                        await self._engine.abort(req_id)
            finally:
                self._inflight.discard(req_id)
                if not self._inflight:
                    self._busy_s += time.perf_counter() - self._busy_since
                    self._drained.set()
            interrupted = finish == "abort" and self._epoch != epoch
            if interrupted and len(s.tokens) < max_new_tokens:
                s.num_interrupts += 1
                continue
            s.finish_reason = "length" if interrupted else (finish or "abort")
            s.finish_time = time.time()
            return s

    # ------------------------------------------------------------------ weights
    async def init_weight_group(
        self, host: str, port: int, rank: int, world_size: int, meta: list[Any],
        bucket_bytes: int, backend: str, timeout_s: float = 1800.0,
    ) -> bool:
        """Join the `collective` weight-sync group as `rank` (trainer rank 0 joins at the same
        time). `meta` = (name, shape, dtype) of every weight, sent only here."""
        engine = self._require_engine()
        await engine.collective_rpc(
            "init_weight_group",
            args=(host, port, rank, world_size, meta, bucket_bytes, backend, timeout_s),
        )
        return True

    async def update_weights(self, path: str | None, version: int) -> dict[str, float | int]:
        """Load new weights as policy `version` in the worker's `update_mode`: from the HF-named
        safetensors file at `path` (`shm_file`), or, with `path=None`, from the trainer's
        broadcast on the weight-sync group (`collective`; trainer rank 0 sends concurrently).

        Returns seconds spent stopping generation (`drain_s`: aborting, pausing or draining), in
        the engine's reload (`reload_s`), loading incl. cache handling (`load_s`), overall
        (`total_s`), the requests aborted (`interrupted`, abort mode) and kept in place (`kept`,
        keep mode; both counted among this worker's in-flight requests), the new `version`, and
        the worker's `stats()` as the call arrived (`tokens_generated`, `busy_s`): the
        controller's per-step generation figures, without a separate call to every engine.
        """
        engine = self._require_engine()
        arrived = await self.stats()
        async with self._update_lock:
            mode = self.update_mode
            t0 = time.perf_counter()
            self._accepting.clear()
            self._epoch += 1
            interrupted = kept = 0
            paused = False
            try:
                if mode == "abort":
                    if self._inflight:
                        ids = sorted(self._inflight)
                        interrupted = len(ids)
                        await engine.abort(ids)
                    while self._inflight:
                        await self._drained.wait()
                else:  # the engine holds (keep) or finishes (wait) what it has; adds queue
                    kept = len(self._inflight) if mode == "keep" else 0
                    paused = True
                    # keep must not clear the cache: vLLM would preempt every running request
                    # (reset_running_requests=True) and recompute its KV, i.e. re-prefill it
                    await engine.pause_generation(mode=mode, clear_cache=mode == "wait")
                t1 = time.perf_counter()
                try:
                    if path is None:
                        results = await engine.collective_rpc("receive_weights")
                    else:
                        results = await engine.collective_rpc(
                            "load_weights_from_file", args=(path,))
                    # keep: paused requests hold blocks, so the reset would fail; the per-version
                    # cache salt keeps old KV from new requests instead
                    if mode == "abort" and not await engine.reset_prefix_cache():
                        raise RuntimeError("prefix cache reset failed: requests still hold KV")
                    await engine.update_weight_version(str(version))
                except BaseException as exc:  # weights may be half-loaded: refuse to sample
                    self._broken = exc
                    if self._inflight:  # kept or queued requests must not run on them
                        await engine.abort(sorted(self._inflight))
                    raise
                t2 = time.perf_counter()
                self._version = version
            finally:
                if paused:
                    await engine.resume_generation()
                self._accepting.set()
            return {
                "version": version,
                "interrupted": interrupted,
                "kept": kept,
                "drain_s": t1 - t0,
                "reload_s": max(r["reload_s"] for r in results),
                "load_s": t2 - t1,
                "total_s": t2 - t0,
                **arrived,
            }

    async def tokens_generated(self) -> int:
        """Tokens generated so far (monotonic, counted as they stream, partial ones included)."""
        return self._tokens_generated

    async def stats(self) -> dict[str, float]:
        """`tokens_generated`; `busy_s`: seconds so far with at least one request in the engine
        (generation time; idle time = wall time − busy_s); with `engine_stats`, vLLM's own
        `prefill_tokens`, `cached_prompt_tokens` and `preemptions` (vllm_ext.EngineCounters): an
        abort-mode update re-prefills what it interrupts, a keep-mode update does not."""
        busy = self._busy_s
        if self._inflight:
            busy += time.perf_counter() - self._busy_since
        out = {"tokens_generated": float(self._tokens_generated), "busy_s": busy}
        if (c := self._counters) is not None:
            out |= {"prefill_tokens": float(c.prefill_tokens),
                    "cached_prompt_tokens": float(c.cached_prompt_tokens),
                    "preemptions": float(c.preemptions)}
        return out

    async def get_version(self) -> int:
        """Policy version of the loaded weights."""
        return self._version
