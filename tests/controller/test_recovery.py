"""Calls on a rollout worker that Ray is restarting (controller/recovery.py `_once_restarted`)."""

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from controller import recovery


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
    assert asyncio.run(recovery._once_restarted(call)) == "ok"
    assert call.calls == 3


def test_a_dead_actor_fails_at_once() -> None:
    call = FlakyCall(ActorDiedError())
    with pytest.raises(ActorDiedError):
        asyncio.run(recovery._once_restarted(call))
    assert call.calls == 1


def test_an_actor_that_stays_unavailable_fails_after_the_timeout() -> None:
    call = FlakyCall(*[restarting() for _ in range(100)])
    with pytest.raises(ActorUnavailableError):
        asyncio.run(recovery._once_restarted(call, timeout_s=1.0))
    # backoff 0.5 s then 1 s: the first wait fits in the 1 s deadline, the second does not
    assert call.calls == 2
