"""Worker recovery (the Controller's side): rollout and reward actors that die are brought back.

Ray restarts a dead RolloutWorker or reward actor in place (`max_restarts` =
`controller.max_worker_restarts`, set in controller/runtime.py), re-running its constructor; the
actor handle stays valid. The controller then:

- rollout worker: starts the engine again and loads the weights of the current version from the
  last exported file (`shm_file` sync; with `collective` sync a restarted engine would be missing
  from the weight-sync group, so the run stops with the resume command instead), and re-sends the
  groups it held: every call that failed because of the death is retried on the restarted actor.
  A re-sent group keeps its number, admit version and deadline; its tokens are generated anew.
- reward actor: retries the scoring call.

Each death and restart is a line in `RUN_DIR/events.jsonl`. Past the restart limit (Ray gives up
on the actor) the run stops. A dead trainer rank stops the run at once (`TrainerDied`), with the
command that resumes it from the last checkpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from areal_sys.metrics import JsonlWriter

if TYPE_CHECKING:
    from controller.controller import Controller


class TrainerDied(RuntimeError):
    """A trainer rank (or the critic) died: the run cannot continue without a resume."""


def _actor_error() -> type[BaseException]:
    from ray.exceptions import RayActorError

    return RayActorError


def _restarted_unstarted(err: BaseException) -> bool:
    """A call answered by a worker Ray restarted but the controller has not started again."""
    from workers.engine_start import EngineNotStarted

    return isinstance(getattr(err, "cause", None), EngineNotStarted)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


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


class Recovery:
    """Mixin of `Controller`: calls to rollout and reward actors that survive actor deaths."""

    def _init_recovery(self: Controller) -> None:
        self.events = JsonlWriter(self.run_dir / "events.jsonl")
        self._incarnation = [0] * len(self.actors.rollout)
        self._recovering: dict[int, asyncio.Future[None]] = {}
        self._weights_file: tuple[str, int] | None = None  # (path, version) of the last export
        self.restarts = 0

    def _event(self: Controller, event: str, **fields: Any) -> None:
        self.events.write({"time": time.time(), "event": event, "version": self.version, **fields})
        print(f"[{event}] " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)

    async def call_rollout(self: Controller, i: int, method: str, *args: Any, **kw: Any) -> Any:
        """`rollout[i].method(*args, **kw)`, retried after the worker died and was restarted."""
        while True:
            seen = self._incarnation[i]
            try:
                return await getattr(self.actors.rollout[i], method).remote(*args, **kw)
            except Exception as err:
                # a death, or a call that reached the restarted actor before its recovery
                # started the engine again (the death's other calls may not have failed yet)
                if not isinstance(err, _actor_error()) and not _restarted_unstarted(err):
                    raise
                if self._incarnation[i] == seen:  # not yet recovered from this death
                    await self._recover_rollout(i, err)
                if method == "generate_group":
                    self._event("group_resent", worker=i, group_id=kw.get("group_id"))

    async def _recover_rollout(self: Controller, i: int, err: BaseException) -> None:
        job = self._recovering.get(i)
        if job is None:
            job = asyncio.ensure_future(self._restart_rollout(i, err))
            self._recovering[i] = job
            job.add_done_callback(lambda _: self._recovering.pop(i, None))
        await asyncio.shield(job)

    async def _restart_rollout(self: Controller, i: int, err: BaseException) -> None:
        t0 = time.time()
        self.restarts += 1
        self._event("rollout_worker_died", worker=i, error=_one_line(err), restarts=self.restarts)
        if self.cfg.trainer.weight_sync == "collective":
            raise RuntimeError(
                f"rollout worker {i} died ({_one_line(err)}); with trainer.weight_sync=collective "
                "a restarted engine cannot rejoin the weight-sync group: resume the run with "
                "--resume, or use trainer.weight_sync=shm_file for in-run recovery")
        worker = self.actors.rollout[i]
        try:
            await _once_restarted(worker.start.remote)  # idempotent
            while self._weights_file is not None:
                path, version = self._weights_file
                await _once_restarted(lambda p=path, v=version: worker.update_weights.remote(p, v))
                if self._weights_file == (path, version):
                    break
        except _actor_error() as again:
            raise RuntimeError(f"rollout worker {i} could not be restarted (restart limit "
                               f"controller.max_worker_restarts reached?): {_one_line(again)}"
                               ) from None
        self._incarnation[i] += 1
        self._event("rollout_worker_restarted", worker=i, seconds=round(time.time() - t0, 2))

    async def call_reward(self: Controller, items: list[dict[str, Any]]) -> Any:
        """The reward actor's `score(items)`, retried after the actor died and was restarted."""
        for attempt in range(self.cfg.controller.max_worker_restarts + 1):
            try:
                return await self.actors.reward.score.remote(items)
            except _actor_error() as err:
                self.restarts += 1
                self._event("reward_worker_died", error=_one_line(err), attempt=attempt)
        raise RuntimeError("the reward actor kept dying: restart limit reached")

    async def call_trainers(self: Controller, coro: Any) -> Any:
        """Await trainer (or critic) calls; a death stops the run with `TrainerDied`."""
        try:
            return await self._until_failure(coro)
        except _actor_error() as err:
            self._event("trainer_died", error=_one_line(err))
            raise TrainerDied(f"a trainer worker died ({_one_line(err)})") from None
