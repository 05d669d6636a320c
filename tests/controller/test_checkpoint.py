"""controller/checkpoint.py: atomic commit, the latest complete checkpoint, pruning, truncation;
controller/evaluation.py: pass@1, avg@k and pass@k."""

from __future__ import annotations

from collections import Counter
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


def test_a_resumed_run_trains_every_group_once_and_continues_where_it_stopped(
        tmp_path: Path) -> None:
    """The real controller over fakes: a run checkpoints at step 2 and writes step 3 after it; a
    fresh controller (fresh actors) resumes from step_2 and runs to 6. The metric files are cut
    back to the checkpoint, every group trains exactly once, the checkpoint's buffered and in-flight
    groups are trained, filtered or still held, group numbers map to the same prompts as in an
    uninterrupted run, and versions continue at 2."""
    import json

    from areal_sys.metrics import read_jsonl
    from tests.controller import fakes

    common = ("controller.batch_size=2", "controller.max_staleness=1", "rollout.n_samples=2",
              "rollout.num_workers=2", "trainer.save_every=2", "trainer.keep_last=5",
              "algorithm.filter=dynamic_sampling")
    prompts = fakes.prompts(100)
    ref = tmp_path / "ref"
    fakes.run(fakes.config(ref, "trainer.total_steps=6", *common),
              fakes.fake_actors(ref, workers=2), prompts)
    run = tmp_path / "run"
    fakes.run(fakes.config(run, "trainer.total_steps=3", *common),
              fakes.fake_actors(run, workers=2), prompts)
    ckpt = run / "checkpoints" / "step_2"
    raw = json.loads((ckpt / "controller.json").read_text())
    assert raw["format_version"] == checkpoint.FORMAT_VERSION
    assert not list(ckpt.rglob("*.pkl"))
    state = checkpoint.load_state(ckpt)
    assert raw["next_seq"] == state["next_seq"] and state["version"] == 2

    fresh = fakes.fake_actors(run, workers=2)
    results = fakes.run(fakes.config(run, "trainer.total_steps=6", *common), fresh, prompts,
                        resume=ckpt)
    assert results["resumed_from"] == 2
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == list(range(6))
    assert [t[1] for t in fresh.activity.calls[:1]] == [str(ckpt)]  # load_checkpoint first
    assert [v for _, v in fresh.rollouts[0].loaded][:1] == [2]  # the engines serve version 2
    audit = read_jsonl(run / "staleness.jsonl")
    per_group = Counter(a["group_id"] for a in audit)
    assert set(per_group.values()) == {2} and len(per_group) == 12
    assert [a["trainer_version"] for a in audit] == [a["step"] for a in audit]
    dropped = {f["group_id"] for f in read_jsonl(run / "filtered.jsonl")}
    assert not dropped & set(per_group)
    held = {seq for seq, _, _ in state["buffered"]} | {seq for seq, *_ in state["inflight"]}
    resumed_requests = {r["group_id"] for w in fresh.rollouts for r in w.requests}
    assert {seq for seq, *_ in state["inflight"]} <= resumed_requests  # generated again
    assert not {seq for seq, _, _ in state["buffered"]} & resumed_requests  # not again
    uid = {a["group_id"]: a["prompt_uid"] for a in audit}
    ref_uid = {a["group_id"]: a["prompt_uid"] for a in read_jsonl(ref / "staleness.jsonl")}
    ref_uid |= {f["group_id"]: f["prompt_uid"] for f in read_jsonl(ref / "filtered.jsonl")}
    assert all(ref_uid[seq] == u for seq, u in uid.items() if seq in ref_uid)
    assert held <= set(per_group) | dropped | resumed_requests


def test_a_checkpoint_of_the_pickle_format_is_found_and_refused(tmp_path: Path) -> None:
    from areal_sys.config import ConfigError

    old = tmp_path / "checkpoints" / "step_3"
    old.mkdir(parents=True)
    (old / "controller.pkl").write_bytes(b"\x80\x05N.")
    assert checkpoint.latest(tmp_path) == old
    with pytest.raises(ConfigError, match=r"controller\.pkl.*--overwrite"):
        checkpoint.load_state(old)


def test_groups_and_prompts_round_trip_through_the_json_state(tmp_path: Path) -> None:
    from areal_sys.trajectory import Group, Prompt, Trajectory

    t = Trajectory("p1", 7, [1, 2], [3, 4, 5], [-0.1, -0.2, -0.3], [2, 2, 3], [1, 1, 1],
                   finish_reason="length", reward=1.0, prefix_len=1, num_interrupts=1,
                   response_text="x", submit_time=1.5, finish_time=2.5, worker_id=1)
    state = {"version": 3, "next_seq": 9,
             "buffered": [(7, 4, Group(7, "p1", [t], 2)),
                          (6, 4, Group(6, "p0", [t], 1, filter_bypassed=True))],
             "inflight": [(8, Prompt("p2", [5, 6], "42", "math"), 3, 4)], "files": {}}
    tmp = checkpoint.begin(tmp_path, 3)
    back = checkpoint.load_state(checkpoint.commit(tmp, state))
    assert back == state
    assert [g.filter_bypassed for _, _, g in back["buffered"]] == [False, True]
