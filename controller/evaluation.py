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
from typing import Any


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
    prompts: Sequence[Any],
    *,
    k: int,
    num_workers: int,
    generate: Callable[..., Awaitable[Any]],
    score: Callable[[list[Any]], Awaitable[None]],
    max_new_tokens: int,
    temperature: float,
    correct_reward: float,
    progress: bool = True,
) -> tuple[dict[str, float], list[Any]]:
    """Sample `k` responses per prompt (`generate(worker_index, **generate_group kwargs)`, spread
    over the workers), score them in place (`score(trajectories)`), return the figures and the
    trajectories. A progress bar counts the problems sampled."""
    from tqdm import tqdm

    bar = tqdm(total=len(prompts), desc="eval", unit="problem", disable=not progress,
               dynamic_ncols=True)

    async def sample(i: int, p: Any) -> Any:
        group = await generate(i % num_workers, "generate_group", group_id=-1 - i,
                               prompt_uid=p.uid, prompt_ids=p.ids, n=k,
                               max_new_tokens=max_new_tokens, temperature=temperature,
                               task=p.task, reference=p.reference)
        bar.update(1)
        return group

    try:
        groups = await asyncio.gather(*[sample(i, p) for i, p in enumerate(prompts)])
    finally:
        bar.close()
    trajs = [t for g in groups for t in g]
    await score(trajs)
    correct = [[t.reward >= correct_reward for t in g] for g in groups]
    return summarize(correct), trajs


async def score_trajectories(score_call: Callable[[list[dict[str, str]]], Awaitable[Any]],
                             trajs: list[Any]) -> None:
    """Score `trajs` in place through `score_call(items)` (the reward actor's `score`)."""
    items = [{"task": t.task, "response": t.response_text, "reference": t.reference}
             for t in trajs]
    for t, r in zip(trajs, await score_call(items), strict=True):
        t.reward, t.reward_ok, t.reward_reason = r.reward, r.ok, r.reason
