"""Crash and resume of the real asynchronous run on CPU (Ray, vLLM, DeepSpeed, reward service).

One scenario, several properties. A 6-step run (B = 4 groups of 4, eta 1, 24 train prompts, so
the 24 groups trained are one epoch) checkpoints every 2 steps, keeping the newest one. While it
writes the step-4 checkpoint (held open by the fault-injection pause), the driver and every process
it started (Ray's head processes, the actors, the vLLM engine) get SIGKILL, as in a machine crash.
`areal-sys run ... --resume` then continues from step 2, the newest complete checkpoint, and
finishes. The run's records must show: steps 0-5 each once, versions continuing, no trajectory
trained twice, and every admitted group in exactly one place (trained, filtered, buffered or in
flight at the final checkpoint), every prompt of the epoch trained exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from areal_sys.metrics import read_jsonl
from controller import checkpoint
from controller.resume import FAULT_PAUSE_ENV
from tests.shm import remove_leaked_shm, shm_names

ROOT = Path(__file__).resolve().parent.parent
STEPS, BATCH, N, PROMPTS = 6, 4, 4, 24

pytestmark = pytest.mark.slow


def _command(run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "areal_sys.cli", "run", "configs/local_tiny.yaml",
        f"run_dir={run_dir}", f"trainer.total_steps={STEPS}", f"controller.batch_size={BATCH}",
        f"rollout.n_samples={N}", "controller.max_staleness=1", "trainer.save_every=2",
        "trainer.keep_last=1", f"data.synthetic_train_size={PROMPTS}",
        "eval.before_and_after=false", "eval.every=3", "eval.num_problems=16",
        "logging.progress_bar=false", "model.tiny_sft_steps=40",
        *extra,
    ]


def _kill_tree(pid: int) -> int:
    """SIGKILL `pid` and all its descendants (snapshot first: killed parents orphan children)."""
    killed = 0
    for _ in range(5):
        try:
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        procs = [p for p in procs if p.is_running()]
        if not procs:
            break
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
                killed += 1
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
    return killed


@pytest.fixture(scope="module")
def crashed_and_resumed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run_dir = tmp_path_factory.mktemp("resume")
    shm_before = shm_names()
    env = {**os.environ, FAULT_PAUSE_ENV: "4"}
    first = subprocess.Popen(_command(run_dir), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    pending = run_dir / "checkpoints" / ".step_4.tmp"
    deadline = time.time() + 600
    while not (pending / "trainer").exists() or not (pending / "policy").exists():
        assert first.poll() is None, f"run ended before the crash:\n{first.stderr.read()[-3000:]}"
        assert time.time() < deadline, "the step-4 checkpoint never started"
        time.sleep(0.05)
    crash = {"killed": _kill_tree(first.pid),
             "metrics_before": read_jsonl(run_dir / "metrics.jsonl"),
             "pending_left": pending.exists(),
             "complete_at_crash": [p.name for p in checkpoint.complete_checkpoints(run_dir)]}
    first.wait(timeout=30)
    remove_leaked_shm(shm_before)  # what the killed engine and run left in /dev/shm
    res = subprocess.run(_command(run_dir, "--resume"), cwd=ROOT, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    return {"run_dir": run_dir, "crash": crash, "stdout": res.stdout,
            "results": json.loads((run_dir / "results.json").read_text())}


def test_crash_left_an_incomplete_checkpoint_and_resume_used_the_previous_one(
    crashed_and_resumed: dict[str, Any],
) -> None:
    crash = crashed_and_resumed["crash"]
    assert crash["killed"] >= 3  # driver, Ray's processes, actors, engine
    assert crash["pending_left"] and crash["complete_at_crash"] == ["step_2"]
    assert [m["step"] for m in crash["metrics_before"]][:4] == [0, 1, 2, 3]  # past step 2
    assert crashed_and_resumed["results"]["resumed_from"] == 2
    run_dir = crashed_and_resumed["run_dir"]
    # keep_last = 1: only the final checkpoint is left, and no temporary directory
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_6"]


def test_steps_continue_without_duplicates(crashed_and_resumed: dict[str, Any]) -> None:
    run_dir = crashed_and_resumed["run_dir"]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(STEPS))
    assert [m["version"] for m in metrics] == list(range(1, STEPS + 1))
    audit = read_jsonl(run_dir / "staleness.jsonl")
    assert sorted({a["step"] for a in audit}) == list(range(STEPS))
    for a in audit:
        assert a["trainer_version"] == a["step"]
        assert a["trainer_version"] - a["min_token_version"] <= 1


def test_every_group_in_exactly_one_place_and_every_prompt_once(
    crashed_and_resumed: dict[str, Any],
) -> None:
    run_dir = crashed_and_resumed["run_dir"]
    audit = read_jsonl(run_dir / "staleness.jsonl")
    per_group = Counter(a["group_id"] for a in audit)
    assert set(per_group.values()) == {N}  # no trajectory trained twice
    assert len(per_group) == STEPS * BATCH
    steps_of = {}
    for a in audit:
        assert steps_of.setdefault(a["group_id"], a["step"]) == a["step"]  # one step per group
    filtered = read_jsonl(run_dir / "filtered.jsonl") if (run_dir / "filtered.jsonl").exists() \
        else []
    state = checkpoint.load_state(run_dir / "checkpoints" / "step_6")
    buffered = {seq: g.prompt_uid for seq, _, g in state["buffered"]}
    inflight = {seq: prompt.uid for seq, prompt, _, _ in state["inflight"]}
    trained = {a["group_id"]: a["prompt_uid"] for a in audit}
    dropped = {f["group_id"]: f["prompt_uid"] for f in filtered}
    places = [set(trained), set(buffered), set(inflight), set(dropped)]
    assert sum(len(p) for p in places) == len(set().union(*places))  # disjoint
    assert set().union(*places) == set(range(state["next_seq"]))  # nothing lost
    uid_of = {**trained, **buffered, **inflight, **dropped}
    epoch = [uid_of[seq] for seq in range(PROMPTS)]  # group numbers follow the sampler's order
    assert len(set(epoch)) == PROMPTS  # the first epoch: every prompt exactly once


def test_saved_policy_loads_in_transformers_and_generates(
    crashed_and_resumed: dict[str, Any],
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = crashed_and_resumed["run_dir"] / "checkpoints" / "step_6" / "policy"
    model = AutoModelForCausalLM.from_pretrained(policy)
    tok = AutoTokenizer.from_pretrained(policy)
    ids = tok("3+4-2=", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_periodic_evaluation_once_per_version(crashed_and_resumed: dict[str, Any]) -> None:
    rows = read_jsonl(crashed_and_resumed["run_dir"] / "eval.jsonl")
    assert [(r["tag"], r["version"]) for r in rows] == [("step_3", 3), ("step_6", 6)]
    for r in rows:
        assert r["n"] == 16 and 0.0 <= r["pass@1"] <= 1.0 and r["pass_rate"] == r["avg@1"]


def test_eval_command_on_the_checkpoint(crashed_and_resumed: dict[str, Any]) -> None:
    run_dir = crashed_and_resumed["run_dir"]
    ckpt = run_dir / "checkpoints" / "step_6"
    res = subprocess.run(
        [sys.executable, "-m", "areal_sys.cli", "eval", "configs/local_tiny.yaml",
         f"run_dir={run_dir}", "eval.num_problems=24", "eval.k=3", "model.tiny_sft_steps=40",
         "--checkpoint", str(ckpt)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "pass@1" in res.stdout and "avg@3" in res.stdout
    row = read_jsonl(run_dir / "eval.jsonl")[-1]
    assert row["tag"] == "checkpoint" and row["checkpoint"] == str(ckpt)
    assert (row["n"], row["k"]) == (24, 3)
    assert row["avg@3"] <= row["pass@3"] and row["pass@1"] <= row["pass@3"]
    assert abs(row["avg@3"] * 72 - round(row["avg@3"] * 72)) < 1e-9  # a count of 72 samples
    bad = subprocess.run(
        [sys.executable, "-m", "areal_sys.cli", "eval", "configs/local_tiny.yaml",
         "--checkpoint", str(run_dir / "nowhere")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "no Hugging Face policy" in bad.stderr
