"""Run an untrusted Python program (model output) under limits: `run_python(code, stdin, limits)`.

Each call starts a fresh process tree in a fresh temporary directory and returns its (truncated)
stdout/stderr, exit code and whether it was killed. Nothing the program does raises here.

Isolation modes, best first; `detect_mode()` probes them once per process and logs the one used
(`AREAL_SYS_SANDBOX_MODE` in the environment skips the probe; graders' subprocesses inherit it):

- `namespaces` (Linux, root or CAP_SYS_ADMIN, `unshare` from util-linux): the program runs in new
  PID, mount, network, IPC and UTS namespaces. Inside, every mount is remounted read-only; its
  working directory is a private tmpfs (size-bounded) that is the only writable place; the
  namespace's network has only a loopback interface, and it is down, so no connection can leave
  (not even to 127.0.0.1 of the host); /proc shows only the sandbox's own processes. The program
  runs as a random unprivileged uid/gid with no supplementary groups, so it cannot undo the
  mounts, and `RLIMIT_NPROC` applies to it alone. When the namespace's first process dies
  (wall-clock kill, or the grader dies: parent-death signals chain down) the kernel kills every
  process left in it, including ones that called `setsid`.
- `uid` (root without namespaces): random unprivileged uid, rlimits, a Python audit hook that
  refuses sockets, `ctypes` and process spawning (`os.fork` stays allowed), process-group kill.
- `rlimits` (neither): rlimits, the same audit hook, process-group kill.

The wall clock starts when the sandbox is built (just before the interpreter starts on the
program), so a loaded machine does not charge set-up time to the program. Every mode: scrubbed
environment (PATH, LANG, HOME only), `python -I` (no user site, no
PYTHON* variables), rlimits on CPU seconds, address space, processes, open files, file size and
core dumps, the whole process group SIGKILLed at the wall-clock limit, output read up to
`max_output_bytes` (the program is killed once it writes more).

Not guaranteed: in every mode the program can read world-readable files (the interpreter, this
project's source, /etc); it can burn its CPU and wall-clock budget. In `uid` and `rlimits`
modes the network block is the audit hook only: native extension code can bypass it; writes to
world-writable directories (/tmp, /dev/shm) remain possible in `uid` mode and any write the server's
user may do is possible in `rlimits` mode; a process that leaves the process group escapes the
kill; in `rlimits` mode as root `RLIMIT_NPROC` is not enforced by the kernel. Use `namespaces`
(or a VM/container boundary) for hostile code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
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

Mode = Literal["namespaces", "uid", "rlimits"]
MODES: tuple[Mode, ...] = ("namespaces", "uid", "rlimits")
MODE_ENV = "AREAL_SYS_SANDBOX_MODE"
WORK_PREFIX = "areal_sbx-"  # + pid of the grading process: see `remove_work_dirs`
_SETUP_FAILED = 121  # exit code of the launcher when it could not build the sandbox
_STDERR_BYTES = 16 << 10
# Limit for building the sandbox (unshare, mounts, interpreter start); not charged to the program.
SETUP_TIMEOUT_S = 20.0

log = logging.getLogger(__name__)

# Modes that contain a hostile program; the code grader refuses the others unless the service's
# owner opted in (`reward.allow_unsafe_sandbox`).
SAFE_MODES: tuple[Mode, ...] = ("namespaces",)
# What each mode does NOT contain, one line each (shown by /health, the start-up log, the README).
UNCONTAINED: dict[Mode, str] = {
    "namespaces": "",
    "uid": "network and process spawning are blocked only by an audit hook, which native code "
    "(ctypes-free C extensions, _posixsubprocess.fork_exec) bypasses; world-writable dirs "
    "(/tmp, /dev/shm) and host unix sockets are reachable",
    "rlimits": "as uid, and the program runs as the service's own user: it can write or delete "
    "anything that user can",
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


# Runs as root inside the namespaces (or directly in the fallback modes): builds the sandbox,
# drops privileges, then execs the interpreter on the program. Standard library only.
_LAUNCHER = r'''
import ctypes, json, os, re, resource, sys
cfg = json.loads(sys.argv[1])
d, uid, ns = cfg["dir"], cfg["uid"], cfg["mode"] == "namespaces"
libc = ctypes.CDLL(None, use_errno=True)
def fail(msg):
    sys.stderr.write("sandbox setup failed: " + msg + "\n"); sys.stderr.flush(); os._exit(121)
def mount(src, tgt, fs, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(src), enc(tgt), enc(fs), flags, enc(data)) != 0:
        return os.strerror(ctypes.get_errno())
    return None
if ns:
    err = mount(None, "/", None, 16384 | (1 << 18))  # MS_REC | MS_PRIVATE
    if err: fail("make / private: " + err)
    files = {n: open(os.path.join(d, n), "rb").read() for n in ("prog.py", "stdin.txt")}
    hide = cfg["hide"]  # an ancestor of the interpreter that the sandbox uid cannot traverse
    if hide:
        keep = os.path.join(d, "py")
        os.mkdir(keep)
        err = mount(cfg["prefix"], keep, None, 4096 | 16384)  # MS_BIND | MS_REC
        err = err or mount("tmpfs", hide, "tmpfs", 2 | 4, "size=1m,mode=0755")
        inner = os.path.join(hide, os.path.relpath(cfg["prefix"], hide))
        os.makedirs(inner, exist_ok=True)
        err = err or mount(keep, inner, None, 8192)  # MS_MOVE
        if err: fail("expose the interpreter: " + err)
    opts = "size=%dm,mode=0700,uid=%d,gid=%d" % (cfg["tmpfs_mb"], uid, uid)
    err = mount("tmpfs", d, "tmpfs", 2 | 4, opts)  # MS_NOSUID | MS_NODEV
    if err: fail("tmpfs work dir: " + err)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f: f.write(data)
        os.chown(os.path.join(d, name), uid, uid)
    points = []
    for line in open("/proc/self/mountinfo"):
        p = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if p != d and p not in points: points.append(p)
    for p in points:
        err = mount(None, p, None, 32 | 4096 | 1)  # MS_REMOUNT | MS_BIND | MS_RDONLY
        if err and p == "/": fail("read-only /: " + err)
lim = cfg["limits"]
for res, val in ((resource.RLIMIT_CPU, lim["cpu_s"]), (resource.RLIMIT_AS, lim["memory_mb"] << 20),
                 (resource.RLIMIT_NPROC, lim["max_procs"]),
                 (resource.RLIMIT_NOFILE, lim["max_open_files"]),
                 (resource.RLIMIT_FSIZE, lim["max_file_mb"] << 20), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(res, (val, val))
if uid is not None and os.geteuid() == 0:
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
libc.prctl(1, 9)  # PR_SET_PDEATHSIG = SIGKILL again: a uid change clears it
os.chdir(d)
fd = os.open("stdin.txt", os.O_RDONLY); os.dup2(fd, 0); os.close(fd)
env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": d}
os.write(2, b"\0")  # set-up done: the supervisor starts the program's wall clock now
os.execve(cfg["python"], [cfg["python"], "-I", "-c", cfg["stub"], "1" if cfg["hook"] else "0",
                          "prog.py"], env)
'''

# The program's entry point: in the fallback modes it first installs an audit hook that refuses
# network and native-code escapes (audit hooks cannot be removed from Python code).
_STUB = r'''
import sys
if sys.argv[1] == "1":
    def _hook(event, args, _deny=("socket.", "ctypes.", "os.exec", "os.posix_spawn", "os.system",
                                 "subprocess.Popen", "os.spawn", "pty.")):
        if event.startswith(_deny): raise PermissionError("sandbox: %s is not allowed" % event)
    sys.addaudithook(_hook)
import runpy
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def _python() -> str:
    """The real interpreter (a venv's `bin/python` is a symlink the sandbox uid may not reach)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _hidden_ancestor(path: str) -> str | None:
    """Topmost ancestor of `path` that others cannot traverse (e.g. /root, mode 0700)."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    for i in range(1, len(parts) + 1):
        p = os.sep + os.path.join(*parts[:i])
        if not os.stat(p).st_mode & 0o001:
            return p
    return None


def _preexec() -> None:
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # die with the grader (PR_SET_PDEATHSIG)


def run_python(code: str, stdin: str = "", limits: SandboxLimits | None = None,
               mode: Mode | None = None) -> SandboxResult:
    """Run `code` as a Python program with `stdin`; see the module doc for the guarantees."""
    limits = limits or SandboxLimits()
    mode = mode or detect_mode()
    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-")
    try:
        uid = 100_000 + secrets.randbelow(1 << 30) if os.geteuid() == 0 else None
        with open(os.path.join(work, "prog.py"), "w", encoding="utf-8", errors="replace") as f:
            f.write(code)
        with open(os.path.join(work, "stdin.txt"), "w", encoding="utf-8", errors="replace") as f:
            f.write(stdin)
        if mode == "uid" and uid is not None:
            for p in (work, *(os.path.join(work, n) for n in ("prog.py", "stdin.txt"))):
                os.chown(p, uid, uid)
        python = _python()
        prefix = os.path.realpath(sys.base_prefix)
        cfg = {"dir": work, "uid": uid if mode != "rlimits" else None, "mode": mode,
               "limits": asdict(limits), "python": python, "stub": _STUB,
               "hook": mode != "namespaces", "tmpfs_mb": limits.tmpfs_mb, "prefix": prefix,
               "hide": _hidden_ancestor(python) if mode == "namespaces" else None}
        cmd = [python, "-I", "-c", _LAUNCHER, json.dumps(cfg)]
        if mode == "namespaces":
            cmd = ["unshare", "--fork", "--pid", "--mount-proc", "--net", "--mount", "--ipc",
                   "--uts", "--kill-child", "--propagation", "private", *cmd]
        return _supervise(cmd, limits, mode, t0)
    except Exception as e:  # noqa: BLE001 - a sandbox failure is a result, not a crash
        return SandboxResult("", "", None, False, False, time.monotonic() - t0, mode or "",
                             error=f"{type(e).__name__}: {e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _supervise(cmd: list[str], limits: SandboxLimits, mode: str, t0: float) -> SandboxResult:
    """Start `cmd` in its own process group; collect bounded output; kill the group at the end."""
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        start_new_session=True, preexec_fn=_preexec, close_fds=True,
    )
    out, err = bytearray(), bytearray()
    timed_out = truncated = started = False
    deadline = time.monotonic() + SETUP_TIMEOUT_S
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)  # type: ignore[arg-type]
    sel.register(proc.stderr, selectors.EVENT_READ, err)  # type: ignore[arg-type]
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
                if buf is err and not started and chunk.startswith(b"\0"):
                    started, chunk = True, chunk[1:]
                    deadline = time.monotonic() + limits.wall_s
                cap = limits.max_output_bytes if buf is out else _STDERR_BYTES
                room = max(0, cap - len(buf))
                buf += chunk[:room]
                if buf is out and len(chunk) > room:
                    truncated = True
            if truncated:
                break
    finally:
        sel.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    code = None if timed_out or truncated else proc.returncode
    stderr = err.decode("utf-8", "replace")
    error = ""
    if not started and timed_out:
        error = f"sandbox set-up took over {SETUP_TIMEOUT_S:g} s"
    elif proc.returncode == _SETUP_FAILED and "sandbox setup failed" in stderr:
        error = stderr.strip().splitlines()[-1]
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
    log.warning("reward sandbox: isolation mode %r%s", chosen,
                f" (rejected: {'; '.join(notes)})" if notes else "")
    return chosen
