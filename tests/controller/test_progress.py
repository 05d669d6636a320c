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


class _Remote:
    """`actor.method.remote(...)` of a fake actor: the method's coroutine."""

    def __init__(self, fn):
        self.remote = fn


class _Actor:
    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        return _Remote(attr) if callable(attr) and not name.startswith("_") else attr


class _Rollout(_Actor):
    def __init__(self):
        self.version = 0

    async def generate_group(self, *, group_id, prompt_uid, prompt_ids, n, **_):
        from areal_sys.trajectory import Trajectory

        return [Trajectory(prompt_uid, group_id, list(prompt_ids), [5, 6], [-0.1, -0.2],
                           [self.version] * 2, [1, 1], response_text=str(i)) for i in range(n)]

    async def update_weights(self, path, version):
        self.version = version
        return {"interrupted": 0}

    async def stats(self):
        return {"tokens_generated": 0, "busy_s": 0.0}


class _Trainer(_Actor):
    async def train_step(self, batch, step):
        return {"loss": 0.5}

    async def export_weights(self, path):
        return None


class _Reward(_Actor):
    async def score(self, items):
        from types import SimpleNamespace

        return [SimpleNamespace(reward=float(item["response"] == "0"), ok=True, reason="")
                for item in items]


def test_the_controller_prints_every_log_every_steps_and_writes_every_step(tmp_path, capsys):
    """The real controller with fake actors: 5 steps, log_every=2 -> lines for steps 2, 4, 5;
    metrics.jsonl still has all 5."""
    import asyncio
    import json
    from types import SimpleNamespace

    from areal_sys.config import ExperimentConfig
    from controller.controller import Controller, Prompt

    cfg = ExperimentConfig.model_validate({
        "run_dir": str(tmp_path), "trainer": {"total_steps": 5},
        "controller": {"batch_size": 2}, "rollout": {"n_samples": 2},
        "eval": {"before_and_after": False}, "logging": {"progress_bar": False, "log_every": 2}})
    actors = SimpleNamespace(rollout=[_Rollout()], trainers=[_Trainer()], reward=_Reward(),
                             critic=None, sync_dir=str(tmp_path))
    prompts = [Prompt(f"p{i}", [1, 2, 3], "0", "synthetic") for i in range(8)]
    controller = Controller(cfg, actors, prompts, prompts[:2])
    try:
        asyncio.run(controller.run())
    finally:
        controller.close()
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert [ln.split(":")[0] for ln in lines] == ["step 2/5", "step 4/5", "step 5/5"]
    assert all("reward 0.500" in ln for ln in lines)
    metrics = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["step"] for row in metrics] == [0, 1, 2, 3, 4]
