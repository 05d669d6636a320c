"""The `mismatch/*` metrics of a real TrainerWorker (DeepSpeed ZeRO, gloo, world size 1, fp32).

Behaviour log-probs come from a plain transformers forward pass of the trainer's exported weights:
in fp32 (the same model: the metrics are ~0) and in bf16 (a **simulated bf16 engine**: the same
weights run in bfloat16 with transformers, standing in for a bf16 vLLM engine, whose logits round
differently: the metrics detect it). Tokens of an older version are left out of the metrics.
Two minibatches, so π_prox comes from both paths (the reused training forward and the proximal
pass). A module of its own: DeepSpeed keeps one process group per process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from areal_sys.ports import free_port
from areal_sys.trajectory import Group
from tests.workers.test_trainer import experiment, exported_model, make_groups, plain_logprobs
from workers.trainer import TrainerWorker


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory):
    from areal_sys.models.tiny import save_random_tiny_model

    path = save_random_tiny_model(tmp_path_factory.mktemp("mismatch_model"), seed=0)
    cfg = experiment({"lr": 1e-3, "ppo_minibatches": 2, "max_tokens_per_microbatch": 128})
    w = TrainerWorker(str(path), cfg, rank=0, world_size=1, master_port=free_port())
    w.setup()
    yield w
    w.shutdown()


def behave(groups: list[Group], model: Any, version: int) -> int:
    """Set every token's behaviour log-prob from `model` and its version to `version`; returns
    the number of response tokens."""
    for g, rows in zip(groups, plain_logprobs(model, groups), strict=True):
        for t, lp in zip(g.trajectories, rows, strict=True):
            t.behav_logprobs, t.versions = lp, [version] * len(lp)
    return sum(len(t.response_ids) for g in groups for t in g.trajectories)


@pytest.mark.slow
def test_mismatch_is_near_zero_for_the_same_fp32_model(worker: TrainerWorker,
                                                        tmp_path: Path) -> None:
    groups = make_groups(3, 4, seed=11)
    n = behave(groups, exported_model(worker, tmp_path / "w.safetensors"), version=5)
    m = worker.train_step(groups, step=5)
    assert m["mismatch/tokens"] == n and m["mismatch/token_frac"] == 1.0
    assert m["mismatch/k3"] < 1e-9
    assert m["mismatch/abs_logp_diff_max"] < 1e-4
    assert m["mismatch/weight_out_1pct_frac"] == 0.0
    assert m["mismatch/weight_mean"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_simulated_bf16_engine_is_detected(worker: TrainerWorker, tmp_path: Path) -> None:
    """bf16 behaviour log-probs for the fp32 trainer: |Δ log p| of the order of bf16's rounding
    (2^-8 relative on the logits), far above the fp32 case's 1e-4 bound."""
    groups = make_groups(3, 4, seed=12)
    model = exported_model(worker, tmp_path / "w.safetensors").to(torch.bfloat16)
    behave(groups, model, version=6)
    m = worker.train_step(groups, step=6)
    assert m["mismatch/abs_logp_diff_max"] > 1e-3
    assert m["mismatch/abs_logp_diff_mean"] > 1e-4
    assert m["mismatch/k3"] > 1e-8
    assert m["mismatch/weight_out_1pct_frac"] > 0.0
    assert m["mismatch/weight_min"] < 1.0 < m["mismatch/weight_max"]


@pytest.mark.slow
def test_older_tokens_are_left_out(worker: TrainerWorker, tmp_path: Path) -> None:
    """Every other trajectory generated at the previous version with far-off log-probs
    (staleness, not mismatch): the decoupled objective sees them (approx_kl_behav), the mismatch
    metrics do not."""
    groups = make_groups(3, 4, seed=13)
    behave(groups, exported_model(worker, tmp_path / "w.safetensors"), version=7)
    current = 0
    for g in groups:
        for k, t in enumerate(g.trajectories):
            if k % 2:
                t.behav_logprobs = [lp - 0.5 for lp in t.behav_logprobs]
                t.versions = [6] * len(t.versions)
            else:
                current += len(t.response_ids)
    m = worker.train_step(groups, step=7)
    assert m["mismatch/tokens"] == current
    assert m["mismatch/abs_logp_diff_max"] < 1e-4
    assert m["approx_kl_behav"] < -0.1  # the old tokens' logπ_b − logπ_prox = −0.5
