"""Held-out evaluation: k samples per problem from the rollout workers, scored by the reward
service.

Figures per evaluation (one line in `RUN_DIR/eval.jsonl`):

- `pass@1`: the fraction of problems whose first sample is correct;
- `avg@k`: the mean correctness over all k samples of every problem (the lower-variance estimate
  of pass@1 that Minimal-RL reports as average@16);
- `pass@k`: the fraction of problems with at least one correct sample;
- `pass_rate` = `avg@k` (the figure the run summary and the benchmarks use).

Used by the controller (before/after training and every `eval.every` steps) and by
`areal-sys eval CONFIG --checkpoint DIR`, which runs rollout workers on a saved policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from areal_sys.config import ExperimentConfig
from areal_sys.metrics import JsonlWriter
from areal_sys.trajectory import Prompt, Trajectory
from controller.actors import RolloutPool
from controller.progress import Progress


def summarize(correct: Sequence[Sequence[bool]]) -> dict[str, float]:
    """pass@1, avg@k and pass@k of per-problem correctness lists (k samples each)."""
    if not correct or not all(correct):
        raise ValueError("evaluation needs at least one sample per problem")
    k = len(correct[0])
    n = len(correct)
    return {
        "pass@1": sum(c[0] for c in correct) / n,
        f"avg@{k}": sum(sum(c) for c in correct) / (n * k),
        f"pass@{k}": sum(any(c) for c in correct) / n,
        "pass_rate": sum(sum(c) for c in correct) / (n * k),
        "k": float(k),
        "n": float(n),
    }


async def evaluate_prompts(
    prompts: Sequence[Prompt],
    *,
    k: int,
    rollout: RolloutPool,
    score: Callable[[list[tuple[Prompt, Trajectory]]], Awaitable[None]],
    max_new_tokens: int,
    temperature: float,
    correct_reward: float,
    progress: bool = True,
    step_errors: Callable[[str, str], list[bool]] | None = None,
    tool_use: bool = False,
) -> tuple[dict[str, Any], list[Trajectory]]:
    """Sample `k` responses per prompt (spread over the rollout workers), score them in place
    (`score((prompt, trajectory) pairs)`, e.g. `Reward.score`), return the figures and the
    trajectories. A progress bar counts the problems sampled. With `step_errors` (prompt text,
    response text -> per-step errors, see `step_checker`) the figures also hold the error rate
    by step position, from the start and from the end; with `tool_use` (multi-turn episodes),
    `call_rate`: the fraction of episodes that called a tool."""
    bar = Progress(len(prompts), "eval", enabled=progress)

    async def sample(i: int, p: Prompt) -> list[Trajectory]:
        group = await rollout.generate_group(p, group_id=-1 - i, n=k, worker=i % len(rollout),
                                             max_new_tokens=max_new_tokens,
                                             temperature=temperature)
        bar.update(1)
        return group

    try:
        groups = await asyncio.gather(*[sample(i, p) for i, p in enumerate(prompts)])
    finally:
        bar.close()
    await score([(p, t) for p, g in zip(prompts, groups, strict=True) for t in g])
    correct = [[t.reward >= correct_reward for t in g] for g in groups]
    figures: dict[str, Any] = summarize(correct)
    if step_errors is not None:
        from areal_sys.data.chain import error_by_position

        figures |= error_by_position([step_errors(p.text, t.response_text)
                                      for p, g in zip(prompts, groups, strict=True) for t in g])
    trajs = [t for g in groups for t in g]
    if tool_use:  # the fraction of episodes that called a tool
        figures["call_rate"] = sum(t.tool_calls > 0 for t in trajs) / len(trajs)
    return figures, trajs


def step_checker(cfg: ExperimentConfig) -> Callable[[str, str], list[bool]] | None:
    """The per-step error reader of the run's held-out task: the long-chain tasks' when the
    eval set is the built-in one of such a task, else None (no positions to read)."""
    from areal_sys.data.chain import CHAIN_TASKS, step_errors

    if cfg.data.eval == "synthetic" and cfg.data.synthetic_task in CHAIN_TASKS:
        return step_errors
    return None


def append_eval_line(run_dir: Path, row: dict[str, Any]) -> None:
    """One evaluation's line in `RUN_DIR/eval.jsonl`."""
    writer = JsonlWriter(run_dir / "eval.jsonl")
    writer.write(row)
    writer.close()
