"""What runs inside the code sandbox (reward_service/sandbox.py): the launcher script and the
seccomp filter it installs. Kept apart so that sandbox.py reads as the supervisor's side.
"""

from __future__ import annotations

import platform
import struct

# The launcher (`python -I -c LAUNCHER cfg prog.py`) runs as root in the new namespaces (or
# directly in the fallback modes). It builds the sandbox, then forks: the child drops privileges,
# installs the seccomp filter and runs the program in the same interpreter (no second interpreter
# start); the parent stays as the monitor (pid 1 of the PID namespace, or a child subreaper in the
# fallback modes) and, once the program exits or the supervisor closes the lifeline pipe, kills
# every process the program left, reports the program's exit status and exits. Standard library.
LAUNCHER = r"""
import contextlib, ctypes, json, os, resource, runpy, select, signal, sys
cfg = json.loads(sys.argv[1])
d, uid, ns, status = cfg["dir"], cfg["uid"], cfg["mode"] == "namespaces", cfg["status"]
hook, bpf = cfg["hook"], bytes.fromhex(cfg["seccomp"])
libc = ctypes.CDLL(None, use_errno=True)
UL = ctypes.c_ulong
def fail(msg):
    sys.stderr.write("sandbox setup failed: " + msg + "\n"); sys.stderr.flush(); os._exit(121)
def enc(s):
    return None if s is None else s.encode()
def mount(src, tgt, fs, flags, data=None):
    if libc.mount(enc(src), enc(tgt), enc(fs), UL(flags), enc(data)) != 0:
        fail("mount %s: %s" % (tgt, os.strerror(ctypes.get_errno())))
def prctl(*args):
    return libc.prctl(*[UL(a) for a in args] + [UL(0)] * (5 - len(args)))
RO, NOSUID, NODEV, NOEXEC, REMOUNT, BIND = 1, 2, 4, 8, 32, 4096
def bind(src, tgt, flags=RO | NOSUID | NODEV):
    mount(src, tgt, None, BIND)
    mount(None, tgt, None, REMOUNT | BIND | flags)
def minimal_root(root):
    # a fresh tmpfs holding read-only binds of what the interpreter needs, and nothing else
    mount(None, "/", None, 16384 | (1 << 18))  # MS_REC | MS_PRIVATE
    mount("tmpfs", root, "tmpfs", NOSUID | NODEV, "size=8m,mode=0755")
    bound = []
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr"):
        p = "/" + top
        if os.path.islink(p):
            os.symlink(os.readlink(p), root + p)
        elif os.path.isdir(p):
            os.mkdir(root + p); bind(p, root + p); bound.append(p + "/")
    prefix = cfg["prefix"]
    if not any((prefix + "/").startswith(b) for b in bound):
        os.makedirs(root + prefix); bind(prefix, root + prefix)
    os.mkdir(root + "/etc")
    for name in ("ld.so.cache", "localtime"):
        with contextlib.suppress(OSError):
            data = open("/etc/" + name, "rb").read()
            open(root + "/etc/" + name, "wb").write(data)
    user = "sandbox:x:%d:%d::/sandbox:/bin/false\n"
    for name, text in (("passwd", "root:x:0:0::/:/bin/false\n" + user),
                       ("group", "root:x:0:\nsandbox:x:%d:\n"), ("hosts", "127.0.0.1 localhost\n")):
        open(root + "/etc/" + name, "w").write(text.replace("%d", str(uid)))
    os.mkdir(root + "/dev")
    for name in ("null", "zero", "full", "random", "urandom"):
        open(root + "/dev/" + name, "w").close()
        bind("/dev/" + name, root + "/dev/" + name, NOSUID)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, root + "/dev/" + name)
    os.mkdir(root + "/proc")
    mount("proc", root + "/proc", "proc", NOSUID | NODEV | NOEXEC)
    os.mkdir(root + "/sandbox")
    opts = "size=%dm,mode=0700,uid=%d,gid=%d" % (cfg["tmpfs_mb"], uid, uid)
    mount("tmpfs", root + "/sandbox", "tmpfs", NOSUID | NODEV, opts)
    libc.sethostname(b"sandbox", 7)  # the UTS namespace starts with the host's name
    os.chdir(root)
    if libc.syscall(ctypes.c_long(cfg["pivot_root"]), b".", b".") == 0:
        if libc.umount2(b".", 2) != 0:  # MNT_DETACH: the host's tree is gone from this namespace
            fail("detach the old root: " + os.strerror(ctypes.get_errno()))
    elif libc.chroot(b".") != 0:  # / on initramfs: no pivot_root; the program cannot chroot
        fail("pivot_root and chroot: " + os.strerror(ctypes.get_errno()))
    os.chdir("/")
    mount(None, "/", None, REMOUNT | BIND | RO | NOSUID | NODEV)
    return "/sandbox"
files = {n: open(os.path.join(d, n), "rb").read() for n in ("prog.py", "stdin.txt")}
work = minimal_root(d) if ns else d
if ns:
    for name, data in files.items():
        open(os.path.join(work, name), "wb").write(data)
        os.chown(os.path.join(work, name), uid, uid)
def children():
    me = os.getpid()
    try:
        return [int(p) for p in open("/proc/%d/task/%d/children" % (me, me)).read().split()]
    except OSError:
        kids = []
        for e in os.listdir("/proc"):
            with contextlib.suppress(OSError):
                stat = open("/proc/%s/stat" % e).read() if e.isdigit() else ") X 0"
                if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                    kids.append(int(e))
        return kids
def reap_all():
    # every orphan of the program re-parents to this subreaper: kill and reap until none is left
    while True:
        for pid in children():
            with contextlib.suppress(OSError): os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
if not ns:
    prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
sys.stderr.flush()
pid = os.fork()
def wait_program():
    # the program's wait status; None: the supervisor gave up (limit, output cap) or died
    try:
        pfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # Linux before 5.3: poll
        while not select.select([cfg["life"]], [], [], 0.01)[0]:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                return st
        return None
    return os.waitpid(pid, 0)[1] if pfd in select.select([pfd, cfg["life"]], [], [])[0] else None
if pid:
    st = wait_program()
    if st is None:
        os.kill(pid, signal.SIGKILL)  # still an unreaped child: the pid cannot have been reused
        st = os.waitpid(pid, 0)[1]
    code = os.waitstatus_to_exitcode(st)
    if not ns:
        reap_all()
    with contextlib.suppress(OSError): os.write(status, b"E%d" % code)
    os._exit(0)  # as pid 1 of the PID namespace: the kernel kills whatever is left in it
os.close(cfg["life"])
lim = cfg["limits"]
for res, val in ((resource.RLIMIT_CPU, lim["cpu_s"]), (resource.RLIMIT_AS, lim["memory_mb"] << 20),
                 (resource.RLIMIT_NPROC, lim["max_procs"]),
                 (resource.RLIMIT_NOFILE, lim["max_open_files"]),
                 (resource.RLIMIT_FSIZE, lim["max_file_mb"] << 20), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(res, (val, val))
if uid is not None and os.geteuid() == 0:
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the monitor
prctl(4, 1)  # PR_SET_DUMPABLE, cleared by the uid change: the program may read its own /proc
if bpf:
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Prog(len(bpf) // 8, ctypes.addressof(buf))
    if prctl(38, 1) != 0 or libc.prctl(UL(22), UL(2), ctypes.byref(fprog), UL(0), UL(0)) != 0:
        fail("seccomp filter: " + os.strerror(ctypes.get_errno()))
os.chdir(work)
fd = os.open("stdin.txt", os.O_RDONLY); os.dup2(fd, 0); os.close(fd)
os.environ.clear()
os.environ.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work})
sys.argv = ["prog.py"]
os.write(status, b"R"); os.close(status)  # set-up done: the program's wall clock starts now
del cfg, files, libc
if hook:
    # a second, Python-level layer with clear errors. `_posixsubprocess.fork_exec` execs past
    # it: without the seccomp filter (which refuses every exec) that module is refused too,
    # at the cost of `import subprocess` and `import asyncio`
    def _hook(event, args, _deny=("socket.", "ctypes.", "os.exec", "os.posix_spawn", "os.system",
                                 "subprocess.Popen", "os.spawn", "pty."), _mods=() if bpf else
              ("_posixsubprocess",)):
        if event.startswith(_deny) or event == "import" and args[0] in _mods:
            raise PermissionError("sandbox: %s is not allowed" % event)
    sys.addaudithook(_hook)
runpy.run_path("prog.py", run_name="__main__")
"""


# seccomp: syscall numbers (x86_64, aarch64) of what no program needs; `socketpair` stays for a
# connected pair of unix stream sockets (asyncio's self-pipe), `clone` without namespace flags.
_DENIED = ("socket", "execve", "execveat", "unshare", "setns", "mount", "umount2", "pivot_root",
           "chroot", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "keyctl",
           "add_key", "request_key", "io_uring_setup", "io_uring_enter", "io_uring_register",
           "bpf", "perf_event_open", "userfaultfd", "shmget", "shmat", "shmctl", "semget", "semop",
           "semctl", "semtimedop", "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink",
           "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr", "open_tree",
           "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr")
_NAMES = (*_DENIED, "socketpair", "clone", "clone3")
_ARCHES: dict[str, tuple[int, tuple[int, ...]]] = {  # AUDIT_ARCH_*, numbers in _NAMES order
    "x86_64": (0xC000003E, (41, 59, 322, 272, 308, 165, 166, 155, 161, 101, 310, 311, 438, 250,
                            248, 249, 425, 426, 427, 321, 298, 323, 29, 30, 31, 64, 65, 66, 220,
                            68, 69, 70, 71, 240, 241, 242, 243, 244, 245, 428, 429, 430, 431, 432,
                            433, 442, 53, 56, 435)),
    "aarch64": (0xC00000B7, (198, 221, 281, 97, 268, 40, 39, 41, 51, 117, 270, 271, 438, 219, 217,
                             218, 425, 426, 427, 280, 241, 282, 194, 196, 195, 190, 193, 191, 192,
                             186, 189, 188, 187, 180, 181, 182, 183, 184, 185, 428, 429, 430, 431,
                             432, 433, 442, 199, 220, 435)),
}
_CLONE_NS_FLAGS = 0x7E020000  # CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET


def seccomp_filter(allow_exec: bool) -> bytes | None:
    """The classic-BPF seccomp program the sandboxed program runs under (None: unknown machine).
    Denied calls fail with EPERM (ENOSYS for clone3, so libc falls back to clone); another
    architecture's calls (x32, i386) are refused outright."""
    arch = _ARCHES.get(platform.machine())
    if arch is None:
        return None
    audit, numbers = arch
    nr = dict(zip(_NAMES, numbers, strict=True))
    ld, jeq, jge, jset, ret, alu_and = 0x20, 0x15, 0x35, 0x45, 0x06, 0x54
    allow, eperm, enosys, kill = 0x7FFF0000, 0x50000 | 1, 0x50000 | 38, 0x80000000
    prog: list[tuple[int, int, int, int]] = [(ld, 0, 0, 4), (jeq, 1, 0, audit), (ret, 0, 0, kill),
                                             (ld, 0, 0, 0)]
    if platform.machine() == "x86_64":
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, enosys)]  # x32 numbers
    prog += [(jeq, 0, 7, nr["socketpair"]), (ld, 0, 0, 16), (jeq, 0, 3, 1), (ld, 0, 0, 24),
             (alu_and, 0, 0, 0xF), (jeq, 1, 0, 1), (ret, 0, 0, eperm), (ret, 0, 0, allow)]
    prog += [(jeq, 0, 4, nr["clone"]), (ld, 0, 0, 16), (jset, 0, 1, _CLONE_NS_FLAGS),
             (ret, 0, 0, eperm), (ret, 0, 0, allow), (jeq, 0, 1, nr["clone3"]), (ret, 0, 0, enosys)]
    for name in _DENIED:
        if not (allow_exec and name in ("execve", "execveat")):
            prog += [(jeq, 0, 1, nr[name]), (ret, 0, 0, eperm)]
    prog.append((ret, 0, 0, allow))
    return b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in prog)


PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine(), -1)
