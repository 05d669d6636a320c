"""The grader subprocess and the service's handle on it.

`GraderProcess` (service side) starts `python -c "...worker_main()"`, waits for its ready line,
then speaks JSON lines: one line of items in, one result line per item out. `worker_main` (child
side) dies with its parent (PR_SET_PDEATHSIG), applies the memory limit, keeps the protocol on a
private copy of stdout (whatever a grader prints goes to stderr), registers the owner's plugins
(`reward.graders`) once, and grades items one at a time. A plugin that cannot be loaded makes the
ready line an error line: the process exits and `GraderProcess.start` raises with that one line.
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
CHECK_CMD = "from reward_service.grader_process import check_main; check_main()"
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
        env = _child_env(settings_json)
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
        error = _start_error(line)
        if error:
            await self.kill()
            raise ProcessDied(f"grader process failed to start: {error}")
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



def _start_error(line: bytes) -> str:
    try:
        msg = json.loads(line)
    except ValueError:
        return "garbled ready line"
    return str(msg.get("error", "")) if isinstance(msg, dict) else "garbled ready line"


def _child_env(settings_json: str) -> dict[str, str]:
    env = dict(os.environ)
    env[SETTINGS_ENV] = settings_json
    # The child sees exactly the modules this process sees (plugins under tests/, Ray dirs).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def check_plugins(settings_json: str, timeout_s: float) -> str | None:
    """Load the plugins of `settings_json` in a throwaway child, as a grader process would.

    Returns None when all load, else one line saying which one failed and why (the service's
    owner sees it at start-up instead of as failed results later).
    """
    import subprocess

    try:
        res = subprocess.run([sys.executable, "-c", CHECK_CMD], env=_child_env(settings_json),
                             capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return f"loading the grader plugins took over {timeout_s:g} s"
    if res.returncode == 0:
        return None
    lines = res.stdout.decode("utf-8", "replace").strip().splitlines()
    return lines[-1][:MAX_REASON_CHARS] if lines else f"plugin check exit code {res.returncode}"


def check_main() -> None:
    """Child of `check_plugins`: load the plugins, print the one-line error if any."""
    from reward_service.graders import SETTINGS, load_plugins

    try:
        load_plugins(SETTINGS.plugins)
    except Exception as e:  # noqa: BLE001 - reported as one line
        print(str(e))
        sys.exit(1)


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
            # the value itself is never shown: a client must not read what a grader returned
            what = type(value).__name__ if not isinstance(value, float) else "a non-finite float"
            raise TypeError(f"grader {task!r} returned {what}; expected a bool or a finite float")
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
    from reward_service.graders import SETTINGS, load_plugins

    try:
        load_plugins(SETTINGS.plugins)
    except Exception as e:  # noqa: BLE001 - reported on the ready line
        out.write(json.dumps({"error": str(e)[:MAX_REASON_CHARS]}) + "\n")
        out.flush()
        return
    grade_one("math", "\\boxed{1}", "1")  # import math-verify + sympy before the first deadline
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin.buffer:
        for task, response, reference in json.loads(line)["items"]:
            out.write(json.dumps(grade_one(task, response, reference)) + "\n")
            out.flush()
