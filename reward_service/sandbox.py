"""Run an untrusted Python program (model output) under limits: `run_python(code, stdin, limits)`.

Each call starts a fresh process tree in a fresh temporary directory and returns its (truncated)
stdout/stderr, exit code and whether it was killed. Nothing the program does raises here.

Isolation modes, best first; `detect_mode()` probes them once per process and logs the one used
(`AREAL_SYS_SANDBOX_MODE` in the environment skips the probe; graders' subprocesses inherit it):

- `namespaces` (Linux, root or CAP_SYS_ADMIN, `unshare` from util-linux): new PID, mount, network,
  IPC and UTS namespaces. The program's root is a fresh read-only tmpfs holding only read-only
  binds of /usr, /lib*, the interpreter's prefix, the null/zero/random devices, a few generated
  /etc files and the namespace's own /proc (`pivot_root`, the host's tree detached): no host
  unix socket, /tmp, /run, /dev/shm or project file is even addressable. Its working directory
  (/sandbox, also HOME) is a size-bounded private tmpfs, the only writable place. The network
  namespace has only a loopback that is down (no TCP to the host, abstract unix sockets are
  scoped to it); the IPC namespace is empty; /proc shows only the sandbox's processes. The
  program runs as a random unprivileged uid/gid with no supplementary groups, so it cannot undo
  the mounts, and `RLIMIT_NPROC` applies to it alone. Its monitor is the namespace's pid 1: when
  it exits (program done, limit reached, or grader gone) the kernel kills every process left,
  including `setsid` daemons, before `run_python` returns.
- `uid` (root without namespaces): random unprivileged uid, rlimits, the seccomp filter below
  with `execve` refused as well, a Python audit hook (sockets, `ctypes`, spawning; importing
  `_posixsubprocess` too where there is no seccomp filter), and a root monitor that is a child
  subreaper: every orphan re-parents to it, and it kills and reaps all of them before
  `run_python` returns (or, if the grader dies, once the lifeline pipe from the grader closes).
- `rlimits` (neither): as `uid`, but the program (and its monitor) run as the service's own user.

Every mode also has a seccomp filter (x86_64 and aarch64): no `socket()` (only a connected unix
stream `socketpair`), no SysV or POSIX message-queue IPC, io_uring, keyrings, ptrace, bpf,
mount or namespace calls. It is inherited by every process the program starts, exec'd or not.

The program runs in the launcher's interpreter, forked after the sandbox is built (no second
interpreter start per call); its wall clock starts once set-up is done, so a loaded machine does
not charge set-up time to it. Every mode: scrubbed environment (PATH, LANG, HOME only),
`python -I`, rlimits on CPU seconds, address space, processes, open files, file size and core
dumps, output read up to `max_output_bytes` (the program is killed once it writes more).

Not contained in any mode: reading world-readable files that are there (in `namespaces` only
the trees bound in above); burning its CPU and wall-clock budget. What the fallback modes do
not contain is `UNCONTAINED[mode]`; only `SAFE_MODES` are fit for hostile code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Literal

from reward_service.sandbox_launcher import LAUNCHER, PIVOT_ROOT, seccomp_filter

Mode = Literal["namespaces", "uid", "rlimits"]
MODES: tuple[Mode, ...] = ("namespaces", "uid", "rlimits")
MODE_ENV = "AREAL_SYS_SANDBOX_MODE"
WORK_PREFIX = "areal_sbx-"  # + pid of the grading process: see `remove_work_dirs`
_STDERR_BYTES = 16 << 10
# Limit for building the sandbox (unshare, mounts, interpreter start); not charged to the program.
SETUP_TIMEOUT_S = 20.0

log = logging.getLogger(__name__)

# Modes that contain a hostile program; the code grader refuses the others unless the service's
# owner opted in (`reward.allow_unsafe_sandbox`).
SAFE_MODES: tuple[Mode, ...] = ("namespaces",)
_KERNEL_FILTER = platform.machine() in ("x86_64", "aarch64")  # see `seccomp_filter`
_FALLBACK_NET = (
    "sockets, SysV IPC and exec are refused by the kernel (seccomp)" if _KERNEL_FILTER else
    "sockets and exec are refused only by an audit hook, which native code bypasses (no seccomp "
    "filter for this machine)")
# What each mode does NOT contain, one line each (shown by /health, the start-up log, the README).
UNCONTAINED: dict[Mode, str] = {
    "namespaces": "",
    "uid": "the program reads every world-readable host file and every process's command line "
    "in /proc, and writes into world-writable directories (/tmp, /var/tmp, /dev/shm), where "
    f"what it writes stays; {_FALLBACK_NET}; its processes are killed after each run",
    "rlimits": "the program runs as the service's own user: it reads, writes and deletes "
    "whatever that user can (the project, token files, and through /proc the environment and "
    "memory of the service's processes), and can signal them, including the monitor that kills "
    "its leftover processes, so a daemon can survive; as root, RLIMIT_NPROC does not apply; "
    f"{_FALLBACK_NET}",
}


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits. wall_s: wall clock; cpu_s: CPU seconds (RLIMIT_CPU); memory_mb:
    address space; max_procs: processes of the sandbox uid; tmpfs_mb: size of the writable dir
    (namespaces mode); max_output_bytes: stdout kept (more kills the program)."""

    wall_s: float = 2.0
    cpu_s: int = 2
    memory_mb: int = 512
    max_procs: int = 32
    max_open_files: int = 64
    max_file_mb: int = 16
    tmpfs_mb: int = 64
    max_output_bytes: int = 1 << 20


@dataclass(frozen=True)
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int | None  # negative: killed by that signal; None: never started
    timed_out: bool
    truncated: bool  # output passed max_output_bytes (the program was killed)
    elapsed_s: float
    mode: str
    error: str = ""  # the sandbox itself failed (not the program)


def _python() -> str:
    """The real interpreter (a venv's `bin/python` is a symlink the sandbox uid may not reach)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _die_with_parent() -> None:
    """`unshare` dies with the grader (PR_SET_PDEATHSIG), and kills the namespace's pid 1 as it
    goes (--kill-child). The fallback modes' monitor must outlive the grader instead, long
    enough to see the lifeline close and kill what the program left."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def run_python(code: str, stdin: str = "", limits: SandboxLimits | None = None,
               mode: Mode | None = None) -> SandboxResult:
    """Run `code` as a Python program with `stdin`; see the module doc for the guarantees."""
    limits = limits or SandboxLimits()
    mode = mode or detect_mode()
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-")
    life_r, life_w = os.pipe()  # the monitor kills the program once this closes
    status_r, status_w = os.pipe()  # monitor and program -> supervisor: b"R" started, b"E<code>"
    try:
        uid = 100_000 + secrets.randbelow(1 << 30) if os.geteuid() == 0 else None
        with open(os.path.join(work, "prog.py"), "w", encoding="utf-8", errors="replace") as f:
            f.write(code)
        with open(os.path.join(work, "stdin.txt"), "w", encoding="utf-8", errors="replace") as f:
            f.write(stdin)
        if mode == "uid" and uid is not None:
            for p in (work, *(os.path.join(work, n) for n in ("prog.py", "stdin.txt"))):
                os.chown(p, uid, uid)
        bpf = seccomp_filter(allow_exec=mode == "namespaces")
        cfg = {"dir": work, "uid": uid if mode != "rlimits" else None, "mode": mode,
               "limits": asdict(limits), "hook": mode != "namespaces",
               "tmpfs_mb": limits.tmpfs_mb, "prefix": os.path.realpath(sys.base_prefix),
               "pivot_root": PIVOT_ROOT, "seccomp": bpf.hex() if bpf else "",
               "life": life_r, "status": status_w}
        # "prog.py" last: the launcher's command line names the program it runs
        cmd = [_python(), "-I", "-c", LAUNCHER, json.dumps(cfg), "prog.py"]
        if mode == "namespaces":
            cmd = ["unshare", "--fork", "--pid", "--net", "--mount", "--ipc", "--uts",
                   "--kill-child", "--propagation", "private", *cmd]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
            start_new_session=True, close_fds=True,
            preexec_fn=_die_with_parent if mode == "namespaces" else None,
            pass_fds=(life_r, status_w),
        )
        os.close(life_r)
        os.close(status_w)
        life_r = status_w = -1
        return _supervise(proc, status_r, life_w, limits, mode, t0)
    except Exception as e:  # noqa: BLE001 - a sandbox failure is a result, not a crash
        return SandboxResult("", "", None, False, False, time.monotonic() - t0, mode or "",
                             error=f"{type(e).__name__}: {e}")
    finally:
        for fd in (life_r, life_w, status_r, status_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        shutil.rmtree(work, ignore_errors=True)


def _supervise(proc: subprocess.Popen, status_fd: int, life_w: int, limits: SandboxLimits,
               mode: str, t0: float) -> SandboxResult:
    """Collect bounded output until the program ends or a limit hits; then close the lifeline
    (the monitor kills what is left) and wait until the launcher, and so every process of the
    program, is gone."""
    out, err, status = bytearray(), bytearray(), bytearray()
    timed_out = truncated = False
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)  # type: ignore[arg-type]
    sel.register(proc.stderr, selectors.EVENT_READ, err)  # type: ignore[arg-type]
    sel.register(status_fd, selectors.EVENT_READ, status)
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf: bytearray = key.data
                if buf is status:
                    if not status.startswith(b"R") and chunk.startswith(b"R"):
                        deadline = time.monotonic() + limits.wall_s
                    status += chunk[:64]
                    continue
                cap = limits.max_output_bytes if buf is out else _STDERR_BYTES
                room = max(0, cap - len(buf))
                buf += chunk[:room]
                if buf is out and len(chunk) > room:
                    truncated = True
            if truncated:
                break
    finally:
        sel.close()
        os.close(life_w)  # the monitor kills the program and every process it left, then exits
        try:
            # set-up never finished: no program code ran, the launcher may be stuck in set-up
            proc.wait(timeout=SETUP_TIMEOUT_S if status.startswith(b"R") else 0.01)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    started = status.startswith(b"R")
    end = status.split(b"E", 1)
    code = int(end[1]) if started and len(end) == 2 and end[1].lstrip(b"-").isdigit() else None
    stderr = err.decode("utf-8", "replace")
    error = ""
    if not started and timed_out:
        error = f"sandbox set-up took over {SETUP_TIMEOUT_S:g} s"
    elif not started:
        lines = stderr.strip().splitlines()
        error = lines[-1] if lines else f"sandbox launcher exited with {proc.returncode}"
    if timed_out or truncated:
        code = None
    return SandboxResult(out.decode("utf-8", "replace"), stderr, code, timed_out, truncated,
                         time.monotonic() - t0, mode, error)


def remove_work_dirs(pid: int) -> None:
    """Delete the work dirs a killed grading process `pid` left behind."""
    import glob

    for d in glob.glob(os.path.join(tempfile.gettempdir(), f"{WORK_PREFIX}{pid}-*")):
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# detection

_PROBE = r'''
import json, os, socket
res = {"uid": os.getuid()}
target = os.environ.get("HOME", ".")
try:
    open(PROBE_FILE, "w").write("x"); res["write"] = True
except OSError:
    res["write"] = False
try:
    s = socket.socket(); s.settimeout(1); s.connect(("127.0.0.1", PROBE_PORT)); res["net"] = True
except OSError as e:
    res["net"] = e.errno == 111  # ECONNREFUSED: the host's loopback answered
except Exception:
    res["net"] = False
print(json.dumps(res))
'''

_detected: Mode | None = None


def detect_mode(force: bool = False) -> Mode:
    """The best mode that works here (module doc). Probes each candidate with a program that
    tries to write into a world-writable directory outside its own and to connect to a TCP
    listener on the host's loopback; a mode is accepted only if it blocks what it promises."""
    global _detected
    env = os.environ.get(MODE_ENV)
    if env in MODES and not force:
        _detected = env  # type: ignore[assignment]
    if _detected is not None and not force:
        return _detected
    import socket

    outside = tempfile.mkdtemp(prefix="areal_sbx_probe-")
    os.chmod(outside, 0o777)
    probe_file = os.path.join(outside, "escaped")
    chosen: Mode = "rlimits"
    notes = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        code = _PROBE.replace("PROBE_FILE", repr(probe_file)).replace("PROBE_PORT", str(port))
        for mode in MODES:
            if mode != "rlimits" and os.geteuid() != 0:
                continue
            if mode == "namespaces" and shutil.which("unshare") is None:
                notes.append("namespaces: no unshare")
                continue
            r = run_python(code, limits=SandboxLimits(wall_s=10.0, cpu_s=5), mode=mode)
            try:
                got = json.loads(r.stdout)
            except ValueError:
                notes.append(f"{mode}: probe failed ({r.error or r.stderr.strip()[-200:]})")
                continue
            write_ok = mode == "rlimits" or not got["write"] and not os.path.exists(probe_file)
            if write_ok and not got["net"]:
                chosen = mode
                break
            notes.append(f"{mode}: probe not contained ({got})")
    shutil.rmtree(outside, ignore_errors=True)
    _detected = chosen
    os.environ[MODE_ENV] = chosen
    # the strongest mode is news only in verbose logs; a weaker one is worth a warning
    log.log(logging.INFO if chosen == "namespaces" else logging.WARNING,
            "reward sandbox: isolation mode %r%s", chosen,
            f" (rejected: {'; '.join(notes)})" if notes else "")
    return chosen
