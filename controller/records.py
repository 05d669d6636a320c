"""What a training step leaves behind: staleness audit lines and the step's metrics record.

- `audit(writer, step, version, batch)`: one line per trained trajectory in `staleness.jsonl`
  (its group, admit version, token versions, interrupts, reward, RPO prefix, tool episode
  turns, calls and result tokens); returns the
  batch's largest staleness (trainer version − oldest generated token's version).
- `step_record(...)`: the line of `metrics.jsonl` (also TensorBoard / W&B and the console line);
  `episode_metrics(batch)` its `episode/` figures in tool_use runs.
  `overlap_tokens` are tokens the engines generated while the trainer trained and exported the
  step's weights (0 in synchronous runs); `gen_busy_s` the engines' generation seconds since the
  previous step's weight push.
"""

from __future__ import annotations

import time
from typing import Any

from areal_sys.metrics import JsonlWriter
from areal_sys.trajectory import Group


def audit(writer: JsonlWriter, step: int, version: int, batch: list[Group]) -> int:
    """One staleness line per trained trajectory; returns the batch's max staleness."""
    worst = 0
    for group in batch:
        for t in group.trajectories:
            writer.write({
                "step": step, "prompt_uid": t.prompt_uid, "group_id": group.group_id,
                "trainer_version": version, "admit_version": group.admit_version,
                "min_token_version": t.min_version, "max_token_version": t.max_version,
                "num_interrupts": t.num_interrupts, "reward": t.reward,
                "response_len": len(t.response_ids), "prefix_len": t.prefix_len,
                "prefix_min_version": min(t.versions[: t.prefix_len], default=None),
                "turns": t.turns, "tool_calls": t.tool_calls, "tool_tokens": t.tool_tokens,
            })
            worst = max(worst, version - t.min_version)
    return worst


def step_record(step: int, version: int, batch: list[Group], *, staleness: int,
                train: dict[str, float], sync: dict[str, float], counts: dict[str, int],
                rpo: dict[str, float], overlap: float, gen_busy_s: float, wait_s: float,
                t0: float, buffered: int, in_flight: int) -> dict[str, Any]:
    """The metrics of step `step` (now at `version`), begun at wall time `t0`."""
    trajs = [t for g in batch for t in g.trajectories]
    step_time = time.time() - t0
    tokens = sum(g.num_tokens_generated for g in batch)
    filtered_frac = counts["filtered"] / max(counts["scored"], 1)
    return {
        "step": step, "version": version,
        "reward_mean": sum(t.reward for t in trajs) / len(trajs),
        "reward_fail_frac": sum(not t.reward_ok for t in trajs) / len(trajs),
        "response_len_mean": sum(len(t.response_ids) for t in trajs) / len(trajs),
        "tokens_generated": tokens, "tokens_per_s": tokens / max(step_time, 1e-9),
        "gen_tokens_per_sample": tokens / len(trajs),
        "prefix_len_mean": sum(t.prefix_len for t in trajs) / len(trajs),
        "overlap_tokens": overlap, "staleness_max": staleness,
        "step_time_s": step_time, "wait_s": wait_s,
        "buffered": buffered, "in_flight": in_flight,
        "groups_scored": counts["scored"], "groups_filtered": counts["filtered"],
        "groups_filter_bypassed": counts["bypassed"], "filtered_frac": filtered_frac,
        "train/filtered_frac": filtered_frac,
        # groups whose rewards differ: the only ones a group-relative advantage learns from
        "train/informative_groups": sum(len(set(g.rewards)) > 1 and not g.filter_bypassed
                                        for g in batch),
        **sync, **rpo,
        # the trainer's figures under train/, its mismatch/* group under its own name
        **{(k if k.startswith("mismatch/") else f"train/{k}"): v for k, v in train.items()},
        "gen_busy_s": gen_busy_s,
    }


def episode_metrics(batch: list[Group]) -> dict[str, float]:
    """tool_use episodes (areal_sys/episode.py): model turns per episode, the fraction of episodes
    that called a tool, calls and failed calls per episode, tokens per episode by source (model /
    tool) and seconds in tools per episode."""
    trajs = [t for g in batch for t in g.trajectories]
    n = max(len(trajs), 1)
    tool = sum(t.tool_tokens for t in trajs)
    return {"episode/turns": sum(t.turns for t in trajs) / n,
            "episode/call_rate": sum(t.tool_calls > 0 for t in trajs) / n,
            "episode/tool_calls": sum(t.tool_calls for t in trajs) / n,
            "episode/tool_errors": sum(t.tool_errors for t in trajs) / n,
            "episode/model_tokens": sum(len(t.response_ids) - t.prefix_len for t in trajs) / n
            - tool / n,
            "episode/tool_tokens": tool / n,
            "episode/tool_s": sum(t.tool_s for t in trajs) / n}
