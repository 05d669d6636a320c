"""The console of a real `areal-sys run` at default verbosity (the demo's config, a few steps,
Ray + vLLM-CPU + DeepSpeed + the reward service): our own lines only on the console, every
third-party message in RUN_DIR/logs/<process>.log."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e_runs import launch

pytestmark = pytest.mark.slow

STEPS = 2
# the forms of every line the run itself prints (controller/launch.py, placement.py, progress.py)
OWN_LINES = ("algorithm: ", "cluster: ", "step ", "eval ", "done: ", "warning: ",
             "held-out pass rate: ")
# vLLM's log format: `INFO 11-29 14:28:20 [model.py:733] ...`
VLLM_LINE = re.compile(r"(INFO|WARNING) \d\d-\d\d \d\d:\d\d:\d\d \[[\w.]+:\d+\]")


def test_the_console_holds_our_lines_and_the_logs_hold_the_rest(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    res = launch("configs/local_tiny.yaml", run_dir, f"trainer.total_steps={STEPS}",
                 "controller.batch_size=4", "rollout.n_samples=4", "eval.before_and_after=false",
                 "logging.log_every=1")
    lines = res.stdout.splitlines()
    strangers = [ln for ln in lines if not ln.startswith(OWN_LINES)]
    assert strangers == [], strangers
    assert res.stderr.strip() == "", res.stderr[-3000:]
    assert [ln.split(":")[0] for ln in lines if ln.startswith("step ")] == ["step 1/2", "step 2/2"]
    assert lines[-1].startswith(f"done: {STEPS} steps") and "logs in" in lines[-1]

    logs = run_dir / "logs"
    assert sorted(p.name for p in logs.iterdir()) == [
        "driver.log", "reward.log", "rollout-0.log", "trainer-0.log"]
    text = {p.stem: p.read_text() for p in logs.iterdir()}
    assert all(t.startswith("----- ") for t in text.values())
    assert "Started a local Ray instance" in text["driver"]  # Ray's, in the driver
    assert VLLM_LINE.search(text["rollout-0"]), text["rollout-0"][:2000]  # the engine's
    assert "accelerator" in text["trainer-0"].lower(), text["trainer-0"][:2000]  # DeepSpeed's
