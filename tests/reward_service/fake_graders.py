"""Test-only graders ("fake_*") loaded by the reward service's subprocesses as plugins.

A service registers them the way an owner registers plugins: `graders={NAME: "module:function"}`
(`FAKE_GRADERS`), or `reward-serve --grader NAME=tests.reward_service.fake_graders:NAME`.
"""

from __future__ import annotations

import os
import time

FAKE_MODULE = "tests.reward_service.fake_graders"


def fake_sleep_forever(response: str, reference: str) -> bool:
    """Hangs: the service must kill the process at its timeout."""
    while True:
        time.sleep(60)


def fake_raise(response: str, reference: str) -> bool:
    raise RuntimeError("fake grader failed\nsecond line that must not reach the reason")


def fake_exit(response: str, reference: str) -> bool:
    """Kills its own process mid-item (a segfault-like crash)."""
    os._exit(3)


def fake_print_then_score(response: str, reference: str) -> float:
    """Writes to stdout (which must not corrupt the service's protocol) and returns a float."""
    print("noise on stdout", response)
    os.write(1, b"raw noise on fd 1\n")
    return 0.25


def fake_nan(response: str, reference: str) -> float:
    return float("nan")


def fake_string(response: str, reference: str) -> str:
    return "yes"


def fake_pid(response: str, reference: str) -> float:
    """The grading process's pid (after a short pause, so concurrent items overlap)."""
    time.sleep(0.3)
    return float(os.getpid())


def fake_count(response: str, reference: str) -> bool:
    """Appends one line to the file named by `reference` per call: counts real gradings."""
    with open(reference, "a") as f:
        f.write(response + "\n")
    return True


def fake_slow(response: str, reference: str) -> bool:
    """Sleeps `reference` seconds, then answers correct."""
    time.sleep(float(reference))
    return True


def fake_secret(response: str, reference: str) -> str:
    """Returns a secret (as `os:getenv` did): it must never reach a client."""
    return os.environ.get("AREAL_TEST_SECRET", "s3cr3t")


FAKE_GRADERS = {name: f"{FAKE_MODULE}:{name}" for name in dir() if name.startswith("fake_")}
