"""The console line of a training step (controller/progress.py): printed every
`logging.log_every` steps and after the last; the metric files are not thinned."""

import math

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
