"""The reward service: asynchronous scoring with per-sample timeouts, isolation and a result cache.

`RewardService` is a plain class with async methods; the controller wraps it as an async Ray actor
(`ray.remote(RewardService)`). `score` never raises: every item gets a `RewardResult`, failures
included (`ok=False` with a one-line `reason`).

Configuration: one `RewardConfig` (areal_sys/config/reward.py), the `reward` section of a run
and the flags of `areal-sys reward-serve` alike: `RewardService(cfg)`, or keyword overrides of
its fields (`RewardService(timeout_s=2.0)`), validated the same way.

How grading runs
- Every grader runs in a grader subprocess (`num_procs` of them, started on first use), never in
  the caller's process, so a hung or crashing grader (a sympy power tower, a plugin that loops)
  is killed without harming the service. The subprocess imports `reward_service.graders` and the
  plugins its owner registered (`cfg.graders`), nothing an item names.
- An item's `task` must be a registered grader (`cfg.grader_names()`); anything else is a failed
  result naming them. A JSON-object `reference` is serialised canonically (sorted keys).
- Items wait in one FIFO queue. A process takes up to `max_concurrency // num_procs` queued items
  per round-trip (one JSON line in, one JSON line out per item), so a cheap grader such as
  `synthetic` costs one pipe round-trip per batch, not per item. At most `max_concurrency`
  items are inside grader processes at any time; the rest wait (backpressure, no sleeps).
- Per-item timeout: `timeout_s` of the service, or an item's own `"timeout_s"` clamped to
  `[min_item_timeout_s, max_item_timeout_s]`. An item's clock starts when the process starts on
  it (the previous item's result arrived). Past it the process is killed, the item gets
  `reason="timeout"` and `wrong_reward`, a replacement process starts and the rest of that batch
  is sent to it. A process that dies mid-item (an infrastructure failure, not a timeout) is
  replaced and the item is retried up to `retries` times before it fails.
- Results with `ok=True` are kept in an LRU cache keyed by a hash of (task, response,
  reference); a timeout or any other failure is never cached. Identical items in flight at the
  same time are graded once, but only when their effective timeouts are equal: one caller's
  short limit never fails another caller's item.
- A caller that is cancelled (an HTTP client that hung up) stops waiting; its queued items that
  no other caller waits for are dropped before a grader process sees them (`dropped`).

`elapsed_s`: seconds the grader spent on the item (0.0 for a cache hit; the time waited for a
timeout or a crash). Processes are bound to the event loop that started them; calling `score`
from a new loop (e.g. repeated `asyncio.run`) restarts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from typing import Any

from areal_sys.config.reward import RewardConfig
from areal_sys.data.loading import canonical_reference
from reward_service.grader_process import MAX_REASON_CHARS, GraderProcess, ProcessDied
from reward_service.graders import GraderSettings, one_line
from reward_service.sandbox import SAFE_MODES, UNCONTAINED, detect_mode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardResult:
    """Outcome of grading one item. `reason` is "" when ok, else one line saying what failed."""

    reward: float
    ok: bool
    reason: str
    elapsed_s: float


@dataclass(eq=False)
class _Job:
    key: str  # cache key: (task, response, reference)
    task: str
    response: str
    reference: str
    future: asyncio.Future[RewardResult]
    timeout_s: float
    attempts: int = 0
    waiters: int = 0  # callers waiting on `future`; 0 before it started: dropped
    started: bool = False

    @property
    def inflight_key(self) -> tuple[str, float]:
        return self.key, self.timeout_s


class RewardService:
    """Scores items `{"task", "response", "reference", "timeout_s"?}` with registered graders.

    cfg: the service's `RewardConfig` (default: the defaults); keyword overrides replace its
    fields. A bad setting raises pydantic's ValidationError (a ValueError) here, at start-up.
    """

    def __init__(self, cfg: RewardConfig | None = None, /, **overrides: Any) -> None:
        base = (cfg or RewardConfig()).model_dump()
        self.cfg = RewardConfig.model_validate({**base, **overrides})
        c = self.cfg
        self.timeout_s = c.timeout_s
        self.correct_reward = c.correct_reward
        self.wrong_reward = c.wrong_reward
        self.num_procs = min(c.num_procs, c.max_concurrency)
        self.batch_size = max(1, c.max_concurrency // self.num_procs)
        self.cache_size = c.cache_size
        self.grader_names = c.grader_names()
        self._known = frozenset(self.grader_names)
        self._settings_json = json.dumps(asdict(GraderSettings(**c.grader_settings())))
        self.sandbox_mode = detect_mode()  # probed once per process, logged; graders inherit it
        if self.sandbox_mode not in SAFE_MODES:
            allowed = "runs programs anyway (allow_unsafe_sandbox)" if c.allow_unsafe_sandbox \
                else "refuses to run programs (allow_unsafe_sandbox is off)"
            log.warning("reward sandbox %r does not contain hostile code (%s); the code grader "
                        "%s", self.sandbox_mode, UNCONTAINED[self.sandbox_mode], allowed)
        self._cache: OrderedDict[str, RewardResult] = OrderedDict()
        self._inflight: dict[tuple[str, float], _Job] = {}
        self._queue: asyncio.Queue[_Job] | None = None
        self._servers: list[asyncio.Task[None]] = []
        self._procs: dict[int, GraderProcess] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.stats = {"graded": 0, "cache_hits": 0, "timeouts": 0, "errors": 0, "restarts": 0,
                      "retries": 0, "dropped": 0}

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
        for job in self._inflight.values():
            if not job.future.done():
                job.future.set_result(self._fail("reward service is shut down"))
        self._inflight.clear()

    def cache_info(self) -> dict[str, int]:
        """Counters: graded, cache_hits, timeouts, errors, restarts, retries, dropped, plus the
        cache's size and the items queued or being graded."""
        return {**self.stats, "cache_entries": len(self._cache), "inflight": len(self._inflight)}

    def check_item(self, item: Any) -> str | None:
        """Why `item` cannot be graded (one line), or None. Unknown tasks included."""
        return _check_item(item, self._known, self.grader_names)

    # ----------------------------------------------------------------------------------------
    # scheduling

    async def _score(self, items: list[dict]) -> list[RewardResult]:
        if not isinstance(items, list):
            raise TypeError(f"items must be a list of dicts, got {type(items).__name__}")
        results: list[RewardResult | None] = [None] * len(items)
        if self._closed:
            return [self._fail("reward service is shut down") for _ in items]
        self._ensure_started()
        assert self._queue is not None
        waits: list[tuple[int, _Job]] = []
        for i, item in enumerate(items):
            bad = self.check_item(item)
            if bad:
                results[i] = self._fail(bad)
                continue
            try:
                reference = canonical_reference(item["reference"])
            except (ValueError, TypeError, RecursionError) as e:
                results[i] = self._fail(f"bad item: reference is not plain JSON: {one_line(e)}")
                continue
            key = _cache_key(item["task"], item["response"], reference)
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.stats["cache_hits"] += 1
                results[i] = replace(hit, elapsed_s=0.0)
                continue
            timeout = self.cfg.clamp_timeout(float(item.get("timeout_s") or self.timeout_s))
            job = self._inflight.get((key, timeout))
            if job is None:
                fut = asyncio.get_running_loop().create_future()
                job = _Job(key, item["task"], item["response"], reference, fut, timeout)
                self._inflight[job.inflight_key] = job
                self._queue.put_nowait(job)
            job.waiters += 1
            waits.append((i, job))
        pending = [job for _, job in waits]
        try:
            for i, job in waits:
                # shield: a cancelled caller must not cancel a future other callers share
                results[i] = await asyncio.shield(job.future)
                pending.remove(job)
                job.waiters -= 1
        finally:
            for job in pending:  # cancelled (a client hung up): let go of what it waited for
                self._release(job)
        return results  # type: ignore[return-value]

    def _release(self, job: _Job) -> None:
        """One caller stops waiting on `job`; a queued job nobody waits for is dropped."""
        job.waiters -= 1
        if job.waiters <= 0 and not job.started and not job.future.done():
            job.future.cancel()
            if self._inflight.get(job.inflight_key) is job:
                del self._inflight[job.inflight_key]
            self.stats["dropped"] += 1

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
                batch = [job for job in [await self._queue.get()] if not job.future.done()]
                while len(batch) < self.batch_size and not self._queue.empty():
                    job = self._queue.get_nowait()
                    if not job.future.done():  # done: dropped (its callers hung up)
                        batch.append(job)
                if not batch:
                    continue
                for job in batch:
                    job.started = True
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
                proc = await GraderProcess.start(self.cfg.memory_limit_mb,
                                                  self.cfg.start_timeout_s, self._settings_json)
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
                if not timed_out and job.attempts < self.cfg.retries:
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
        if self._inflight.get(job.inflight_key) is job:
            del self._inflight[job.inflight_key]
        if result.ok and self.cache_size > 0:
            self._cache[job.key] = result
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        if not job.future.done():
            job.future.set_result(result)

    def _fail(self, reason: str, elapsed_s: float = 0.0) -> RewardResult:
        return RewardResult(self.wrong_reward, False, reason[:MAX_REASON_CHARS], elapsed_s)


def _check_item(item: Any, known: frozenset[str], names: list[str]) -> str | None:
    if not isinstance(item, dict):
        return f"bad item: expected a dict, got {type(item).__name__}"
    for field in ("task", "response"):
        if not isinstance(item.get(field), str):
            got = type(item.get(field)).__name__ if field in item else "missing"
            return f"bad item: field {field!r} must be a string ({got})"
    if item["task"] not in known:
        return f"unknown task {item['task'][:80]!r}: registered graders are {names}"
    ref = item.get("reference")
    if not isinstance(ref, str | dict):
        got = type(ref).__name__ if "reference" in item else "missing"
        return f"bad item: field 'reference' must be a string or a JSON object ({got})"
    t = item.get("timeout_s")
    if t is not None and (isinstance(t, bool) or not isinstance(t, int | float)
                          or not 0 < t < math.inf):
        return f"bad item: timeout_s must be a finite number of seconds > 0 ({t!r})"
    return None


def _cache_key(task: str, response: str, reference: str) -> str:
    return hashlib.sha256(json.dumps([task, response, reference]).encode()).hexdigest()
