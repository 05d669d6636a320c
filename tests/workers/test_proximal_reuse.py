"""π_prox from the training forward (workers/trainer.py) against the proximal pass.

The trainer takes the first minibatch's π_prox from that minibatch's own training forward (no
optimiser step has run yet) and runs the no-gradient proximal forward only over the later
minibatches. `_reuse_train_logp = False` is the previous path: a proximal forward over every
minibatch. Both must give bit-identical losses, gradients (recorded before every optimiser step),
weights and metrics, with one minibatch (the demo) and with three (the later ones read the
proximal pass while the weights have moved), over several micro-batches per minibatch (gradient
accumulation), two steps, with a KL penalty in the loss, the kl_to_initial metric and RPO's
`faithful` prefixes (their behaviour log-probs are π_prox's).

ZeRO stage 0 in fp32 keeps every gradient in `param.grad` until the step, so the test can read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from areal_sys.config import ExperimentConfig
from areal_sys.ports import free_port
from areal_sys.trajectory import Group
from tests.workers.test_trainer import experiment, make_groups
from workers.reference import has_dropout
from workers.trainer import TrainerWorker

TIMES = ("proximal_time_s", "reference_time_s", "train_time_s", "tokens_per_s")

SETTINGS = {
    "one_minibatch": (
        {"ppo_minibatches": 1, "max_tokens_per_microbatch": 64},
        {"name": "grpo"},
        False,
    ),
    "three_minibatches_kl_rpo": (
        {"ppo_minibatches": 3, "max_tokens_per_microbatch": 64},
        {"name": "grpo", "kl_coef": 0.1, "kl_placement": "loss"},
        True,
    ),
}


def config(setting: str) -> ExperimentConfig:
    trainer, algorithm, kl_metric = SETTINGS[setting]
    cfg = experiment({"lr": 1e-2, "zero_stage": 0, **trainer}, algorithm,
                     kl_to_initial=kl_metric)
    return cfg.model_copy(update={"logging": cfg.logging.model_copy(
        update={"kl_to_initial_every": 2})})


def batch() -> list[Group]:
    """Random groups; some responses carry an RPO prefix (their first tokens from a cache)."""
    groups = make_groups(4, 4, seed=21)
    for g in groups:
        for k, t in enumerate(g.trajectories):
            t.prefix_len = min(k, len(t.response_ids))
    return groups


def train(model: Path, cfg: ExperimentConfig, reuse: bool) -> dict[str, Any]:
    """Two train steps from the initial weights; metrics, the gradients at every optimiser step,
    and the final weights."""
    worker = TrainerWorker(str(model), cfg, rank=0, world_size=1, master_port=free_port())
    worker.setup()
    assert worker._reuse_train_logp  # the tiny model has no dropout: reuse is the default
    worker._reuse_train_logp = reuse
    params = list(worker.engine.module.parameters())
    grads: list[list[torch.Tensor]] = []
    engine_step = worker.engine.step

    def recording_step(*args: Any, **kwargs: Any) -> Any:
        grads.append([p.grad.detach().clone() for p in params])
        return engine_step(*args, **kwargs)

    worker.engine.step = recording_step
    try:
        metrics = [worker.train_step(batch(), step=s) for s in range(2)]
        weights = {k: v.detach().clone() for k, v in worker.engine.module.state_dict().items()}
    finally:
        worker.shutdown()
    return {"metrics": metrics, "grads": grads, "weights": weights}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from areal_sys.models.tiny import save_random_tiny_model

    return save_random_tiny_model(tmp_path_factory.mktemp("reuse_model"), seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_reused_training_logprobs_equal_the_proximal_pass(model: Path, setting: str) -> None:
    cfg = config(setting)
    new, old = train(model, cfg, reuse=True), train(model, cfg, reuse=False)
    minibatches = cfg.trainer.ppo_minibatches
    assert len(new["grads"]) == len(old["grads"]) == 2 * minibatches
    for g_new, g_old in zip(new["grads"], old["grads"], strict=True):
        assert any(bool(g.abs().sum() > 0) for g in g_old)  # a real update
        for a, b in zip(g_new, g_old, strict=True):
            assert torch.equal(a, b)
    assert new["weights"].keys() == old["weights"].keys()
    for key, w in new["weights"].items():
        assert torch.equal(w, old["weights"][key]), key
    for m_new, m_old in zip(new["metrics"], old["metrics"], strict=True):
        assert m_new.keys() == m_old.keys()
        assert m_old["num_microbatches"] > minibatches  # gradient accumulation inside a minibatch
        for key in m_new.keys() - set(TIMES):
            assert m_new[key] == m_old[key], key
        assert m_old["proximal_time_s"] > 0.0
        if minibatches == 1:  # the proximal forward is skipped altogether
            assert m_new["proximal_time_s"] == 0.0
    # KL penalty: the reference forward runs every step; the metric only on steps % 2 == 0
    first, second = new["metrics"]
    assert ("kl_to_initial" in first) == cfg.logging.kl_to_initial
    assert "kl_to_initial" not in second
    assert ("kl_loss" in second) == (cfg.algorithm.kl_coef > 0)


def test_reference_loaded_only_when_used(model: Path) -> None:
    """A frozen copy of the initial policy for a KL penalty or the kl_to_initial metric only."""
    def worker(algorithm: dict, kl_metric: bool) -> TrainerWorker:
        cfg = experiment({}, algorithm, kl_to_initial=kl_metric)
        return TrainerWorker(str(model), cfg, rank=0, world_size=1, master_port=0)

    plain = worker({"name": "grpo"}, False)
    assert not plain.use_reference and plain.kl_metric_every is None
    metric = worker({"name": "grpo"}, True)
    assert metric.use_reference and metric.kl_metric_every == 10
    for placement in ("loss", "reward"):
        penalty = worker({"name": "grpo", "kl_coef": 0.1, "kl_placement": placement}, False)
        assert penalty.use_reference and penalty.kl_metric_every is None


def test_kl_to_initial_defaults_off_every_ten_steps() -> None:
    logging_cfg = ExperimentConfig().logging
    assert logging_cfg.kl_to_initial is False and logging_cfg.kl_to_initial_every == 10
    with pytest.raises(ValueError, match="kl_to_initial_every"):
        ExperimentConfig.model_validate({"logging": {"kl_to_initial_every": 0}})


def test_dropout_turns_reuse_off(model: Path) -> None:
    """A train-mode forward with dropout is not π_prox: such a model keeps the proximal pass."""
    from transformers import AutoModelForCausalLM

    tiny = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    assert not has_dropout(tiny)
    tiny.config.attention_dropout = 0.1
    assert has_dropout(tiny)
    assert has_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)))
    assert not has_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.0)))
