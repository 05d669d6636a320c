"""The reward service: asynchronous scoring with per-sample timeouts, isolation and a result cache.

`RewardService` is a plain class with async methods; the controller wraps it as an async Ray actor
(`ray.remote(RewardService)`). `score` never raises: every item gets a `RewardResult`, failures
included (`ok=False` with a one-line `reason`).

How grading runs
- Every grader runs in a grader subprocess (`num_procs` of them, started on first use), never in
  the caller's process, so a hung or crashing grader (a sympy power tower, a plugin that loops)
  is killed without harming the service. The subprocess imports only `reward_service.graders` and
  the plugins that items name (`module:function`).
- Items wait in one FIFO queue. A process takes up to `max_concurrency // num_procs` queued items
  per round-trip (one JSON line in, one JSON line out per item), so a cheap grader such as
  `synthetic` costs one pipe round-trip per batch, not per item. At most `max_concurrency`
  items are inside grader processes at any time; the rest wait (backpressure, no sleeps).
- Per-item timeout: `timeout_s` of the service, or an item's own `"timeout_s"` (at most
  `max_item_timeout_s`). An item's clock starts when the process starts on it (the previous item's
  result arrived). Past `timeout_s` the process is killed, the item gets `reason="timeout"` and
  `wrong_reward`, a replacement process starts and the rest of that batch is sent to it.
  A process that dies mid-item (an infrastructure failure, not a timeout) is replaced and the
  item is retried up to `retries` times before it fails ("grader process died ...").
- Results with `ok=True` are kept in an LRU cache keyed by a hash of (task, response,
  reference); identical items in flight at the same time are graded once.

`elapsed_s`: seconds the grader spent on the item (0.0 for a cache hit; the time waited for a
timeout or a crash). Processes are bound to the event loop that started them; calling `score`
from a new loop (e.g. repeated `asyncio.run`) restarts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from typing import Any

from reward_service.grader_process import MAX_REASON_CHARS, GraderProcess, ProcessDied
from reward_service.graders import GraderSettings, one_line
from reward_service.sandbox import detect_mode


@dataclass(frozen=True)
class RewardResult:
    """Outcome of grading one item. `reason` is "" when ok, else one line saying what failed."""

    reward: float
    ok: bool
    reason: str
    elapsed_s: float


@dataclass
class _Job:
    key: str
    task: str
    response: str
    reference: str
    future: asyncio.Future[RewardResult]
    timeout_s: float
    attempts: int = 0


class RewardService:
    """Scores items `{"task", "response", "reference"}` with registered graders (see module doc).

    timeout_s: per-item wall-clock limit. max_concurrency: items inside grader processes at once.
    num_procs: grader subprocesses. cache_size: LRU entries (0: off). memory_limit_mb: address
    space limit of each grader process (None: none). start_timeout_s: limit for a grader process
    to start and import its graders. retries: re-runs of an item whose grader process died
    (timeouts are never retried). grader_settings: `GraderSettings` fields for the built-ins.
    """

    def __init__(
        self,
        *,
        timeout_s: float = 5.0,
        max_concurrency: int = 8,
        correct_reward: float = 1.0,
        wrong_reward: float = 0.0,
        num_procs: int = 1,
        cache_size: int = 4096,
        memory_limit_mb: int | None = 4096,
        start_timeout_s: float = 60.0,
        retries: int = 1,
        max_item_timeout_s: float = 600.0,
        grader_settings: dict[str, Any] | None = None,
    ) -> None:
        if timeout_s <= 0 or max_concurrency < 1 or num_procs < 1 or cache_size < 0:
            raise ValueError(
                "need timeout_s > 0, max_concurrency >= 1, num_procs >= 1 and cache_size >= 0"
            )
        self.timeout_s = timeout_s
        self.correct_reward = float(correct_reward)
        self.wrong_reward = float(wrong_reward)
        self.num_procs = min(num_procs, max_concurrency)
        self.batch_size = max(1, max_concurrency // self.num_procs)
        self.cache_size = cache_size
        self.memory_limit_mb = memory_limit_mb
        self.start_timeout_s = start_timeout_s
        self.retries = max(0, retries)
        self.max_item_timeout_s = max_item_timeout_s
        # validated here, so that a bad setting fails at start-up, not in every grader process
        self._settings_json = json.dumps(asdict(GraderSettings(**(grader_settings or {}))))
        self.sandbox_mode = detect_mode()  # probed once per process, logged; graders inherit it
        self._cache: OrderedDict[str, RewardResult] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[RewardResult]] = {}
        self._queue: asyncio.Queue[_Job] | None = None
        self._servers: list[asyncio.Task[None]] = []
        self._procs: dict[int, GraderProcess] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.stats = {"graded": 0, "cache_hits": 0, "timeouts": 0, "errors": 0, "restarts": 0,
                      "retries": 0}

    # ----------------------------------------------------------------------------------------
    # public API

    async def score(self, items: list[dict]) -> list[RewardResult]:
        """One result per item, in order. Never raises (except on cancellation)."""
        try:
            return await self._score(items)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the contract: failures are results
            n = len(items) if isinstance(items, list) else 0
            return [self._fail(f"reward service error: {one_line(e)}") for _ in range(n)]

    async def shutdown(self) -> None:
        """Stop the grader processes; later `score` calls return ok=False results."""
        self._closed = True
        procs = list(self._procs.values())
        self._procs.clear()
        for task in self._servers:
            task.cancel()
        for task in self._servers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._servers.clear()
        for proc in procs:
            await proc.kill()
        for fut in self._inflight.values():
            if not fut.done():
                fut.set_result(self._fail("reward service is shut down"))
        self._inflight.clear()

    def cache_info(self) -> dict[str, int]:
        """Counters: graded, cache_hits, timeouts, errors, restarts, plus the cache's size."""
        return {**self.stats, "cache_entries": len(self._cache)}

    # ----------------------------------------------------------------------------------------
    # scheduling

    async def _score(self, items: list[dict]) -> list[RewardResult]:
        if not isinstance(items, list):
            raise TypeError(f"items must be a list of dicts, got {type(items).__name__}")
        results: list[RewardResult | None] = [None] * len(items)
        if self._closed:
            return [self._fail("reward service is shut down") for _ in items]
        self._ensure_started()
        waits: list[tuple[int, asyncio.Future[RewardResult]]] = []
        for i, item in enumerate(items):
            bad = _check_item(item, self.max_item_timeout_s)
            if bad:
                results[i] = self._fail(bad)
                continue
            key = _cache_key(item["task"], item["response"], item["reference"])
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.stats["cache_hits"] += 1
                results[i] = replace(hit, elapsed_s=0.0)
                continue
            fut = self._inflight.get(key)
            if fut is None:
                fut = asyncio.get_running_loop().create_future()
                self._inflight[key] = fut
                timeout = float(item.get("timeout_s") or self.timeout_s)
                job = _Job(key, item["task"], item["response"], item["reference"], fut, timeout)
                self._queue.put_nowait(job)
            waits.append((i, fut))
        for i, fut in waits:
            # shield: a cancelled caller must not cancel a future other callers share
            results[i] = await asyncio.shield(fut)
        return results  # type: ignore[return-value]

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        for proc in self._procs.values():  # processes of a previous (finished) event loop
            proc.kill_nowait()
        self._procs.clear()
        self._inflight.clear()
        self._loop = loop
        self._queue = asyncio.Queue()
        self._servers = [loop.create_task(self._serve(slot)) for slot in range(self.num_procs)]

    async def _serve(self, slot: int) -> None:
        """Feed one grader process: take a batch from the queue, grade it, repeat."""
        assert self._queue is not None
        try:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < self.batch_size and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                try:
                    while batch:
                        batch = await self._run_batch(slot, batch)
                except Exception as e:  # noqa: BLE001 - a bug must not strand waiting callers
                    proc = self._procs.pop(slot, None)
                    if proc is not None:
                        await proc.kill()
                    for job in batch:
                        self._finish(job, self._fail(f"reward service error: {one_line(e)}"))
        finally:  # cancelled: shutdown() or the end of asyncio.run()
            proc = self._procs.pop(slot, None)
            if proc is not None:
                await proc.kill()

    async def _run_batch(self, slot: int, batch: list[_Job]) -> list[_Job]:
        """Grade `batch` on the slot's process; return the jobs left ungraded by a kill."""
        proc = self._procs.get(slot)
        fresh = proc is None or not proc.alive
        try:
            if fresh:
                if proc is not None:
                    self.stats["restarts"] += 1
                proc = await GraderProcess.start(self.memory_limit_mb, self.start_timeout_s,
                                                  self._settings_json)
                self._procs[slot] = proc
        except ProcessDied as e:
            self._procs.pop(slot, None)
            for job in batch:
                self._finish(job, self._fail(str(e)))
            return []
        try:
            await proc.send(batch)
        except ProcessDied as e:
            self._procs.pop(slot, None)
            if not fresh:  # it died while idle: retry the whole batch on a new process
                return batch
            self._finish(batch[0], self._fail(str(e)))
            return batch[1:]
        for i, job in enumerate(batch):
            t0 = time.perf_counter()
            try:
                msg = await proc.receive(job.timeout_s)
            except (TimeoutError, ProcessDied) as e:
                timed_out = isinstance(e, TimeoutError)
                await proc.kill()
                self._procs.pop(slot, None)
                self.stats["restarts"] += 1
                if not timed_out and job.attempts < self.retries:
                    job.attempts += 1
                    self.stats["retries"] += 1
                    return batch[i:]  # the same item again, on a fresh process
                self.stats["timeouts" if timed_out else "errors"] += 1
                reason = "timeout" if timed_out else str(e)
                self._finish(job, self._fail(reason, time.perf_counter() - t0))
                return batch[i + 1 :]
            self._finish(job, self._to_result(msg))
        return []

    def _to_result(self, msg: dict[str, Any]) -> RewardResult:
        elapsed = float(msg.get("s", 0.0))
        if "error" in msg:
            self.stats["errors"] += 1
            return self._fail(str(msg["error"]), elapsed)
        self.stats["graded"] += 1
        value = msg["value"]
        if isinstance(value, bool):
            value = self.correct_reward if value else self.wrong_reward
        return RewardResult(float(value), True, "", elapsed)

    def _finish(self, job: _Job, result: RewardResult) -> None:
        self._inflight.pop(job.key, None)
        if result.ok and self.cache_size > 0:
            self._cache[job.key] = result
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        if not job.future.done():
            job.future.set_result(result)

    def _fail(self, reason: str, elapsed_s: float = 0.0) -> RewardResult:
        return RewardResult(self.wrong_reward, False, reason[:MAX_REASON_CHARS], elapsed_s)


def _check_item(item: Any, max_timeout_s: float) -> str | None:
    if not isinstance(item, dict):
        return f"bad item: expected a dict, got {type(item).__name__}"
    for field in ("task", "response", "reference"):
        if not isinstance(item.get(field), str):
            got = type(item.get(field)).__name__ if field in item else "missing"
            return f"bad item: field {field!r} must be a string ({got})"
    t = item.get("timeout_s")
    if t is not None and (isinstance(t, bool) or not isinstance(t, int | float)
                          or not 0 < t <= max_timeout_s):
        return f"bad item: timeout_s must be a number in (0, {max_timeout_s:g}] ({t!r})"
    return None


def _cache_key(task: str, response: str, reference: str) -> str:
    return hashlib.sha256(json.dumps([task, response, reference]).encode()).hexdigest()
