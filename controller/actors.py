"""Typed clients of the run's actors: every call the controller makes to another process.

- `RolloutPool`: the RolloutWorker engines (workers/rollout.py): `generate_group`,
  `update_weights`, `stats`, with load-based routing and worker recovery (below).
- `Reward`: the reward actor's `score`, retried after the actor died and was restarted.
- `Trainers`: the trainer ranks (workers/trainer.py) and the critic (workers/critic.py):
  `train`, weight export/broadcast, checkpoint save/load. A dead rank stops the run (`TrainerDied`).

Worker recovery. Ray restarts a dead RolloutWorker or reward actor in place (`max_restarts` =
`controller.max_worker_restarts`, set in controller/runtime.py), re-running its constructor; the
actor handle stays valid. Then:

- rollout worker: its engine is started again and loads the weights of the current version:
  from the last exported file (`shm_file` sync), or (`collective`) through a new weight-sync group
  with trainer rank 0 and a broadcast to it alone (`rejoin`, given by the controller, run under
  `weights_lock` so that the trainer's weights are the controller's current version). Then every
  call that failed because of the death is sent again to the restarted actor: a re-sent group
  keeps its number, admit version and deadline; its tokens are generated anew. A call that
  reaches the restarted actor before its engine was started again (EngineNotStarted,
  workers/engine_start.py) counts as that death too. A group the controller routed (not one
  pinned to the worker, as evaluation's) is sent at once to a live worker when there is one,
  while the restart goes on; a restart nobody waits for that fails stops the run at the next call.
  A `collective` sync does not wait for a dead
  worker: the others receive every bucket (one group per engine, workers/weight_sync.py) and the
  dead one loads the weights when it rejoins. Ray re-places a worker whose node was lost on a
  node that can host it; that is bounded by `controller.restart_timeout_s` (PeerTimedOut when
  no node can).
- reward actor: the scoring call is sent again.

Each death and restart is a line in `RUN_DIR/events.jsonl`. Past the restart limit (Ray gives up
on the actor) the run stops. A dead trainer rank stops the run at once (`TrainerDied`), with the
command that resumes it from the last checkpoint.

Handles are Ray actor handles (`handle.method.remote(...)` returns an awaitable ObjectRef); the
tests drive these clients with fakes of the same shape (tests/controller/fakes.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from areal_sys.algorithms.rpo import PartialPlan
from areal_sys.console import error_line
from areal_sys.metrics import JsonlWriter
from areal_sys.trajectory import Prompt, Trajectory


class TrainerDied(RuntimeError):
    """A trainer rank (or the critic) died: the run cannot continue without a resume."""


class PeerTimedOut(RuntimeError):
    """A call to other processes did not finish within its limit (`controller.*_timeout_s`): a
    worker, or its whole node, vanished where nothing else would notice (e.g. inside a
    collective). The run stops with the resume command."""


async def bounded(call: Awaitable[Any], timeout_s: float, what: str, setting: str,
                  events: Events) -> Any:
    """`await call`, for at most `timeout_s` seconds; past that an event `timeout` and
    PeerTimedOut naming `what` and the `setting` that bounds it."""
    try:
        return await asyncio.wait_for(call, timeout_s)
    except TimeoutError:
        events("timeout", what=what, limit_s=timeout_s, setting=setting)
        raise PeerTimedOut(f"{what} did not finish within {setting}={timeout_s:g} s (a worker, "
                           "or its node, may have vanished)") from None


def _actor_error() -> type[BaseException]:
    from ray.exceptions import RayActorError

    return RayActorError


def _restarted_unstarted(err: BaseException) -> bool:
    """A call answered by a worker Ray restarted but the controller has not started again."""
    from workers.engine_start import EngineNotStarted

    return isinstance(getattr(err, "cause", None), EngineNotStarted)


def _is_death(err: BaseException) -> bool:
    """The worker died: Ray says so, or the restarted actor answered before its engine was
    started again (the death's other calls may not have failed yet)."""
    return isinstance(err, _actor_error()) or _restarted_unstarted(err)


async def _once_restarted(call: Callable[[], Any], timeout_s: float = 600.0) -> Any:
    """`await call()` on an actor Ray is restarting. A call sent while the restart is under way
    may fail with ActorUnavailableError ("the actor is restarting"), a transient answer: it is
    sent again, with backoff, for up to `timeout_s`. A dead actor (restart limit reached) fails at
    once (ActorDiedError), as does any other error."""
    from ray.exceptions import ActorUnavailableError

    deadline = time.monotonic() + timeout_s
    delay_s = 0.5
    while True:
        try:
            return await call()
        except ActorUnavailableError:
            if time.monotonic() + delay_s > deadline:
                raise
            await asyncio.sleep(delay_s)
            delay_s = min(2 * delay_s, 5.0)


class _Rerouted(Exception):
    """A group's worker died while another is up: the group is sent to a live worker."""


class Events:
    """`RUN_DIR/events.jsonl` (worker deaths, restarts, re-sent groups), each also printed; the
    file is created by the first event."""

    def __init__(self, path: Path, version: Callable[[], int]) -> None:
        self.path = path
        self._writer: JsonlWriter | None = None
        self._version = version
        self.restarts = 0  # actor deaths recovered from (rollout and reward)

    def __call__(self, event: str, **fields: Any) -> None:
        if self._writer is None:
            self._writer = JsonlWriter(self.path)
        self._writer.write({"time": time.time(), "event": event, "version": self._version(),
                            **fields})
        print(f"[{event}] " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)


class RolloutPool:
    """The rollout workers, called by verb; calls survive a worker's death (module doc)."""

    def __init__(self, handles: Sequence[Any], *, weight_sync: str, events: Events,
                 rejoin: Callable[[int], Awaitable[None]] | None = None,
                 restart_timeout_s: float = 600.0) -> None:
        self.handles = list(handles)
        self.weight_sync = weight_sync
        self.events = events
        self.rejoin = rejoin  # collective sync: a restarted worker's new group and weights
        self.restart_timeout_s = restart_timeout_s
        # held from a step's training to the end of its weight sync (controller.py): a rejoin
        # then sees the trainer's weights at the controller's version
        self.weights_lock = asyncio.Lock()
        self.out: set[int] = set()  # collective: dead workers not yet back in the sync groups
        self.failed: BaseException | None = None  # a restart that failed (`_recovery`)
        self.load = [0] * len(self.handles)  # groups in flight per worker
        self._incarnation = [0] * len(self.handles)
        self._recovering: dict[int, asyncio.Future[None]] = {}
        self._weights_file: tuple[str, int] | None = None  # (path, version) of the last export

    def __len__(self) -> int:
        return len(self.handles)

    async def generate_group(self, prompt: Prompt, *, group_id: int, n: int, max_new_tokens: int,
                             temperature: float, top_p: float = 1.0,
                             plan: PartialPlan | None = None,
                             worker: int | None = None) -> list[Trajectory]:
        """`n` responses to `prompt` (continuing `plan`'s prefix, RPO) on `worker`, or on the
        worker with the fewest groups in flight."""
        kw: dict[str, Any] = {
            "group_id": group_id, "prompt_uid": prompt.uid, "prompt_ids": prompt.ids, "n": n,
            "max_new_tokens": plan.budget if plan is not None else max_new_tokens,
            "temperature": temperature, "top_p": top_p}
        if plan is not None:
            kw.update(prefix_ids=plan.prefix_ids, prefix_logprobs=plan.prefix_logprobs,
                      prefix_versions=plan.prefix_versions)
        while True:
            self._raise_failed_recovery()
            i = self._route() if worker is None else worker
            self.load[i] += 1
            try:
                return await self._call(i, lambda w: w.generate_group.remote(**kw), group_id,
                                        reroute=worker is None)
            except _Rerouted:  # its worker died and another is up: sent there at once
                self.events("group_resent", worker=self._route(), group_id=group_id,
                            dead_worker=i)
            finally:
                self.load[i] -= 1

    def _route(self) -> int:
        """The worker with the fewest groups in flight among those not being recovered (all of
        them when every one is)."""
        up = [i for i in range(len(self.handles)) if i not in self._recovering]
        return min(up or range(len(self.handles)), key=self.load.__getitem__)

    def _raise_failed_recovery(self) -> None:
        """A recovery nobody waited for (its groups went elsewhere) that failed stops the run at
        the next call."""
        if self.failed is not None:
            raise self.failed

    async def update_weights(self, path: str | None, version: int,
                             only: list[int] | None = None) -> list[dict[str, float]]:
        """Every worker loads `version` (from the file at `path`, or the trainer's broadcast when
        `path` is None: the workers in `only`, default `live()`); each returns its load figures
        and generation counters ({} from a worker that died meanwhile)."""
        self._raise_failed_recovery()
        if path is None:  # collective: the live workers (`live()` as the trainer sends)
            live = self.live() if only is None else only
            return list(await asyncio.gather(*[self._receive(i, version) for i in live]))
        self._weights_file = (path, version)  # what a restarted worker loads
        return list(await asyncio.gather(*[self._load(i, path, version)
                                           for i in range(len(self.handles))]))

    async def _load(self, i: int, path: str, version: int) -> dict[str, Any]:
        """Worker i loads the file; {} if it is dead or being restarted: its restart loads the
        newest file (`_weights_file`), and the sync does not wait for it."""
        if i in self._recovering:
            return {}
        seen = self._incarnation[i]
        try:
            return await self.handles[i].update_weights.remote(path, version)
        except Exception as err:
            if not _is_death(err):
                raise
            if self._incarnation[i] == seen:
                self._recovery(i, err)
            return {}

    def live(self) -> list[int]:
        """The workers in the weight-sync groups (`collective`): the dead ones rejoin later."""
        return [i for i in range(len(self.handles)) if i not in self.out]

    async def _receive(self, i: int, version: int) -> dict[str, Any]:
        """Worker i's part of a broadcast; {} if it died (before or during it): its next call
        restarts it, and the restart rejoins (a restarted engine without a group refuses the
        broadcast, which then counts as the same death)."""
        if i in self.out:
            return {}
        try:
            return await self.handles[i].update_weights.remote(None, version)
        except Exception as err:
            if i not in self.out and not _is_death(err):
                raise
            self.out.add(i)
            return {}

    async def stats(self) -> dict[str, float]:
        """Workers' `tokens_generated` and `busy_s` (generation seconds), summed; a dead
        (restarting) worker counts 0, without a call (it would wait until Ray has placed the
        actor again), and a restarted one counts from 0 again."""
        stats = await asyncio.gather(*[w.stats.remote() for i, w in enumerate(self.handles)
                                       if i not in self._recovering], return_exceptions=True)
        return {k: sum(s[k] for s in stats if isinstance(s, dict))
                for k in ("tokens_generated", "busy_s")}

    async def _call(self, i: int, call: Callable[[Any], Awaitable[Any]],
                    group_id: int | None = None, reroute: bool = False) -> Any:
        """`call(worker i)`, sent again after the worker died and was restarted; with
        `reroute`, a call whose worker died while another is up raises _Rerouted at once (the
        restart goes on without it) so that the caller sends it to a live worker."""
        while True:
            job = self._recovering.get(i)
            if job is not None:  # started again but without its weights yet: wait for them
                await asyncio.shield(job)
            seen = self._incarnation[i]
            try:
                return await call(self.handles[i])
            except Exception as err:
                if not _is_death(err):
                    raise
                if self._incarnation[i] == seen:  # not yet recovered from this death
                    job = self._recovery(i, err)
                    if reroute and any(k not in self._recovering for k in range(len(self.handles))):
                        raise _Rerouted from None
                    await asyncio.shield(job)
                if group_id is not None:
                    self.events("group_resent", worker=i, group_id=group_id)

    def _recovery(self, i: int, err: BaseException) -> asyncio.Future[None]:
        """One restart per death, however many of the worker's calls failed with it; a restart
        that fails is kept in `failed` (raised by the next call if nobody waited for it)."""
        job = self._recovering.get(i)
        if job is None:
            job = asyncio.ensure_future(self._restart(i, err))
            self._recovering[i] = job

            def done(j: asyncio.Future[None]) -> None:
                self._recovering.pop(i, None)
                if not j.cancelled() and j.exception() is not None and self.failed is None:
                    self.failed = j.exception()

            job.add_done_callback(done)
        return job

    async def _restart(self, i: int, err: BaseException) -> None:
        t0 = time.time()
        self.events.restarts += 1
        self.events("rollout_worker_died", worker=i, error=error_line(err),
                    restarts=self.events.restarts)
        collective = self.weight_sync == "collective"
        if collective:
            self.out.add(i)
        if collective and self.rejoin is None:
            raise RuntimeError(f"rollout worker {i} died ({error_line(err)}) and cannot rejoin "
                               "the weight-sync group here: resume the run with --resume")
        worker = self.handles[i]
        try:
            # Ray re-places the actor (on another node when its own was lost): bounded, since no
            # node may be able to host it (a call waits until the actor is back); then its engine
            await bounded(_once_restarted(worker.stats.remote), self.restart_timeout_s,
                          f"placing rollout worker {i} again", "controller.restart_timeout_s",
                          self.events)
            await _once_restarted(worker.start.remote)  # idempotent
            if collective:
                assert self.rejoin is not None
                async with self.weights_lock:
                    await self.rejoin(i)
                    self.out.discard(i)
            while not collective and self._weights_file is not None:  # until no newer export
                path, version = self._weights_file
                await _once_restarted(lambda p=path, v=version: worker.update_weights.remote(p, v))
                if self._weights_file == (path, version):
                    break
        except _actor_error() as again:
            raise RuntimeError(f"rollout worker {i} could not be restarted (restart limit "
                               f"controller.max_worker_restarts reached?): {error_line(again)}"
                               ) from None
        self._incarnation[i] += 1
        self.events("rollout_worker_restarted", worker=i, seconds=round(time.time() - t0, 2))


class Reward:
    """The reward actor: grades responses with their prompt's task data."""

    def __init__(self, handle: Any, *, max_restarts: int, events: Events) -> None:
        self.handle = handle
        self.max_restarts = max_restarts
        self.events = events

    async def score(self, pairs: Sequence[tuple[Prompt, Trajectory]]) -> None:
        """Set `reward`, `reward_ok`, `reward_reason` of each trajectory, graded by its prompt's
        `task` against its `reference`."""
        items = [{"task": p.task, "response": t.response_text, "reference": p.reference}
                 for p, t in pairs]
        for (_, t), r in zip(pairs, await self._score(items), strict=True):
            t.reward, t.reward_ok, t.reward_reason = r.reward, r.ok, r.reason

    async def _score(self, items: list[dict[str, str]]) -> Any:
        for attempt in range(self.max_restarts + 1):
            try:  # "restarting" answers (its node lost, Ray placing it again) are waited out
                return await _once_restarted(lambda: self.handle.score.remote(items))
            except _actor_error() as err:
                self.events.restarts += 1
                self.events("reward_worker_died", error=error_line(err), attempt=attempt)
        raise RuntimeError("the reward actor kept dying: restart limit reached")


class Trainers:
    """The trainer ranks and, for algorithms with a value model, the critic.

    A batch goes into the object store once (`put`, `ray.put` in a run) and the actors exchange
    references: the critic's advantages and the reference log-probs never pass through here."""

    def __init__(self, handles: Sequence[Any], critic: Any, *, kl_in_reward: bool,
                 put: Callable[[Any], Any], events: Events) -> None:
        self.handles = list(handles)
        self.critic = critic
        self.kl_in_reward = kl_in_reward
        self.put = put
        self.events = events

    async def train(self, batch: list[Any], step: int) -> dict[str, float]:
        """One optimiser step on every rank (version v -> v+1); rank 0's figures. With a critic:
        values and GAE advantages in the critic (on the reference log-probs when the KL is in the
        reward), then the policy update (on those advantages) and the value update together."""
        ref = self.put(batch)
        if self.critic is None:
            return (await self._call(*[t.train_step.remote(ref, step) for t in self.handles]))[0]
        ref_logp = self.handles[0].reference_logprobs.remote(ref) if self.kl_in_reward else None
        adv = self.critic.prepare.remote(ref, ref_logp)
        *policy, value = await self._call(*[t.train_step.remote(ref, step, adv)
                                            for t in self.handles], self.critic.update.remote(step))
        return {**policy[0], **value}

    async def export_weights(self, path: str) -> None:
        await self._call(*[t.export_weights.remote(path) for t in self.handles])

    async def broadcast_weights(self, only: list[int] | None = None) -> dict[str, Any]:
        """Every rank gathers, rank 0 sends to every engine (or those in `only`); rank 0's
        figures, `failed` naming the engines it could not reach."""
        return (await self._call(*[t.broadcast_weights.remote(only) for t in self.handles]))[0]

    async def save_checkpoint(self, out_dir: Path) -> None:
        await self._call(*[a.save_checkpoint.remote(str(out_dir)) for a in self._all()])

    async def load_checkpoint(self, ckpt: Path) -> None:
        await self._call(*[a.load_checkpoint.remote(str(ckpt)) for a in self._all()])

    def _all(self) -> list[Any]:
        return self.handles + ([self.critic] if self.critic is not None else [])

    async def _call(self, *refs: Any) -> list[Any]:
        try:
            return list(await asyncio.gather(*refs))
        except _actor_error() as err:
            self.events("trainer_died", error=error_line(err))
            raise TrainerDied(f"a trainer worker died ({error_line(err)})") from None
