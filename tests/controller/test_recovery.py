"""Calls on a rollout worker that Ray is restarting (controller/actors.py `_once_restarted`,
`RolloutPool`)."""

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from controller import actors


class FlakyCall:
    """A fake remote call: fails with `errors` in turn, then answers "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def restarting() -> ActorUnavailableError:
    return ActorUnavailableError("The actor is temporarily unavailable: IOError: The actor is "
                                 "restarting.", None)


def test_a_call_during_the_restart_is_sent_again() -> None:
    call = FlakyCall(restarting(), restarting())
    assert asyncio.run(actors._once_restarted(call)) == "ok"
    assert call.calls == 3


def test_a_dead_actor_fails_at_once() -> None:
    call = FlakyCall(ActorDiedError())
    with pytest.raises(ActorDiedError):
        asyncio.run(actors._once_restarted(call))
    assert call.calls == 1


def test_an_actor_that_stays_unavailable_fails_after_the_timeout() -> None:
    call = FlakyCall(*[restarting() for _ in range(100)])
    with pytest.raises(ActorUnavailableError):
        asyncio.run(actors._once_restarted(call, timeout_s=1.0))
    # backoff 0.5 s then 1 s: the first wait fits in the 1 s deadline, the second does not
    assert call.calls == 2


class FakeRemote:
    def __init__(self, fn) -> None:
        self.fn = fn

    def remote(self, *args, **kw):
        return self.fn(*args, **kw)


class FakeRestartedWorker:
    """A fake rollout actor that Ray has restarted: its engine is down until `start()`."""

    def __init__(self) -> None:
        self.started = False
        self.loaded: list[tuple[str, int]] = []
        self.start = FakeRemote(self._start)
        self.stats = FakeRemote(self._stats)
        self.update_weights = FakeRemote(self._update_weights)

    async def _stats(self) -> dict[str, float]:
        return {"tokens_generated": 0.0, "busy_s": 0.0}

    async def _start(self) -> None:
        self.started = True

    async def _update_weights(self, path: str, version: int) -> dict[str, int]:
        if not self.started:
            from ray.exceptions import RayTaskError

            from workers.engine_start import EngineNotStarted

            cause = EngineNotStarted("rollout worker 0: call start() first")
            raise RayTaskError("update_weights", "traceback", cause)
        self.loaded.append((path, version))
        return {"version": version}


def test_a_weight_push_reaching_a_restarted_unstarted_worker_starts_its_recovery(
        tmp_path) -> None:
    """The weight push reached the restarted actor before any of the death's other calls failed:
    the push does not wait for it (answer {}); its recovery starts the worker, which loads the
    newest weights file once."""
    events = actors.Events(tmp_path / "events.jsonl", lambda: 3)
    pool = actors.RolloutPool([FakeRestartedWorker()], weight_sync="shm_file", events=events)

    async def push_then_recovery() -> list:
        out = await pool.update_weights("w.safetensors", 4)
        await asyncio.gather(*pool._recovering.values())
        return out

    out = asyncio.run(push_then_recovery())
    worker = pool.handles[0]
    assert out == [{}] and worker.started
    assert worker.loaded == [("w.safetensors", 4)]  # by the recovery
    assert events.restarts == 1 and pool._incarnation == [1] and pool.failed is None
