"""Registries and build_algorithm: config → bound plugins, loud errors for unknown names."""

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from areal_sys.algorithms import (
    AGGREGATION,
    ESTIMATOR,
    FILTER,
    KL,
    POLICY_LOSS,
    REGISTRIES,
    LossDenominators,
    build_algorithm,
    register,
)
from areal_sys.algorithms.registry import builtin_names, get_plugin, plugins
from areal_sys.config import AlgorithmConfig

CONFIG_FIELD = {
    ESTIMATOR: "estimator",
    POLICY_LOSS: "loss",
    AGGREGATION: "aggregation",
    FILTER: "filter",
    KL: "kl_estimator",
}


@pytest.mark.parametrize("kind", sorted(CONFIG_FIELD))
def test_every_registered_plugin_is_selectable(kind: str) -> None:
    """The config's choices are the registry: every registered name validates."""
    assert set(REGISTRIES) == set(CONFIG_FIELD)
    for name in plugins(kind):
        cfg = AlgorithmConfig.model_validate({CONFIG_FIELD[kind]: name})
        assert getattr(cfg, CONFIG_FIELD[kind]) == name


@pytest.mark.parametrize("kind", sorted(CONFIG_FIELD))
def test_an_unknown_piece_fails_in_one_line_naming_the_known_ones(kind: str) -> None:
    from areal_sys.config import ConfigError, load_config

    field = CONFIG_FIELD[kind]
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"algorithm.{field}=nonesuch"])
    msg = str(err.value)
    assert msg.startswith(f"algorithm.{field}: unknown {kind} 'nonesuch'; registered: "), msg
    assert all(repr(name) in msg for name in plugins(kind)) and "\n" not in msg


PLUGIN_MODULE = '''
import torch

from areal_sys.algorithms import ESTIMATOR, register


@register(ESTIMATOR, "centred_times_two")
def centred_times_two(rewards: torch.Tensor) -> torch.Tensor:
    """Twice the mean-centred reward (a test plugin)."""
    return 2 * (rewards - rewards.mean())
'''


def test_a_user_registered_estimator_is_selectable_from_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module named in algorithm.plugins registers its estimator before the pieces are
    checked, and build_algorithm binds it like a built-in."""
    from areal_sys.config import ConfigError, load_config

    (tmp_path / "my_estimators.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yaml_file = tmp_path / "exp.yaml"
    yaml_file.write_text("algorithm:\n  name: grpo\n  plugins: [my_estimators]\n"
                         "  estimator: centred_times_two\n")
    try:
        with pytest.raises(ConfigError, match="algorithm.estimator: unknown estimator"):
            load_config(None, ["algorithm.estimator=centred_times_two"])  # not imported
        cfg = load_config(yaml_file)
        assert cfg.algorithm.estimator == "centred_times_two"
        algo = build_algorithm(cfg.algorithm)
        adv = algo.estimator(torch.tensor([1.0, 0.0, 0.0, 0.0]))  # type: ignore[misc]
        assert adv.tolist() == [1.5, -0.5, -0.5, -0.5]
        assert "estimator=centred_times_two" in algo.summary
        with pytest.raises(ConfigError, match=r"^algorithm.plugins: cannot import 'no_such_mod"):
            load_config(None, ["algorithm.plugins=[no_such_mod]"])
    finally:
        REGISTRIES[ESTIMATOR].pop("centred_times_two", None)
        sys.modules.pop("my_estimators", None)


def test_every_plugin_has_a_one_line_description() -> None:
    for kind in REGISTRIES:
        for name, plugin in plugins(kind).items():
            assert plugin.description and "\n" not in plugin.description, (kind, name)


def test_build_algorithm_binds_config_options() -> None:
    cfg = AlgorithmConfig(adv_std="population", clip_high=0.28, behav_weight_cap=None).model_dump()
    algo = build_algorithm(cfg)
    adv = algo.estimator(torch.tensor([1.0, 1.0, -1.0, -1.0]))  # type: ignore[misc]
    assert torch.allclose(adv, torch.tensor([1.0, 1.0, -1.0, -1.0]), atol=1e-5)  # population std
    lp = torch.log(torch.tensor([0.0127]))  # within clip-high 0.28 of π_old = 0.01
    old = torch.log(torch.tensor([0.01]))
    loss, stats = algo.policy_loss(lp, old, old, torch.ones(1), torch.ones(1))
    assert stats["clipped"].item() == 0.0
    value = algo.aggregate(loss.view(1, 1), torch.ones(1, 1), LossDenominators(1.0, 1.0))
    assert value.item() == pytest.approx(-1.27, abs=1e-3)
    assert "decoupled_ppo" in algo.summary and "population" in algo.summary


def test_build_algorithm_accepts_a_partial_mapping_and_the_model() -> None:
    a = build_algorithm({"name": "dr_grpo"}, max_new_tokens=64)
    b = build_algorithm(AlgorithmConfig(name="dr_grpo"), max_new_tokens=64)
    assert a.summary == b.summary
    assert "aggregation=dr_grpo" in a.summary


def test_default_algorithm_is_plain_grpo() -> None:
    algo = build_algorithm({})
    assert algo.estimator is not None and algo.token_estimator is None
    assert not algo.needs_critic and algo.value_loss is None
    assert not algo.needs_reference and not algo.kl_in_loss and not algo.kl_in_reward
    assert not algo.mask_zero_advantage and algo.overlong_lengths is None
    assert algo.filter(torch.tensor([1.0, 1.0]))
    r = torch.tensor([1.0, 0.0])
    assert torch.equal(algo.shape_rewards(r, [5000, 3]), r)
    assert algo.train_mask(["length", "stop"]).tolist() == [1.0, 1.0]
    assert "kl=off" in algo.summary and "filter=none" in algo.summary


def test_unknown_names_and_duplicates_fail_loudly() -> None:
    with pytest.raises(KeyError, match="registered"):
        get_plugin(ESTIMATOR, "nope")
    with pytest.raises(ValueError, match="already registered"):
        register(ESTIMATOR, "grpo")(lambda r: r)


def test_a_new_plugin_is_one_decorated_function() -> None:
    """A plugin registered elsewhere is bound like the built-ins (the config would list its
    name); nothing in build_algorithm or the trainer knows it."""

    @register(FILTER, "_test_at_least_two_correct", options={"t": "success_threshold"})
    def at_least_two(rewards: torch.Tensor, *, t: float) -> bool:
        """Keep groups with two or more correct responses."""
        return int((rewards >= t).sum()) >= 2

    try:
        from areal_sys.algorithms.registry import bind

        keep = bind(FILTER, "_test_at_least_two_correct", {"success_threshold": 0.5})
        assert keep(torch.tensor([1.0, 1.0, 0.0])) and not keep(torch.tensor([1.0, 0.0]))
    finally:
        del REGISTRIES[FILTER]["_test_at_least_two_correct"]


def test_builtin_names_read_from_source_are_the_registered_builtins() -> None:
    """Config validation reads the built-in names from the modules' source (no torch import);
    they must be exactly what importing those modules registers."""
    import subprocess

    code = ("from areal_sys.algorithms.registry import REGISTRIES, builtin_names, "
            "load_builtin_plugins; names = builtin_names(); load_builtin_plugins(); "
            "print({k: sorted(v) for k, v in names.items()} == "
            "{k: sorted(r) for k, r in REGISTRIES.items()})")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.stdout.strip() == "True", res.stderr
    assert set(REGISTRIES) == set(builtin_names())


def test_validating_an_algorithm_imports_no_torch() -> None:
    import subprocess

    code = ("import sys; from areal_sys.config import AlgorithmConfig; "
            "AlgorithmConfig.model_validate({'name': 'dapo', 'estimator': 'rloo'}); "
            "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.stdout.strip() == "False", res.stderr
