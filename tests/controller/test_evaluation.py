"""Held-out evaluation: pass@1 / avg@k / pass@k, and the long-chain tasks' error by position,
with a fake rollout pool (named as a fake: this tests our own counting, not generation)."""

from __future__ import annotations

import asyncio

from areal_sys.config import load_config
from areal_sys.data import chain
from areal_sys.trajectory import Prompt, Trajectory
from controller.evaluation import evaluate_prompts, step_checker


class FakePool:
    """Answers each prompt with the scripted responses of its uid, in order."""

    def __init__(self, responses: dict[str, list[str]]) -> None:
        self.responses = responses

    def __len__(self) -> int:
        return 1

    async def generate_group(self, p: Prompt, *, group_id: int, n: int, worker: int,
                             max_new_tokens: int, temperature: float) -> list[Trajectory]:
        return [Trajectory(p.uid, group_id, p.ids, [1], [0.0], [0], [1], response_text=text)
                for text in self.responses[p.uid][:n]]


def _score(answers: dict[str, str]):
    async def score(pairs: list[tuple[Prompt, Trajectory]]) -> None:
        for p, t in pairs:
            t.reward = float(t.response_text.endswith(f"#### {answers[p.uid]}"))
    return score


def test_chain_evaluation_reports_error_by_position_from_both_ends() -> None:
    a, b = "10+5-3+1+1+1+1+1+1+1+1+1+1=", "20-5+3+1+1+1+1+1+1+1+1+1+1="
    right_a, right_b = chain.solve(a), chain.solve(b)
    lines = right_b.split("\n")
    slip_last = "\n".join([*lines[:11], lines[11][:-2] + "99", "#### 99"])
    prompts = [Prompt("a", [1], "", "synthetic", a), Prompt("b", [2], "", "synthetic", b)]
    pool = FakePool({"a": [right_a, "#### 7"], "b": [slip_last, right_b]})
    answers = {"a": right_a[-2:], "b": right_b[-2:]}
    figures, trajs = asyncio.run(evaluate_prompts(
        prompts, k=2, rollout=pool, score=_score(answers), max_new_tokens=8, temperature=1.0,
        correct_reward=1.0, progress=False, step_errors=chain.step_errors))
    assert len(trajs) == 4
    assert figures["avg@2"] == 0.5 and figures["pass@2"] == 1.0 and figures["pass@1"] == 0.5
    # 4 responses: "#### 7" misses every step, the slip misses b's last step only
    assert figures["step_error_from_start"] == [0.25] * 11 + [0.5]  # 12 steps: last = 11th
    assert figures["step_error_from_end"] == [0.5] + [0.25] * 11


def test_step_checker_only_for_the_built_in_chain_tasks(tmp_path) -> None:
    def cfg(*o: str):
        return load_config(None, [f"run_dir={tmp_path}", *o])
    assert step_checker(cfg()) is None
    assert step_checker(cfg("data.synthetic_task=chain_tail")) is chain.step_errors
    data = tmp_path / "eval.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    assert step_checker(cfg("data.synthetic_task=chain_tail", f"data.eval={data}")) is None
