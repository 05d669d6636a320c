"""The grader subprocess and the service's handle on it.

`GraderProcess` (service side) starts `python -c "...worker_main()"`, waits for its ready line,
then speaks JSON lines: one line of items in, one result line per item out. `worker_main` (child
side) dies with its parent (PR_SET_PDEATHSIG), applies the memory limit, keeps the protocol on a
private copy of stdout (whatever a grader prints goes to stderr) and grades items one at a time.
See service.py for timeouts, retries and batching.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
from typing import Any

from reward_service.graders import SETTINGS_ENV, one_line
from reward_service.sandbox import remove_work_dirs

WORKER_CMD = "from reward_service.grader_process import worker_main; worker_main()"
MAX_REASON_CHARS = 300


class ProcessDied(Exception):
    pass


class GraderProcess:
    """One grader subprocess speaking JSON lines over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, memory_limit_mb: int | None, start_timeout_s: float,
                    settings_json: str) -> GraderProcess:
        env = dict(os.environ)
        env[SETTINGS_ENV] = settings_json
        # The child sees exactly the modules this process sees (plugins under tests/, Ray dirs).
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER_CMD, str(os.getpid()), str(memory_limit_mb or 0),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )
        self = cls(proc)
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), start_timeout_s)
        except TimeoutError:
            await self.kill()
            raise ProcessDied(f"grader process not ready after {start_timeout_s:g} s") from None
        if not line:
            code = await proc.wait()
            raise ProcessDied(f"grader process failed to start (exit code {code})")
        return self

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def send(self, jobs: list[Any]) -> None:
        msg = {"items": [[j.task, j.response, j.reference] for j in jobs]}
        try:
            self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ProcessDied(f"grader process pipe closed: {e}") from None

    async def receive(self, timeout_s: float) -> dict[str, Any]:
        """Next result line; TimeoutError past `timeout_s`; ProcessDied on EOF."""
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        if not line:
            code = await self.proc.wait()
            raise ProcessDied(f"grader process died (exit code {code})")
        return json.loads(line)

    async def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()
        remove_work_dirs(self.proc.pid)  # what the sandbox of a killed grader left in /tmp
        # Close the pipes now, on the owning loop: left to the garbage collector, the transport
        # closes them later and fails if that loop is closed by then.
        transport = getattr(self.proc, "_transport", None)
        if transport is not None:
            transport.close()

    def kill_nowait(self) -> None:
        """Kill from outside the owning event loop (the loop's child watcher reaps it)."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)



def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent exits (a hung grader is never orphaned)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(0)


def grade_one(task: str, response: str, reference: str) -> dict[str, Any]:
    from reward_service.graders import get_grader

    t0 = time.perf_counter()
    try:
        value = get_grader(task)(response, reference)
        if not isinstance(value, bool | int | float) or not math.isfinite(value):
            shown = repr(value)[:40]
            raise TypeError(f"grader {task!r} returned {shown}; expected a bool or a finite float")
        out: dict[str, Any] = {"value": value if isinstance(value, bool) else float(value)}
    except BaseException as e:  # noqa: BLE001 - SystemExit in a grader is still a grader error
        out = {"error": one_line(e)[:MAX_REASON_CHARS]}
    out["s"] = time.perf_counter() - t0
    return out


def worker_main() -> None:
    """Grader subprocess: argv = [parent_pid, memory_limit_mb]; JSON lines in, JSON lines out."""
    parent_pid, memory_limit_mb = int(sys.argv[1]), int(sys.argv[2])
    die_with_parent(parent_pid)
    if memory_limit_mb > 0:
        import resource

        limit = memory_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # Keep the protocol on a private copy of stdout; anything a grader prints goes to stderr.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    grade_one("math", "\\boxed{1}", "1")  # import math-verify + sympy before the first deadline
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin.buffer:
        for task, response, reference in json.loads(line)["items"]:
            out.write(json.dumps(grade_one(task, response, reference)) + "\n")
            out.flush()
