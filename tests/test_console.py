"""areal_sys/console.py: a process's output redirected into its log file, the driver's console
kept for our own lines, and the live status line on a terminal.

The redirections change file descriptors 1 and 2, so each one runs in a child interpreter whose
output the test reads: pytest's own capture is never disturbed.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from areal_sys.console import CLEAR_LINE, Console, log_dir

ROOT = Path(__file__).resolve().parent.parent


def child(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "TMP_DIR": str(tmp_path)})


def test_redirect_output_sends_python_c_and_child_process_output_to_the_file(tmp_path):
    res = child("""
        import os, subprocess, sys
        from pathlib import Path
        from areal_sys.console import redirect_output
        print("before", flush=True)
        redirect_output(Path(os.environ["TMP_DIR"]) / "logs" / "rollout-0.log")
        print("python stdout")
        print("python stderr", file=sys.stderr)
        os.write(1, b"fd one\\n")
        subprocess.run(["echo", "a child process"])
        import warnings; warnings.warn("a library warning")
        """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "before\n" and res.stderr == ""
    text = (tmp_path / "logs" / "rollout-0.log").read_text()
    for line in ("python stdout", "python stderr", "fd one", "a child process",
                 "a library warning"):
        assert line in text, line
    assert text.startswith("----- ") and " pid " in text.splitlines()[0]


def test_capture_keeps_our_lines_on_the_console_and_the_rest_in_the_log(tmp_path):
    res = child("""
        import logging, os, subprocess, sys
        from pathlib import Path
        from areal_sys.console import capture
        log = Path(os.environ["TMP_DIR"]) / "logs" / "driver.log"
        with capture(log):
            print("step 1/3: ours")
            logging.getLogger("ray").warning("ray's warning")
            print("a library's stderr", file=sys.stderr)
            os.write(1, b"C code on fd 1\\n")
            subprocess.run(["echo", "a child process"])
        print("after: ours again")
        print("stderr again", file=sys.stderr)
        """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["step 1/3: ours", "after: ours again"]
    assert res.stderr == "stderr again\n"
    text = (tmp_path / "logs" / "driver.log").read_text()
    for line in ("ray's warning", "a library's stderr", "C code on fd 1", "a child process"):
        assert line in text, line
    assert "ours" not in text


def test_capture_without_a_file_redirects_nothing(tmp_path):
    res = child("""
        import sys
        from areal_sys.console import Console, capture
        with capture(None) as console:
            assert isinstance(sys.stdout, Console)
            print("ours")
            print("theirs", file=sys.stderr)
        assert not isinstance(sys.stdout, Console)
        """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert (res.stdout, res.stderr) == ("ours\n", "theirs\n")


def test_capture_restores_the_descriptors_when_the_run_fails(tmp_path):
    res = child("""
        import os, sys
        from pathlib import Path
        from areal_sys.console import capture
        try:
            with capture(Path(os.environ["TMP_DIR"]) / "driver.log"):
                raise RuntimeError("engine died")
        except RuntimeError:
            print("error line", file=sys.stderr)
        """, tmp_path)
    assert res.returncode == 0 and res.stderr == "error line\n"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_line_stays_below_printed_lines_on_a_terminal():
    term = FakeTerminal()
    console = Console(term)
    console.set_live("train 1/3")
    console.write("step 1/3: reward 0.5")
    console.write("\n")
    console.set_live("train 2/3")
    console.end_live(keep=True)
    assert term.getvalue() == ("train 1/3" + CLEAR_LINE + "step 1/3: reward 0.5\n"
                               + "train 1/3" + CLEAR_LINE + "train 2/3\n")


def test_no_live_line_off_a_terminal():
    out = io.StringIO()
    console = Console(out)
    console.set_live("train 1/3")
    console.write("step 1/3\n")
    console.end_live()
    assert out.getvalue() == "step 1/3\n"


def test_a_live_line_wider_than_the_terminal_is_cut(monkeypatch):
    import os

    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback=None: os.terminal_size((20, 5)))
    term = FakeTerminal()
    Console(term).set_live("x" * 50)
    assert term.getvalue() == "x" * 16 + "..."


def test_logged_redirects_in_the_constructor_and_keeps_the_class_name(tmp_path, monkeypatch):
    from areal_sys import console

    seen: list[object] = []
    monkeypatch.setattr(console, "redirect_output", seen.append)
    monkeypatch.setattr(console, "log_own_records", lambda: seen.append("own records"))

    class RolloutWorker:
        """A rollout worker (fake)."""

        def __init__(self, model: str, *, worker_id: int) -> None:
            self.args = (model, worker_id)

    cls = console.logged(RolloutWorker)
    monkeypatch.delenv(console.LOG_FILE_ENV, raising=False)
    assert cls("m", worker_id=0).args == ("m", 0) and seen == []
    monkeypatch.setenv(console.LOG_FILE_ENV, str(tmp_path / "rollout-0.log"))
    worker = cls("m", worker_id=1)
    assert worker.args == ("m", 1) and isinstance(worker, RolloutWorker)
    assert seen == [tmp_path / "rollout-0.log", "own records"]
    assert (cls.__name__, cls.__doc__) == ("RolloutWorker", RolloutWorker.__doc__)


def test_log_dir_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert log_dir("runs/x") == tmp_path.resolve() / "runs" / "x" / "logs"


def test_a_log_file_that_cannot_be_written_leaves_the_output_on_the_console(tmp_path):
    res = child("""
        import os, sys
        from pathlib import Path
        from areal_sys.console import capture
        blocker = Path(os.environ["TMP_DIR"]) / "run"
        blocker.write_text("a file where the run_dir should be")
        with capture(blocker / "logs" / "driver.log"):
            print("theirs", file=sys.stderr)
        """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("note: cannot write ") and "driver.log" in res.stdout
    assert res.stderr == "theirs\n"


def test_an_actors_own_warnings_are_found_again_with_their_file(tmp_path):
    """What `logged` sets up in an actor (our loggers in OWN_FORMAT into the redirected
    stderr), read back by the driver: our warnings and errors, once each, not the libraries'."""
    res = child("""
        import logging, os
        from pathlib import Path
        from areal_sys.console import log_own_records, redirect_output
        redirect_output(Path(os.environ["TMP_DIR"]) / "logs" / "reward.log")
        log_own_records()
        log_own_records()  # a restarted actor: still one handler
        sandbox = logging.getLogger("reward_service.sandbox")
        sandbox.info("grader processes started")
        sandbox.warning("isolation mode 'none'")
        sandbox.warning("isolation mode 'none'")
        logging.getLogger("workers.rollout").error("engine died")
        logging.getLogger("vllm.engine").warning("Failed to load weights")
        """, tmp_path)
    assert res.returncode == 0, res.stderr
    from areal_sys.console import own_warnings

    log = tmp_path / "logs" / "reward.log"
    assert log.read_text().count("grader processes started") == 1  # INFO is logged, once
    assert own_warnings(tmp_path / "logs") == [
        f"warning: isolation mode 'none' (see {log})", f"error: engine died (see {log})"]
    assert own_warnings(tmp_path / "logs", since=time.time() + 5) == []  # an earlier attempt's
    assert own_warnings(tmp_path / "logs", limit=1) == [
        f"warning: isolation mode 'none' (see {log})",
        f"... and 1 more warnings in {tmp_path / 'logs'}"]
    assert own_warnings(tmp_path / "nowhere") == []


def test_a_library_that_kept_the_console_still_writes_after_the_capture(tmp_path):
    """Ray's colorama keeps `sys.stdout` as it found it at import, inside the capture, and
    writes to it at exit."""
    res = child("""
        import os, sys
        from pathlib import Path
        from areal_sys.console import capture
        with capture(Path(os.environ["TMP_DIR"]) / "driver.log"):
            kept = sys.stdout
        kept.write("written at exit\\n")
        """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "written at exit\n"


def test_the_capture_leaves_our_loggers_as_it_found_them(tmp_path):
    import logging

    from areal_sys.console import capture

    logger = logging.getLogger("reward_service")
    before = (list(logger.handlers), logger.level, logger.propagate)
    with capture(tmp_path / "driver.log"):
        assert logger.propagate is False and len(logger.handlers) == len(before[0]) + 1
    assert (list(logger.handlers), logger.level, logger.propagate) == before
