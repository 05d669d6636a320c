"""Hostile programs through `run_python`: each tries one way out of the code sandbox and reports
what happened; the test then checks the host side (listeners, files, processes) as well.

`namespaces` cases need root and `unshare`; the fallback modes are forced with `mode=`. `uid`
mode needs an interpreter that other users can reach (not one under /root, mode 0700).
Where a fallback mode does not contain something, the test says so and checks that the mode's
`UNCONTAINED` text states it: the code grader's refusal of unsafe modes is what protects then.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reward_service import sandbox
from reward_service.sandbox import SandboxLimits, run_python

pytestmark = pytest.mark.integration  # real processes: kept out of `make test-fast`

ROOT = Path(__file__).resolve().parents[2]
LIMITS = SandboxLimits(wall_s=5.0, cpu_s=5)


def _uid_mode_usable() -> bool:
    """The sandbox uid must be able to traverse every directory above the interpreter."""
    p = os.path.realpath(sys.base_prefix)
    while p != "/":
        if not os.stat(p).st_mode & stat.S_IXOTH:
            return False
        p = os.path.dirname(p)
    return True


HAS_NS = os.geteuid() == 0 and shutil.which("unshare") is not None
needs_ns = pytest.mark.skipif(not HAS_NS, reason="namespaces mode needs root and unshare")
MODES = [
    pytest.param("namespaces", marks=needs_ns),
    pytest.param("uid", marks=pytest.mark.skipif(
        os.geteuid() != 0 or not _uid_mode_usable(),
        reason="uid mode needs root and an interpreter other users can reach")),
    "rlimits",
]


def run(program: str, mode: str, limits: SandboxLimits = LIMITS) -> sandbox.SandboxResult:
    r = run_python(program, "", limits, mode=mode)  # type: ignore[arg-type]
    assert r.error == "", r
    return r


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A world-writable directory on the host, outside any sandbox."""
    d = tmp_path / "outside"
    d.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(d, 0o777)
    return d


@pytest.fixture
def unix_listeners(outside: Path) -> Iterator[list[tuple[str, socket.socket]]]:
    """Host unix sockets (stream and datagram) in /tmp and in the project directory."""
    made = []
    tag = secrets.token_hex(4)
    for path, kind in ((str(outside / "s.sock"), socket.SOCK_STREAM),
                       (str(ROOT / f".sbx-{tag}.sock"), socket.SOCK_STREAM),
                       (str(outside / "d.sock"), socket.SOCK_DGRAM)):
        s = socket.socket(socket.AF_UNIX, kind)
        s.bind(path)
        os.chmod(path, 0o777)
        if kind == socket.SOCK_STREAM:
            s.listen(4)
        s.setblocking(False)
        made.append((path, s))
    yield made
    for path, s in made:
        s.close()
        with contextlib.suppress(OSError):
            os.unlink(path)


def nothing_arrived(s: socket.socket) -> bool:
    try:
        if s.type == socket.SOCK_STREAM:
            s.accept()[0].close()
        else:
            s.recv(100)
    except BlockingIOError:
        return True
    return False


CONNECT_UNIX = """
import socket
for path, kind in PATHS:
    try:
        s = socket.socket(socket.AF_UNIX, kind)
        if kind == socket.SOCK_STREAM:
            s.connect(path)
        else:
            s.sendto(b"x", path)
        print("reached", path)
    except Exception as e:
        print("blocked", type(e).__name__)
for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):  # a socketpair aimed at a path
    try:
        a, b = socket.socketpair(socket.AF_UNIX, kind)
        a.sendto(b"x", PATHS[-1][0])
        print("reached by socketpair", kind)
    except Exception as e:
        print("blocked", type(e).__name__)
"""


@pytest.mark.parametrize("mode", MODES)
def test_host_unix_sockets_are_unreachable_by_path(
        mode: str, unix_listeners: list[tuple[str, socket.socket]]) -> None:
    paths = [(p, int(s.type)) for p, s in unix_listeners]
    r = run(CONNECT_UNIX.replace("PATHS", repr(paths)), mode)
    lines = r.stdout.splitlines()
    assert len(lines) == 5 and all(ln.startswith("blocked") for ln in lines), r
    assert all(nothing_arrived(s) for _, s in unix_listeners)


@needs_ns
def test_abstract_unix_socket_is_unreachable() -> None:
    name = "\0areal-sbx-test-" + secrets.token_hex(6)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(name)
        listener.listen(4)
        listener.setblocking(False)
        program = ("import socket\ntry:\n    s = socket.socket(socket.AF_UNIX)\n"
                   f"    s.connect({name!r})\n    print('reached')\n"
                   "except OSError as e:\n    print('blocked', e.errno)\n")
        r = run(program, "namespaces")
        assert r.stdout.startswith("blocked"), r
        # without the seccomp filter the network namespace alone scopes abstract sockets
        alone = subprocess.run(["unshare", "--net", sys.executable, "-I", "-c", program],
                               capture_output=True, text=True, timeout=60)
        assert alone.stdout.strip() == f"blocked {errno.ECONNREFUSED}", alone
        assert nothing_arrived(listener)


@pytest.mark.parametrize("mode", MODES)
def test_host_loopback_tcp_is_unreachable(mode: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        program = ("import socket\ntry:\n    s = socket.create_connection(('127.0.0.1', "
                   f"{port}), timeout=2)\n    print('reached')\n"
                   "except Exception as e:\n    print('blocked', type(e).__name__)\n")
        r = run(program, mode)
        assert r.stdout.startswith("blocked"), r
        assert nothing_arrived(listener)


def _alive_with_comm(comm: str) -> list[int]:
    """Host pids whose name is `comm` and that are not zombies."""
    pids = []
    for e in os.listdir("/proc"):
        try:
            if e.isdigit() and Path(f"/proc/{e}/comm").read_text().strip() == comm:
                if Path(f"/proc/{e}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(e))
        except OSError:
            continue
    return pids


DAEMON = """
import os, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open("/proc/self/comm", "w").write(COMM)
        os.write(w, b"up")
        time.sleep(2.0)  # past the end of the run, even one killed at its wall clock
        try:
            open(MARKER, "w").write("survived")
        except OSError:
            pass
        time.sleep(60)
    os._exit(0)
os.close(w)
up = os.read(r, 2)
names = []
for p in os.listdir("/proc"):  # the host's /proc in the fallback modes: processes come and go
    try:
        names.append(open("/proc/%s/comm" % p).read().strip())
    except OSError:
        pass
print("daemon alive" if up == b"up" and COMM in names else "no daemon")
"""


@pytest.mark.parametrize("hang", [False, True], ids=["exits", "killed_at_wall_clock"])
@pytest.mark.parametrize("mode", MODES)
def test_no_daemon_outlives_its_run(mode: str, hang: bool, outside: Path) -> None:
    comm = "sbxd" + secrets.token_hex(4)
    marker = outside / "marker"
    program = DAEMON.replace("COMM", repr(comm)).replace("MARKER", repr(str(marker)))
    if hang:
        program += "import sys\nsys.stdout.flush()\nwhile True:\n    pass\n"
    r = run(program, mode, SandboxLimits(wall_s=1.5, cpu_s=10))
    assert r.stdout == "daemon alive\n" and r.timed_out == hang, r
    assert _alive_with_comm(comm) == []
    time.sleep(2.5)  # past the moment the daemon would have written its marker
    assert not marker.exists() and _alive_with_comm(comm) == []


GRADER = """
import sys
from reward_service.sandbox import SandboxLimits, run_python
run_python(sys.argv[1], "", SandboxLimits(wall_s=60.0, cpu_s=60), mode=sys.argv[2])
"""


def _wait_for(check: object, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not check():  # type: ignore[operator]
        time.sleep(0.05)


@pytest.mark.parametrize("mode", MODES)
def test_no_daemon_outlives_a_killed_grader(mode: str, outside: Path) -> None:
    """The grading process is SIGKILLed mid-run (an item's own limit): the program and its
    `setsid` daemon go with it."""
    comm = "sbxd" + secrets.token_hex(4)
    marker = outside / "marker"
    program = DAEMON.replace("COMM", repr(comm)).replace("MARKER", repr(str(marker)))
    program += "import time\ntime.sleep(60)\n"
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    grader = subprocess.Popen([sys.executable, "-c", GRADER, program, mode], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": path})
    try:
        _wait_for(lambda: _alive_with_comm(comm), 30.0)
        assert _alive_with_comm(comm), "the daemon never started"
    finally:
        grader.kill()
        grader.wait()
    _wait_for(lambda: not _alive_with_comm(comm), 10.0)
    assert _alive_with_comm(comm) == []
    time.sleep(2.5)  # past the moment the daemon would have written its marker
    assert not marker.exists() and _alive_with_comm(comm) == []


@needs_ns
def test_nothing_is_written_outside_the_work_dir(outside: Path) -> None:
    tag = "sbx-" + secrets.token_hex(4)
    targets = [f"/tmp/{tag}", f"/dev/shm/{tag}", f"/var/tmp/{tag}", str(ROOT / tag),
               os.path.join(os.path.expanduser("~"), tag), str(outside / tag),
               str(ROOT / "pyproject.toml")]
    before = (ROOT / "pyproject.toml").read_bytes()
    program = (f"for p in {targets!r}:\n    try:\n        open(p, 'a').write('x')\n"
               "        print('wrote', p)\n    except OSError as e:\n        print('blocked')\n"
               "open('own.txt', 'w').write('x')\nprint(open('own.txt').read())\n")
    r = run(program, "namespaces")
    assert r.stdout.splitlines() == ["blocked"] * len(targets) + ["x"], r
    assert not [t for t in targets[:-1] if os.path.exists(t)]
    assert (ROOT / "pyproject.toml").read_bytes() == before


FORK_EXEC = """
import importlib.machinery, importlib.util, os, sys
for how in ("import", "loader"):
    try:
        if how == "import":
            import _posixsubprocess as ps
        elif "_posixsubprocess" in sys.builtin_module_names:  # by hand, past the importer
            import _imp
            ps = _imp.create_builtin(importlib.machinery.BuiltinImporter.find_spec(
                "_posixsubprocess"))
        else:
            import _imp
            path = [p for p in sys.path if p.endswith("lib-dynload")][0]
            name = [f for f in os.listdir(path) if f.startswith("_posixsubprocess.")][0]
            spec = importlib.util.spec_from_file_location(
                "_posixsubprocess", os.path.join(path, name),
                loader=importlib.machinery.ExtensionFileLoader(
                    "_posixsubprocess", os.path.join(path, name)))
            ps = _imp.create_dynamic(spec)
        r, w = os.pipe()  # the exec error pipe, as subprocess uses it
        args = [sys.executable.encode(), b"-c", PAYLOAD]
        pid = ps.fork_exec(args, [args[0]], True, (w,), None, None, -1, -1, -1, -1, -1, -1,
                           r, w, True, False, -1, None, None, None, -1, None, False)
        os.close(w)
        err = b"".join(iter(lambda: os.read(r, 200), b""))
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        print(how, "exec failed" if err else "started", err, code)
    except BaseException as e:
        print(how, "blocked", type(e).__name__, e)
"""


@pytest.mark.parametrize("mode", MODES)
def test_fork_exec_cannot_reach_the_host(mode: str) -> None:
    """The payload that reached a host TCP listener: `_posixsubprocess.fork_exec` started a new
    interpreter without the fallback modes' audit hook. The seccomp filter now refuses every exec
    in the fallback modes, whichever way the module was loaded (import, `_imp.create_dynamic`,
    `create_builtin`); on a machine without the filter the hook refuses importing it. In
    `namespaces` mode exec is allowed: the new interpreter runs and finds no network (the filter
    is inherited through exec)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        payload = (f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
                   "; print('reached')").encode()
        r = run(FORK_EXEC.replace("PAYLOAD", repr(payload)), mode)
        assert nothing_arrived(listener), r
    assert "reached" not in r.stdout
    lines = r.stdout.splitlines()
    if mode == "namespaces":
        assert lines == ["import started b'' 1", "loader started b'' 1"], r  # no network
        assert r.stderr.count("PermissionError: [Errno 1] Operation not permitted") == 2, r
    elif sandbox.seccomp_filter(False) is not None:
        assert lines == [f"{how} exec failed b'OSError:1:' 255" for how in ("import", "loader")], r
    else:  # no kernel filter on this machine: the hook is all there is
        assert lines[0] == "import blocked PermissionError sandbox: import is not allowed", r


@needs_ns
def test_proc_shows_only_the_sandbox() -> None:
    r = run("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))",
            "namespaces")
    assert r.stdout.strip() == "[1, 2]", r  # the monitor (pid 1) and the program


FIND_SECRET = """
import os
seen = [k for k, v in os.environ.items() if SECRET in v]
for p in os.listdir("/proc"):
    try:
        if SECRET.encode() in open("/proc/%s/environ" % p, "rb").read():
            seen.append(p)
    except OSError:
        pass
print("seen" if seen else "unseen")
"""


@pytest.mark.parametrize("mode", MODES)
def test_environment_secrets_stay_outside(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sbx-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("AREAL_SANDBOX_TEST_SECRET", secret)
    # a host process started with the secret in its environment, like the service itself
    holder = subprocess.Popen(["sleep", "60"], env={**os.environ})
    try:
        r = run(FIND_SECRET.replace("SECRET", repr(secret)), mode)
    finally:
        holder.kill()
        holder.wait()
    if mode == "rlimits":  # same user as the service: /proc/<pid>/environ is readable
        assert r.stdout.strip() == "seen", r
        assert "environment" in sandbox.UNCONTAINED["rlimits"]
    else:
        assert r.stdout.strip() == "unseen", r


@needs_ns
def test_host_ipc_is_out_of_reach() -> None:
    """SysV shared memory of the host (new IPC namespace, and seccomp) and POSIX shared memory
    in /dev/shm (not in the sandbox's root)."""
    from multiprocessing import shared_memory

    libc = ctypes.CDLL(None, use_errno=True)
    key = 0x5EED0000 + secrets.randbelow(1 << 16)
    shmid = libc.shmget(key, 4096, 0o1000 | 0o666)  # IPC_CREAT
    assert shmid >= 0
    posix = shared_memory.SharedMemory(create=True, size=4096)
    try:
        program = ("import ctypes\nfrom multiprocessing import shared_memory\n"
                   f"print(ctypes.CDLL(None).shmget({key}, 0, 0))\n"
                   f"try:\n    shared_memory.SharedMemory({posix.name!r})\n    print('reached')\n"
                   "except OSError:\n    print('blocked')\n")
        r = run(program, "namespaces")
        assert r.stdout.split() == ["-1", "blocked"], r
    finally:
        libc.shmctl(shmid, 0, None)  # IPC_RMID
        posix.close()
        posix.unlink()
