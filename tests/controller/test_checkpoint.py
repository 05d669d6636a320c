"""controller/checkpoint.py: atomic commit, the latest complete checkpoint, pruning, truncation;
controller/evaluation.py: pass@1, avg@k and pass@k."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller import checkpoint
from controller.evaluation import summarize


def test_only_committed_checkpoints_count_and_prune_keeps_the_newest(tmp_path: Path) -> None:
    for v in (2, 4, 10):
        tmp = checkpoint.begin(tmp_path, v)
        (tmp / "policy").mkdir()
        (tmp / "policy" / "weights").write_bytes(b"w" * v)
        checkpoint.commit(tmp, {"version": v})
    pending = checkpoint.begin(tmp_path, 12)  # a crash before commit leaves only this
    (pending / "policy").mkdir()
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == [
        "step_2", "step_4", "step_10"]  # numeric order, not string order
    latest = checkpoint.latest(tmp_path)
    assert latest is not None and checkpoint.load_state(latest) == {"version": 10}
    removed = checkpoint.prune(tmp_path, keep_last=2)
    assert [p.name for p in removed] == ["step_2"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        ".step_12.tmp", "step_10", "step_4"]
    again = checkpoint.begin(tmp_path, 12)  # the next save of that version starts clean
    assert list(again.iterdir()) == []
    assert checkpoint.latest(tmp_path / "elsewhere") is None


def test_truncate_files_back_to_checkpoint_sizes(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 0}\n{"step": 1}\n')
    sizes = checkpoint.file_sizes([log, tmp_path / "filtered.jsonl"])
    assert sizes == {"metrics.jsonl": log.stat().st_size, "filtered.jsonl": 0}
    with log.open("a") as f:
        f.write('{"step": 2}\n')
    (tmp_path / "filtered.jsonl").write_text('{"group_id": 9}\n')
    checkpoint.truncate_files(tmp_path, sizes)
    assert log.read_text() == '{"step": 0}\n{"step": 1}\n'
    assert (tmp_path / "filtered.jsonl").read_text() == ""


def test_eval_figures() -> None:
    f = summarize([[True, False, False], [False, True, True], [False, False, False],
                   [True, True, True]])
    assert f["pass@1"] == 0.5 and f["avg@3"] == pytest.approx(6 / 12) and f["pass@3"] == 0.75
    assert f["pass_rate"] == f["avg@3"] and (f["k"], f["n"]) == (3, 4)
    assert summarize([[True], [False]])["pass@1"] == summarize([[True], [False]])["avg@1"] == 0.5
    with pytest.raises(ValueError):
        summarize([[True], []])
