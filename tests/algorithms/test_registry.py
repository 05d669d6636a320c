"""Registries: config → bound plugins, loud errors for unknown names."""

import pytest
import torch

from areal_sys.algorithms import (
    AGGREGATION,
    ESTIMATOR,
    POLICY_LOSS,
    LossDenominators,
    build_algorithm,
    register,
)
from areal_sys.algorithms.registry import get_plugin
from areal_sys.config import AlgorithmConfig


def test_every_config_choice_is_registered() -> None:
    fields = AlgorithmConfig.model_fields
    for kind, field in ((ESTIMATOR, "name"), (POLICY_LOSS, "loss"), (AGGREGATION, "aggregation")):
        for choice in fields[field].annotation.__args__:  # type: ignore[union-attr]
            assert get_plugin(kind, choice).name == choice


def test_build_algorithm_binds_config_options() -> None:
    cfg = AlgorithmConfig(adv_std="population", clip_high=0.28, behav_weight_cap=None).model_dump()
    algo = build_algorithm(cfg)
    adv = algo.estimator(torch.tensor([1.0, 1.0, -1.0, -1.0]))
    assert torch.allclose(adv, torch.tensor([1.0, 1.0, -1.0, -1.0]), atol=1e-5)  # population std
    lp = torch.log(torch.tensor([0.0127]))  # within clip-high 0.28 of π_old = 0.01
    old = torch.log(torch.tensor([0.01]))
    loss, stats = algo.policy_loss(lp, old, old, torch.ones(1), torch.ones(1))
    assert stats["clipped"].item() == 0.0
    value = algo.aggregate(loss.view(1, 1), torch.ones(1, 1), LossDenominators(1.0, 1.0, 1.0))
    assert value.item() == pytest.approx(-1.27, abs=1e-3)
    assert "decoupled_ppo" in algo.summary and "population" in algo.summary


def test_unknown_names_and_duplicates_fail_loudly() -> None:
    with pytest.raises(KeyError, match="registered"):
        get_plugin(ESTIMATOR, "nope")
    with pytest.raises(ValueError, match="already registered"):
        register(ESTIMATOR, "grpo")(lambda r: r)
