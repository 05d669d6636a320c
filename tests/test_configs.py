"""Every shipped config validates, and the per-algorithm configs pick what their names promise.

`load_config` checks the schema and the model id, not the datasets: the GSM8K recipes name a
local dataset the user provides (data/gsm8k/*.jsonl), which `areal-sys validate` and
`areal-sys run` read and report as a one-line error when it is missing.
"""

from pathlib import Path

import pytest

from areal_sys.algorithms import build_algorithm
from areal_sys.algorithms.presets import PRESETS
from areal_sys.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_validates_and_builds_its_algorithm(path: Path) -> None:
    cfg = load_config(path)
    algo = build_algorithm(cfg.algorithm, max_new_tokens=cfg.rollout.max_new_tokens)
    assert algo.summary.startswith(f"preset={cfg.algorithm.name}")


@pytest.mark.parametrize("suite", ["tiny", "gsm8k"])
def test_one_config_per_preset(suite: str) -> None:
    names = {p.stem for p in (ROOT / "configs" / suite).glob("*.yaml")}
    assert {n for n in names if not n.startswith("rpo_")} >= set(PRESETS)
    names &= set(PRESETS)
    for name in names:
        cfg = load_config(ROOT / "configs" / suite / f"{name}.yaml")
        assert cfg.algorithm.name == name
        if name in ("dapo", "reinforce_rej"):  # these need +-1 rewards (ALGORITHMS.md)
            assert (cfg.reward.correct_reward, cfg.reward.wrong_reward) == (1.0, -1.0)
        if suite == "gsm8k":
            assert cfg.model.path == "Qwen/Qwen2.5-1.5B-Instruct"
            assert cfg.controller.max_staleness == 4 and cfg.data.task == "math"
        else:
            assert cfg.model.path == "tiny" and cfg.controller.max_staleness >= 1


@pytest.mark.parametrize("suite", ["tiny", "gsm8k"])
@pytest.mark.parametrize("preset", ["grpo", "dapo"])
def test_rpo_configs_are_their_preset_plus_rpo(suite: str, preset: str) -> None:
    rpo = load_config(ROOT / "configs" / suite / f"rpo_{preset}.yaml")
    base = load_config(ROOT / "configs" / suite / f"{preset}.yaml")
    assert rpo.rpo.enabled and rpo.rpo.length_reward and not base.rpo.enabled
    assert rpo.algorithm == base.algorithm and rpo.rollout == base.rollout
    assert rpo.trainer == base.trainer and rpo.reward == base.reward


def test_gsm8k_validate_names_the_missing_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from areal_sys.cli import main

    monkeypatch.chdir(tmp_path)  # no data/gsm8k/ here
    assert main(["validate", str(ROOT / "configs/gsm8k/grpo.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("areal-sys: error: data.train: data/gsm8k/train.jsonl: no such file")
    assert len(err.splitlines()) == 1
