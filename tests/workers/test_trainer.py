"""TrainerWorker with a real DeepSpeed ZeRO engine (gloo, world size 1, in-process), tiny model.

Reference log-probs come from a plain transformers forward pass (one unpacked sequence at a time)
of the weights the worker exports, so every check also exercises `export_weights`. That the
number of micro-batches does not change the update (global loss normalisation) is proven in
test_trainer_dp.py (1 and 3 micro-batches, loss, gradient norm and weights).
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from areal_sys.config import ExperimentConfig
from areal_sys.trajectory import Group, Trajectory
from workers.reference import ReferencePolicy
from workers.trainer import TrainerWorker

VOCAB = 22  # the tiny char vocabulary


def experiment(trainer: dict, algorithm: dict | None = None, dtype: str = "float32",
               kl_to_initial: bool = False) -> ExperimentConfig:
    """The typed config the worker tests build their trainer or critic from (seed 0). The
    rollout limits fit `make_groups` (sequences of at most 32 tokens), so packing budgets down to
    40 tokens validate."""
    return ExperimentConfig.model_validate({
        "seed": 0, "trainer": trainer, "algorithm": algorithm or {}, "model": {"dtype": dtype},
        "rollout": {"max_new_tokens": 24, "max_model_len": 40},
        "logging": {"kl_to_initial": kl_to_initial},
    })


def make_groups(n_groups: int, size: int, seed: int) -> list[Group]:
    """Random prompts/responses; rewards alternate 1/0 so every group has mixed advantages."""
    rng = random.Random(seed)
    groups = []
    for g in range(n_groups):
        prompt = [rng.randrange(3, VOCAB) for _ in range(rng.randint(3, 8))]
        trajs = []
        for k in range(size):
            resp = [rng.randrange(3, VOCAB) for _ in range(rng.randint(4, 24))]
            n = len(resp)
            trajs.append(
                Trajectory(f"p{g}", g, prompt, resp, [-3.0] * n, [0] * n, [1] * n, reward=k % 2)
            )
        groups.append(Group(g, f"p{g}", trajs))
    return groups


# ------------------------------------------------------------------------- real DeepSpeed engine


def exported_model(worker: TrainerWorker, path: Path) -> Any:
    """A fresh transformers model holding the weights `worker` exports to `path`."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    assert worker.export_weights(str(path))["num_bytes"] > 0
    model = AutoModelForCausalLM.from_pretrained(worker.model_path, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    assert unexpected == [] and missing == ["lm_head.weight"]  # tied to the embeddings
    model.tie_weights()
    return model.eval()


def plain_logprobs(model: Any, groups: list[Group]) -> list[list[list[float]]]:
    """Per trajectory, log p(response token | prefix): one unpacked forward per sequence."""
    out = []
    with torch.no_grad():
        for g in groups:
            rows = []
            for t in g.trajectories:
                logits = model(input_ids=torch.tensor([t.prompt_ids + t.response_ids])).logits[0]
                logp = torch.log_softmax(logits[len(t.prompt_ids) - 1 : -1], dim=-1)
                rows.append(logp.gather(1, torch.tensor(t.response_ids)[:, None])[:, 0].tolist())
            out.append(rows)
    return out


def max_diff(a: list[list[list[float]]], b: list[list[list[float]]]) -> float:
    return max(
        abs(x - y)
        for ga, gb in zip(a, b, strict=True)
        for ta, tb in zip(ga, gb, strict=True)
        for x, y in zip(ta, tb, strict=True)
    )


@pytest.mark.slow
def test_export_weights_reproduce_trained_logits(worker: TrainerWorker, tmp_path: Path) -> None:
    worker.train_step(make_groups(2, 4, seed=1), step=0)
    target = tmp_path / "weights.safetensors"
    model = exported_model(worker, target)
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]  # no temp file left
    ids = torch.tensor([[3, 9, 4, 11, 5, 17, 6]])
    with torch.no_grad():
        ref = worker.engine.module(input_ids=ids, use_cache=False).logits
        assert (model(input_ids=ids).logits - ref).abs().max().item() < 1e-5


@pytest.mark.slow
def test_proximal_logprobs_equal_plain_forward_before_update(
    worker: TrainerWorker, tmp_path: Path
) -> None:
    """Behaviour log-probs := a plain forward of the current weights. The proximal pass of the
    next step must reproduce them: KL(behav, prox) ≈ 0 and every behaviour weight ≈ 1."""
    groups = make_groups(3, 4, seed=2)
    reference = plain_logprobs(exported_model(worker, tmp_path / "w.safetensors"), groups)
    assert max_diff(worker.compute_logprobs(groups), reference) < 1e-4
    for g, rows in zip(groups, reference, strict=True):
        for t, lp in zip(g.trajectories, rows, strict=True):
            t.behav_logprobs = lp
    m = worker.train_step(groups, step=1)
    assert abs(m["approx_kl_behav"]) < 1e-5
    assert m["behav_weight_max"] == pytest.approx(1.0, abs=1e-4)
    assert m["behav_weight_mean"] == pytest.approx(1.0, abs=1e-5)
    assert m["num_minibatches"] == 2 and m["n_seqs"] == 12 and m["num_microbatches"] >= 2


@pytest.mark.slow
def test_train_steps_raise_logprob_of_positive_advantage_responses(worker: TrainerWorker) -> None:
    groups = make_groups(4, 4, seed=4)
    before = worker.compute_logprobs(groups)
    for g, rows in zip(groups, before, strict=True):  # sampled by the current policy
        for t, lp in zip(g.trajectories, rows, strict=True):
            t.behav_logprobs = lp
    metrics = [worker.train_step(groups, step=s) for s in range(2, 5)]
    after = worker.compute_logprobs(groups)
    # mean change of the response log-likelihood per token, by sign of the advantage
    changes: dict[bool, list[float]] = {True: [], False: []}
    for g, b_rows, a_rows in zip(groups, before, after, strict=True):
        for t, b, a in zip(g.trajectories, b_rows, a_rows, strict=True):
            changes[t.reward > 0].append((sum(a) - sum(b)) / len(a))
    up, down = changes[True], changes[False]
    assert sum(up) / len(up) > 0.05 and sum(down) / len(down) < -0.05
    assert sum(x > 0 for x in up) >= 0.75 * len(up) and sum(x < 0 for x in down) >= 0.75 * len(down)
    for m in metrics:
        for key in ("loss", "entropy", "clip_frac", "grad_norm", "approx_kl_behav"):
            assert math.isfinite(m[key]), key
        assert m["lr"] == pytest.approx(1e-3) and m["n_tokens"] > m["n_loss_tokens"] > 0
    # on-policy at first (behaviour = proximal), then the proximal policy drifts from behaviour
    assert abs(metrics[0]["approx_kl_behav"]) < 1e-5
    assert abs(metrics[-1]["approx_kl_behav"]) > 1e-4 and metrics[-1]["behav_weight_max"] > 1.0


@pytest.mark.slow
def test_save_hf_loads_in_transformers(worker: TrainerWorker, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    worker.save_hf(str(tmp_path / "hf"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([tok.encode("12+3=")])
    with torch.no_grad():
        ref = worker.engine.module(input_ids=ids, use_cache=False).logits
        assert (model(input_ids=ids).logits - ref).abs().max().item() < 1e-5


@pytest.mark.slow
def test_kl_in_loss_against_a_frozen_reference(worker: TrainerWorker) -> None:
    """KL penalty in the loss: the reference is a frozen copy of the weights at its creation, so
    the first proximal pass sees KL 0 to it, and training moves away from it."""
    from areal_sys.algorithms import build_algorithm

    saved = worker.algo, worker.reference, worker.kl_metric_every
    worker.algo = build_algorithm({"name": "grpo", "kl_coef": 0.1})
    worker.reference = ReferencePolicy(worker.engine.module, temperature=worker.temperature,
                                       max_tokens=worker.train_cfg.max_tokens_per_microbatch)
    worker.kl_metric_every = 1  # logging.kl_to_initial with kl_to_initial_every 1
    try:
        groups = make_groups(3, 4, seed=6)
        initial = worker.compute_logprobs(groups)
        for g, rows in zip(groups, initial, strict=True):
            for t, lp in zip(g.trajectories, rows, strict=True):
                t.behav_logprobs = lp
        first = worker.train_step(groups, step=6)
        assert abs(first["kl_to_initial"]) < 1e-6 and first["kl_loss"] >= 0.0
        second = worker.train_step(groups, step=7)  # its proximal pass sees the moved weights
        assert second["kl_to_initial"] > 1e-5 and second["kl_loss"] > 0.0
        assert max_diff(worker.reference_logprobs(groups), initial) < 1e-5
    finally:
        worker.algo, worker.reference, worker.kl_metric_every = saved


@pytest.mark.slow
def test_sparse_signal_skip_leaves_the_weights_unchanged(worker: TrainerWorker) -> None:
    """`trainer.sparse_signal=skip` with 2 informative groups required: a batch with one mixed
    group and three all-equal ones runs the step at learning rate 0, so every log-prob stays."""
    cfg = worker.train_cfg
    groups = make_groups(4, 4, seed=5)
    for g in groups[1:]:
        for t in g.trajectories:
            t.reward = 1.0
    worker.train_cfg = cfg.model_copy(update={"sparse_signal": "skip", "min_informative_groups": 2})
    try:
        before = worker.compute_logprobs(groups)
        m = worker.train_step(groups, step=10)
        after = worker.compute_logprobs(groups)
    finally:
        worker.train_cfg = cfg
    assert m["signal_lr_factor"] == 0.0 and m["lr"] == 0.0 and m["grad_norm"] > 0
    assert max_diff(before, after) == 0.0
