"""Configuration: YAML + dotted overrides, every class of bad input names its dotted field."""

from pathlib import Path

import pytest

from areal_sys.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_overrides_apply_and_parse_types():
    cfg = load_config(ROOT / "configs/local_tiny.yaml",
                      ["trainer.total_steps=5", "controller.max_staleness=0", "trainer.lr=3e-4",
                       "rollout.interruptible=false", "run_dir=/tmp/x"])
    assert cfg.trainer.total_steps == 5
    assert cfg.controller.max_staleness == 0
    assert cfg.trainer.lr == pytest.approx(3e-4)
    assert cfg.rollout.interruptible is False
    assert cfg.run_dir == "/tmp/x"


def test_every_shipped_config_validates():
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    assert files
    for f in files:
        load_config(f)


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        (["trainer.bogus=1"], "trainer.bogus", "unknown key"),
        (["trainer.total_steps=abc"], "trainer.total_steps", "integer"),
        (["controller.max_staleness=-1"], "controller.max_staleness", "greater than or equal"),
        (["algorithm.name=nonesuch"], "algorithm.name", "nonesuch"),
        (["algorithm.name=nonesuch"], "algorithm.name", "'reinforce_rej'"),
        (["algorithm.estimator=ppo"], "algorithm.estimator", "'gae'"),
        (["algorithm.dual_clip=1.0"], "algorithm.dual_clip", "greater than 1"),
        (["algorithm.overlong_max_len=10", "algorithm.overlong_cache_len=20"], "algorithm",
         "overlong_cache_len"),
        (["model.path=./no/such/dir"], "model.path", "does not exist"),
        (["rollout.temperature=0"], "rollout.temperature", "greater than"),
        (["nosection.x=1"], "nosection", "unknown key"),
    ],
)
def test_bad_values_name_the_field(overrides, field, words):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs/local_tiny.yaml", overrides)
    msg = str(err.value)
    assert msg.startswith(field + ":"), msg
    assert words in msg
    assert "\n" not in msg


def test_yaml_syntax_error_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  total_steps: [1, 2\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_hub_id_is_accepted_by_validation():
    cfg = load_config(None, ["model.path=Qwen/Qwen2.5-1.5B-Instruct"])
    assert cfg.model.path == "Qwen/Qwen2.5-1.5B-Instruct"


def test_algorithm_preset_with_overrides_on_top():
    cfg = load_config(ROOT / "configs/local_tiny.yaml",
                      ["algorithm.name=dapo", "algorithm.filter=none", "algorithm.kl_coef=0.01"])
    a = cfg.algorithm
    assert (a.name, a.clip_high, a.overlong_penalty) == ("dapo", 0.28, True)  # from the preset
    assert (a.filter, a.kl_coef) == ("none", 0.01)  # explicit keys win
    assert a.loss == "decoupled_ppo"  # local_tiny.yaml names it; dapo agrees


def test_shipped_configs_resolve_to_plain_grpo():
    for f in (ROOT / "configs/local_tiny.yaml", ROOT / "configs/gsm8k/grpo.yaml"):
        a = load_config(f).algorithm
        assert (a.name, a.estimator, a.loss, a.aggregation, a.filter, a.kl_coef) == (
            "grpo", "grpo", "decoupled_ppo", "token-mean", "none", 0.0)
