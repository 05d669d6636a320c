"""The RPO experience cache, the controller's side (`rpo.enabled`, areal_sys/algorithms/rpo.py).

Before training, `fill` puts one full response per train prompt into the cache (`rpo.cache_fill:
pass`; with `lazy` a prompt's first visit is a full rollout). Each admitted group then continues a
prefix of its prompt's cached response (controller/admission.py `plan`) and generates only the
suffix; after each step `update` lets every trained group replace its prompt's entry, ε-greedily
on the group's shaped rewards. Checkpoints save the cache (controller/checkpoint.py).
"""

from __future__ import annotations

import asyncio
import time

from areal_sys.algorithms import Algorithm
from areal_sys.algorithms.rpo import RpoPlanner
from areal_sys.config import ExperimentConfig
from areal_sys.metrics import Timeline
from areal_sys.trajectory import Group, Prompt
from controller.actors import RolloutPool
from controller.progress import Progress


async def fill(cfg: ExperimentConfig, rpo: RpoPlanner, rollout: RolloutPool,
               prompts: list[Prompt], timeline: Timeline) -> dict[str, float]:
    """One full response per prompt with the current policy (not filtered for correctness), into
    the cache; returns its `seconds`, `entries` and `tokens` generated."""
    t0, tokens = time.time(), 0
    window = 64 * len(rollout)
    bar = Progress(len(prompts), "rpo cache fill", enabled=cfg.logging.progress_bar)
    for start in range(0, len(prompts), window):
        chunk = prompts[start:start + window]
        groups = await asyncio.gather(*[
            rollout.generate_group(p, group_id=-1 - start - i, n=1, worker=i % len(rollout),
                                   max_new_tokens=cfg.rollout.max_new_tokens,
                                   temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p)
            for i, p in enumerate(chunk)])
        timeline.trajectories([t for (t,) in groups], "cache_fill")
        for p, (t,) in zip(chunk, groups, strict=True):
            rpo.fill(p.uid, t.response_ids, t.behav_logprobs, t.versions)
            tokens += len(t.response_ids)
        bar.update(len(chunk))
    bar.close()
    return {"seconds": time.time() - t0, "entries": float(len(rpo.cache)),
            "tokens": float(tokens)}


def update(rpo: RpoPlanner, algo: Algorithm, batch: list[Group], success_threshold: float
           ) -> None:
    """ε-greedy cache update from every trained group, on its shaped rewards; a response is
    correct when its reward >= `success_threshold` (cache healing counts all-wrong groups)."""
    for g in batch:
        ts = g.trajectories
        rpo.update(g.prompt_uid, [(t.response_ids, t.behav_logprobs, t.versions) for t in ts],
                   algo.shaped_rewards(g).tolist(),
                   correct=[t.reward >= success_threshold for t in ts],
                   prefix_len=min(t.prefix_len for t in ts),
                   at_length=[t.finish_reason == "length" for t in ts])
