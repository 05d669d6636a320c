"""The console line of a training step (controller/progress.py): printed every
`logging.log_every` steps and after the last; the metric files are not thinned."""

import io
import math
import sys

import pytest

from controller.progress import log_due, step_line

RECORD = {"step": 4, "reward_mean": 0.4125, "staleness_max": 1, "tokens_per_s": 812.4,
          "step_time_s": 12.34, "wait_s": 0.52, "sync_s": 0.417, "train/loss": -0.01234,
          "groups_filtered": 0}


@pytest.mark.parametrize(("every", "total", "printed"), [
    (1, 5, [0, 1, 2, 3, 4]),
    (2, 5, [1, 3, 4]),  # steps 2 and 4 (counted from 1), and the last
    (3, 9, [2, 5, 8]),
    (10, 4, [3]),  # a run shorter than the interval still ends with its line
])
def test_log_due_every_n_steps_and_the_last(every, total, printed):
    assert [s for s in range(total) if log_due(s, every, total)] == printed


def test_step_line_is_one_line_of_the_main_metrics():
    line = step_line(RECORD, total_steps=50)
    assert line == ("step 5/50: reward 0.412, staleness max 1, 812 tokens/s, step 12.3 s "
                    "(waited 0.5 s, sync 0.42 s), loss -0.0123")
    assert "\n" not in line


def test_step_line_survives_missing_and_non_finite_values():
    record = {**RECORD, "reward_mean": math.nan, "tokens_per_s": math.inf, "groups_filtered": 3}
    del record["train/loss"], record["sync_s"]
    assert step_line(record, total_steps=50) == (
        "step 5/50: reward n/a, staleness max 1, n/a tokens/s, step 12.3 s (waited 0.5 s, "
        "sync n/a s), 3 groups filtered")


def test_the_controller_prints_every_log_every_steps_and_writes_every_step(tmp_path, capsys):
    """The real controller with fake actors: 5 steps, log_every=2 -> lines for steps 2, 4, 5;
    metrics.jsonl still has all 5."""
    import json

    from tests.controller import fakes

    cfg = fakes.config(tmp_path, "trainer.total_steps=5", "controller.batch_size=2",
                       "rollout.n_samples=2", "logging.log_every=2")
    fakes.run(cfg, fakes.fake_actors(tmp_path), fakes.prompts(8))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert [ln.split(":")[0] for ln in lines] == ["step 2/5", "step 4/5", "step 5/5"]
    metrics = [json.loads(row) for row in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2, 3, 4]
    for ln, m in zip(lines, [metrics[1], metrics[3], metrics[4]], strict=True):
        assert f"reward {m['reward_mean']:.3f}" in ln


@pytest.mark.parametrize(("seconds", "text"), [(0, "0:00"), (65.4, "1:05"), (3725, "1:02:05")])
def test_duration(seconds, text):
    from controller.progress import duration

    assert duration(seconds) == text


def test_live_line_has_the_step_the_eta_and_the_fields():
    from controller.progress import live_line

    fields = {"reward": "0.412", "stale": 1, "tok_s": "812", "sync": "0.42"}
    # 2 steps took 20 s in this process (resumed at step 10): 10 s a step, 88 to go
    assert live_line("train", 12, 100, 20.0, 2, fields) == (
        "train 12/100 ETA 14:40 | reward 0.412, staleness 1, 812 tok/s, sync 0.42 s")
    assert live_line("train", 0, 100, 0.0, 0, {}) == "train 0/100 ETA -"
    assert live_line("eval", 256, 256, 65.0, 256, {"other": 3}) == "eval 256/256 in 1:05 | other 3"


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_its_live_line_on_the_console_and_keeps_the_last(monkeypatch):
    from areal_sys.console import CLEAR_LINE, Console
    from controller.progress import Progress

    term = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", Console(term))
    now = [0.0]
    bar = Progress(2, "train", clock=lambda: now[0])
    now[0] = 10.0
    bar.update(1)
    bar.set_postfix(reward="0.500")
    bar.write("step 1/2: reward 0.500")
    now[0] = 20.0
    bar.update(1)
    bar.close()
    frames = term.getvalue().split(CLEAR_LINE)
    assert frames == ["train 0/2 ETA -", "train 1/2 ETA 0:10", "train 1/2 ETA 0:10 | reward 0.500",
                      "step 1/2: reward 0.500\ntrain 1/2 ETA 0:10 | reward 0.500",
                      "train 2/2 in 0:20 | reward 0.500\n"]


def test_progress_off_a_console_or_disabled_prints_only_its_lines(monkeypatch, capsys):
    from areal_sys.console import Console
    from controller.progress import Progress

    bar = Progress(3, "train")  # sys.stdout is pytest's capture, not a Console
    bar.update(1)
    bar.write("step 1/3")
    bar.close()
    assert capsys.readouterr().out == "step 1/3\n"
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", Console(term))
    bar = Progress(3, "train", enabled=False)  # logging.progress_bar=false
    bar.update(1)
    bar.write("step 1/3")
    bar.close()
    assert term.getvalue() == "step 1/3\n"


def test_eval_line():
    from controller.progress import eval_line

    figures = {"pass_rate": 0.7071, "k": 4, "n": 256, "pass@1": 0.7}
    assert eval_line("step_10", figures) == (
        "eval step_10: pass rate 70.7% (avg@4 over 256 problems)")
