"""Crash and resume of the real asynchronous run on CPU (Ray, vLLM, DeepSpeed, reward service):
tests/e2e_runs.py `resume_run`.

One scenario, several properties. A 6-step PPO run with a critic (B = 4 groups of 4, eta 1, 24
train prompts: the groups admitted run past one epoch) checkpoints every 2 steps, keeping the
newest one; after two steps its rollout worker is killed and restarted
(test_recovery_end_to_end.py). While it writes the step-4 checkpoint
(held open by the fault-injection pause), the driver and every process it started (Ray's head
processes, the actors, the vLLM engine) get SIGKILL, as in a machine crash. `areal-sys run ...
--resume` then continues from step 2, the newest complete checkpoint, and finishes. The run's
records must show: steps 0-5 each once, versions continuing, no trajectory trained twice, and
every admitted group in exactly one place (trained, filtered, buffered or in flight at the final
checkpoint; PPO filters none), every prompt of the epoch admitted exactly once.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from areal_sys.metrics import read_jsonl
from tests.e2e_checks import check_group_places
from tests.e2e_runs import QUIET, ROOT, TOOL_TASK, Resume

STEPS, BATCH, N, PROMPTS = Resume.STEPS, Resume.BATCH, Resume.N, Resume.PROMPTS

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_crash_left_an_incomplete_checkpoint_and_resume_used_the_previous_one(
    resume_run: dict[str, Any],
) -> None:
    crash = resume_run["crash"]
    assert crash["killed"] >= 3  # driver, Ray's processes, actors, engine
    assert crash["pending_left"] and crash["complete_at_crash"] == ["step_2"]
    assert [m["step"] for m in crash["metrics_before"]][:4] == [0, 1, 2, 3]  # past step 2
    assert resume_run["results"]["resumed_from"] == 2
    run_dir = resume_run["run_dir"]
    # keep_last = 1: only the final checkpoint is left, and no temporary directory
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_6"]


def test_steps_continue_without_duplicates(resume_run: dict[str, Any]) -> None:
    run_dir = resume_run["run_dir"]
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(STEPS))
    assert [m["version"] for m in metrics] == list(range(1, STEPS + 1))
    audit = read_jsonl(run_dir / "staleness.jsonl")
    assert sorted({a["step"] for a in audit}) == list(range(STEPS))
    for a in audit:
        assert a["trainer_version"] == a["step"]
        assert a["trainer_version"] - a["min_token_version"] <= 1


def test_every_group_in_exactly_one_place_and_every_prompt_once(
    resume_run: dict[str, Any],
) -> None:
    run_dir = resume_run["run_dir"]
    audit = read_jsonl(run_dir / "staleness.jsonl")
    per_group = Counter(a["group_id"] for a in audit)
    assert set(per_group.values()) == {N}  # no trajectory trained twice
    assert len(per_group) == STEPS * BATCH
    uid_of = check_group_places(run_dir, run_dir / "checkpoints" / "step_6")
    epoch = [uid_of[seq] for seq in range(PROMPTS)]  # group numbers follow the sampler's order
    assert len(set(epoch)) == PROMPTS  # the first epoch: every prompt exactly once


def test_saved_policy_loads_in_transformers_and_generates(
    resume_run: dict[str, Any],
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = resume_run["run_dir"] / "checkpoints" / "step_6" / "policy"
    model = AutoModelForCausalLM.from_pretrained(policy)
    tok = AutoTokenizer.from_pretrained(policy)
    ids = tok("3+4-2=", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_periodic_evaluation_once_per_version(resume_run: dict[str, Any]) -> None:
    rows = read_jsonl(resume_run["run_dir"] / "eval.jsonl")
    assert [(r["tag"], r["version"]) for r in rows] == [("step_3", 3), ("step_6", 6)]
    for r in rows:
        assert r["n"] == Resume.EVAL_N and r["pass_rate"] == r["avg@1"]
        correct = r["pass@1"] * Resume.EVAL_N  # one sample per problem: a count of 16
        assert abs(correct - round(correct)) < 1e-9


def test_eval_command_on_the_checkpoint(resume_run: dict[str, Any]) -> None:
    run_dir = resume_run["run_dir"]
    ckpt = run_dir / "checkpoints" / "step_6"
    res = subprocess.run(
        [sys.executable, "-m", "areal_sys.cli", "eval", "configs/tiny/ppo.yaml",
         f"run_dir={run_dir}", "eval.num_problems=8", "eval.k=3", *QUIET, *TOOL_TASK,
         "--checkpoint", str(ckpt)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "pass@1" in res.stdout and "avg@3" in res.stdout
    row = read_jsonl(run_dir / "eval.jsonl")[-1]
    assert row["tag"] == "checkpoint" and row["checkpoint"] == str(ckpt)
    assert (row["n"], row["k"]) == (8, 3)
    assert row["avg@3"] <= row["pass@3"] and row["pass@1"] <= row["pass@3"]
    assert abs(row["avg@3"] * 24 - round(row["avg@3"] * 24)) < 1e-9  # a count of 24 samples
    assert 0.0 <= row["call_rate"] <= 1.0  # the eval command runs tool episodes too
    bad = subprocess.run(
        [sys.executable, "-m", "areal_sys.cli", "eval", "configs/local_tiny.yaml",
         "--checkpoint", str(run_dir / "nowhere")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "no Hugging Face policy" in bad.stderr
