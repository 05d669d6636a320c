"""rollout.update_mode and its alias, the old rollout.interruptible flag."""

from pathlib import Path

import pytest

from areal_sys.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("mode", ["abort", "keep", "wait"])
def test_update_mode_is_taken_as_given(mode):
    assert load_config(None, [f"rollout.update_mode={mode}"]).rollout.update_mode == mode


def test_default_is_abort():
    assert load_config(None, []).rollout.update_mode == "abort"


@pytest.mark.parametrize(("flag", "mode"), [("true", "abort"), ("false", "wait")])
def test_interruptible_maps_onto_update_mode(flag, mode):
    assert load_config(None, [f"rollout.interruptible={flag}"]).rollout.update_mode == mode
    both = load_config(None, [f"rollout.interruptible={flag}", f"rollout.update_mode={mode}"])
    assert both.rollout.update_mode == mode


@pytest.mark.parametrize(("flag", "mode"), [("true", "wait"), ("true", "keep"), ("false", "keep"),
                                            ("false", "abort")])
def test_interruptible_disagreeing_with_update_mode_is_refused(flag, mode):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"rollout.interruptible={flag}", f"rollout.update_mode={mode}"])
    assert str(err.value).startswith("rollout:") and "update_mode" in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_update_mode_is_refused_naming_the_field():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["rollout.update_mode=pause"])
    assert str(err.value).startswith("rollout.update_mode:")


def test_the_shipped_configs_name_update_mode_so_an_override_takes_another_mode():
    assert load_config(ROOT / "configs/local_tiny.yaml", []).rollout.update_mode == "abort"
    cfg = load_config(ROOT / "configs/local_tiny.yaml", ["rollout.update_mode=keep"])
    assert cfg.rollout.update_mode == "keep" and cfg.rollout.interruptible is None
    assert not any("interruptible" in p.read_text() for p in (ROOT / "configs").rglob("*.yaml"))
