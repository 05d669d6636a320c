"""bf16 training on CPU under ZeRO-1 and ZeRO-3 (real DeepSpeed, in-process, world size 1).

A module of its own: DeepSpeed keeps one process group per process, so these engines must not
overlap with the module-scoped engine of test_trainer.py.
"""

from __future__ import annotations

import math

import pytest

from areal_sys.ports import free_port
from tests.workers.test_trainer import experiment, make_groups
from workers.batch import lr_at_step
from workers.trainer import TrainerWorker


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [1, 3])
def test_bf16_trains_with_warmup_and_cosine_schedule(
    zero_stage: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """bf16 under ZeRO-1 and ZeRO-3 on CPU: finite gradients, the scheduled learning rates, bf16
    weights exported, and positive-advantage responses become more likely."""
    from areal_sys.models.tiny import save_random_tiny_model

    path = save_random_tiny_model(tmp_path_factory.mktemp("bf16_model"), seed=0)
    cfg = experiment({
        "lr": 1e-3, "zero_stage": zero_stage, "max_tokens_per_microbatch": 256,
        "warmup_steps": 2, "lr_schedule": "cosine", "total_steps": 6, "ppo_minibatches": 2,
    }, dtype="bfloat16")
    w = TrainerWorker(str(path), cfg, rank=0, world_size=1, master_port=free_port())
    w.setup()
    try:
        groups = make_groups(4, 4, seed=5)
        before = w.compute_logprobs(groups)
        metrics = [w.train_step(groups, step) for step in range(3)]
        after = w.compute_logprobs(groups)
        meta = w.weight_meta()
    finally:
        w.shutdown()
    assert [m["lr"] for m in metrics] == pytest.approx(
        [lr_at_step(s, lr=1e-3, warmup_steps=2, total_steps=6, schedule="cosine")
         for s in range(3)])
    assert all(math.isfinite(m["grad_norm"]) and m["grad_norm"] > 0 for m in metrics)
    assert meta is not None and {dtype for _, _, dtype in meta} == {"bfloat16"}
    gains = [
        sum(a) - sum(b)
        for g_after, g_before, g in zip(after, before, groups, strict=True)
        for a, b, t in zip(g_after, g_before, g.trajectories, strict=True)
        if t.reward == 1
    ]
    assert sum(gains) > 0

