"""The console of `areal-sys`: our own lines on the terminal, third-party logs in files.

At default verbosity a command's driver sends its file descriptors 1 and 2 to
RUN_DIR/logs/<process>.log (`capture`): whatever C code, child processes, Python's `sys.stderr`,
warnings and logging handlers write (vLLM's engine dump, Ray's and DeepSpeed's messages, torch's
warnings) lands there, while `sys.stdout`, where our own code prints, stays on the terminal.
Each Ray actor does the same in its own process (`logged`; controller/runtime.py names each
actor's file: rollout-0.log, trainer-0.log, critic.log, reward.log), so Ray runs with
`log_to_driver=False` and nothing is lost. With `--verbose` (`logging.verbose`) nothing is
redirected and Ray streams every actor's output to the terminal.

`Console` keeps one live status line (a loop's progress, controller/progress.py) at the bottom of
a terminal: a line printed while it is shown goes above it, and the live line is drawn again
below. Off a terminal (a pipe, a Ray job's log) there is no live line, only the printed lines.

Nothing here imports more than the standard library: `import areal_sys` stays light.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

# set per actor by controller/runtime.py: the file its process's fd 1 and 2 go to
LOG_FILE_ENV = "AREAL_SYS_LOG_FILE"
# "1": every areal-sys command started below this one runs as with --verbose (`bench`)
VERBOSE_ENV = "AREAL_SYS_VERBOSE"
CLEAR_LINE = "\r\x1b[K"
# our own packages' loggers: in an actor's log with this format, their warnings and errors are
# found again by `own_warnings` and shown on the driver's console
OWN_LOGGERS = ("areal_sys", "controller", "workers", "reward_service")
OWN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_OWN = "|".join(OWN_LOGGERS)
OWN_RECORD = re.compile(rf"^\S+ \S+ (WARNING|ERROR|CRITICAL) ((?:{_OWN})(?:\.\w+)*): (.*)$")


def error_line(err: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, at most `limit` characters: an error as one line of an
    event, a log or a console message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:limit]


def log_dir(run_dir: str | Path) -> Path:
    """RUN_DIR/logs, absolute: actors' working directories differ from the driver's."""
    return Path(run_dir).expanduser().resolve() / "logs"


def verbose_from_env() -> bool:
    return os.environ.get(VERBOSE_ENV, "") == "1"


def redirect_output(path: Path) -> None:
    """Point this process's fd 1 and 2 at `path` (appended to, created with its directory),
    after a header line with the time and pid. Every later write from Python, C code and child
    processes started afterwards (vLLM's engine core, grader processes) goes there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # None or closed in some processes
            pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, f"----- {stamp} pid {os.getpid()} -----\n".encode())
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def logged(cls: type) -> type:
    """`cls` whose constructor first sends its process's output to the file named by
    $AREAL_SYS_LOG_FILE, when that is set (controller/runtime.py sets it in each actor's
    runtime_env). The class keeps its name (Ray's process titles, `ray::RolloutWorker`); a
    restart by Ray runs the constructor, and so the redirection, again."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if path := os.environ.get(LOG_FILE_ENV):
            redirect_output(Path(path))
            log_own_records()
        cls.__init__(self, *args, **kwargs)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__doc__": cls.__doc__,
                                       "__qualname__": cls.__qualname__})


def log_own_records() -> list[tuple[logging.Logger, logging.Handler, int, bool]]:
    """Our own loggers write INFO and above to this process's stderr in OWN_FORMAT (once per
    process), not through whatever handlers a library gave the root logger. Returns what
    `unlog_own_records` needs to undo it."""
    added = []
    for name in OWN_LOGGERS:
        logger = logging.getLogger(name)
        if any(getattr(h, "own_format", False) for h in logger.handlers):
            continue
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(OWN_FORMAT))
        handler.own_format = True  # type: ignore[attr-defined]
        added.append((logger, handler, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return added


def unlog_own_records(added: list[tuple[logging.Logger, logging.Handler, int, bool]]) -> None:
    for logger, handler, level, propagate in added:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def own_warnings(logs: Path, since: float = 0.0, limit: int = 8) -> list[str]:
    """Console lines for the warnings and errors our own code logged into the files of `logs`
    (OWN_FORMAT lines) from Unix time `since` on (the files are appended to across attempts),
    each once, with the file that has the details: `warning: MESSAGE (see FILE)`; at most
    `limit`, then one line counting the rest."""
    start = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    found: dict[str, None] = {}
    for path in sorted(logs.glob("*.log")) if logs.is_dir() else []:
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if (m := OWN_RECORD.match(line.rstrip("\n"))) and line[:19] >= start:
                    level = "warning" if m[1] == "WARNING" else "error"
                    found[f"{level}: {m[3]} (see {path})"] = None
    lines = list(found)
    if len(lines) > limit:
        return lines[:limit] + [f"... and {len(lines) - limit} more warnings in {logs}"]
    return lines


class Console(io.TextIOBase):
    """A text stream on the terminal with one live status line kept below what is written."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = _isatty(stream)
        self.live = ""
        self._shown = False  # the live line is on screen, the cursor at its end

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.tty

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        if self._shown:
            self.stream.write(CLEAR_LINE)
            self._shown = False
        self.stream.write(text)
        if self.live and text.endswith("\n"):
            self._draw()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def set_live(self, line: str) -> None:
        """Show `line` as the live status line (on a terminal; nothing otherwise)."""
        if not self.tty:
            return
        self.live = line
        if self._shown:
            self.stream.write(CLEAR_LINE)
        self._draw()

    def end_live(self, keep: bool = True) -> None:
        """Stop the live line: leave its last state as a printed line (`keep`) or erase it."""
        if self._shown:
            self.stream.write("\n" if keep else CLEAR_LINE)
            self._shown = False
        self.live = ""
        self.stream.flush()

    def _draw(self) -> None:
        width = shutil.get_terminal_size((100, 24)).columns - 1
        line = self.live if len(self.live) <= width else self.live[: max(0, width - 3)] + "..."
        self.stream.write(line)
        self._shown = True
        self.stream.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


@contextmanager
def capture(log_file: Path | None) -> Iterator[Console]:
    """For the duration, `sys.stdout` is a Console on the terminal; with `log_file`, this
    process's fd 1 and 2 (so `sys.stderr`, C code, logging handlers, child processes) go to that
    file. Both are restored on exit, also on an exception (which the CLI then prints). A log
    file that cannot be written is said in one line, and the output stays on the console."""
    saved_stdout = sys.stdout
    terminal: TextIO = saved_stdout
    saved_fds: tuple[int, int] | None = None
    own_records: list[tuple[logging.Logger, logging.Handler, int, bool]] = []
    saved_stdout.flush()
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
        except OSError as e:
            print(f"note: cannot write {log_file} ({e.strerror or e}): third-party output stays "
                  "on the console")
            log_file = None
    if log_file is not None:
        try:  # the terminal, kept open on its own descriptor while fd 1 goes to the file
            terminal = os.fdopen(os.dup(saved_stdout.fileno()), "w", buffering=1,
                                 encoding=getattr(saved_stdout, "encoding", None) or "utf-8",
                                 errors="replace")
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            terminal = saved_stdout  # a stream without a descriptor (pytest's capture)
        saved_fds = (os.dup(1), os.dup(2))
        redirect_output(log_file)
        own_records = log_own_records()  # the driver's own warnings, for `own_warnings`
    console = Console(terminal)
    sys.stdout = console
    try:
        yield console
    finally:
        console.end_live()
        console.stream = saved_stdout  # whoever kept `sys.stdout` (Ray's colorama) writes on
        sys.stdout = saved_stdout
        unlog_own_records(own_records)
        if saved_fds is not None:
            sys.stderr.flush()
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            os.close(saved_fds[0])
            os.close(saved_fds[1])
            if terminal is not saved_stdout:
                terminal.close()
