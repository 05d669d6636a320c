"""Run outputs: the timeline writer and the metrics sinks (metrics.jsonl, TensorBoard, W&B)."""

import subprocess
import sys
from pathlib import Path

import pytest

from areal_sys.config import ConfigError, LoggingConfig, load_config
from areal_sys.metrics import MetricsLogger, Timeline, read_jsonl
from areal_sys.trajectory import Trajectory

ROOT = Path(__file__).resolve().parent.parent


def _traj(worker: int, submit: float, finish: float) -> Trajectory:
    return Trajectory(prompt_uid="p", group_id=3, prompt_ids=[1], response_ids=[2],
                      behav_logprobs=[-0.1], versions=[0], loss_mask=[1], submit_time=submit,
                      finish_time=finish, worker_id=worker)


def _records(n: int) -> list[dict]:
    return [{"step": s, "version": s + 1, "reward_mean": 0.25 * s, "tokens_per_s": 100.0 + s,
             "note": "text is skipped by the sinks", "missing": None} for s in range(n)]


def test_timeline_writes_one_line_per_span(tmp_path):
    tl = Timeline(tmp_path / "timeline.jsonl")
    tl.add("trainer", "train", 10.0, 12.5, step=0)
    with tl.span("reward", "reward", group_id=7):
        pass
    # two workers: one span each, earliest submit to latest finish; an untimed one is skipped
    tl.trajectories([_traj(0, 1.0, 3.0), _traj(0, 1.5, 4.0), _traj(1, 2.0, 2.5),
                     _traj(2, 0.0, 0.0)], "generate", group_id=3)
    tl.close()
    rows = read_jsonl(tmp_path / "timeline.jsonl")
    assert rows[0] == {"worker": "trainer", "kind": "train", "start": 10.0, "end": 12.5, "step": 0}
    assert rows[1]["worker"] == "reward" and rows[1]["group_id"] == 7
    assert rows[1]["start"] <= rows[1]["end"]
    assert rows[2:] == [
        {"worker": "rollout0", "kind": "generate", "start": 1.0, "end": 4.0, "group_id": 3},
        {"worker": "rollout1", "kind": "generate", "start": 2.0, "end": 2.5, "group_id": 3},
    ]


def test_timeline_rejects_unknown_kind_and_skips_failed_spans(tmp_path):
    tl = Timeline(tmp_path / "timeline.jsonl")
    with pytest.raises(ValueError, match="unknown span kind 'nap'"):
        tl.add("trainer", "nap", 0.0, 1.0)
    with pytest.raises(RuntimeError), tl.span("trainer", "train", step=1):
        raise RuntimeError("the step failed")
    tl.close()
    assert read_jsonl(tmp_path / "timeline.jsonl") == []


def test_metrics_always_go_to_jsonl(tmp_path):
    logger = MetricsLogger(tmp_path, LoggingConfig())
    for record in _records(3):
        logger.write(record)
    logger.log({"eval/pass_rate": 0.5}, step=3)  # sinks only: eval.jsonl has its own file
    logger.close()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[2]["reward_mean"] == 0.5
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "wandb").exists()


def test_tensorboard_event_files_when_enabled(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricsLogger(tmp_path, LoggingConfig(tensorboard=True))
    for record in _records(4):
        logger.write(record)
    logger.log({"eval/pass_rate": 0.75}, step=4)
    logger.close()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"reward_mean", "tokens_per_s", "version", "eval/pass_rate"} <= tags
    assert "note" not in tags and "missing" not in tags
    assert [(e.step, e.value) for e in acc.Scalars("reward_mean")] == [
        (0, 0.0), (1, 0.25), (2, 0.5), (3, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("eval/pass_rate")] == [(4, 0.75)]
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 4


def test_wandb_offline_needs_no_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = MetricsLogger(tmp_path / "run", LoggingConfig(wandb=True, wandb_mode="offline"),
                           config={"seed": 1})
    for record in _records(3):
        logger.write(record)
    assert logger._wandb.summary["reward_mean"] == 0.25  # a step's row is sent on the next step
    logger.close()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


@pytest.mark.parametrize("package", ["tensorboard", "wandb"])
def test_missing_package_is_a_config_error(package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # find_spec then reports it as absent
    with pytest.raises(ConfigError, match=rf"logging\.{package}: needs the {package} package.*"
                                          rf"pip install {package}"):
        load_config(ROOT / "configs/local_tiny.yaml", [f"logging.{package}=true"])


def test_missing_package_exits_2_with_one_line_before_anything_starts():
    code = ("import sys; sys.modules['tensorboard'] = None; from areal_sys.cli import main; "
            "sys.exit(main(['run', 'configs/local_tiny.yaml', 'logging.tensorboard=true']))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "logging.tensorboard" in lines[0]
    assert "pip install tensorboard" in lines[0]
