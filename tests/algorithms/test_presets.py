"""Presets: each resolves to registered pieces, explicit keys win, and the Algorithm it builds
carries the right facts for the trainer and controller."""

import importlib

import pytest
import torch

from areal_sys.algorithms import build_algorithm
from areal_sys.algorithms.presets import PRESETS, preset_values
from areal_sys.algorithms.registry import AGGREGATION, ESTIMATOR, FILTER, POLICY_LOSS, get_plugin
from areal_sys.config import AlgorithmConfig, ExperimentConfig


def test_one_module_per_preset_with_its_paper() -> None:
    """Every preset is the module of its name; its docstring names the method's paper."""
    assert AlgorithmConfig().name == "grpo"
    for name, preset in PRESETS.items():
        module = importlib.import_module(f"areal_sys.algorithms.presets.{name}")
        assert module.PRESET is preset and preset.name == name
        assert "arXiv:" in (module.__doc__ or "") or "1992" in (module.__doc__ or ""), name
        assert "\n" not in preset.description and preset.description


# The constants ALGORITHMS.md gives for each method: clip range (1 - low, 1 + high), dual clip,
# KL, overlong shaping, the pieces, and the rewards (+-1 where the method defines them).
PPO_CLIP = {"clip_low": 0.2, "clip_high": 0.2, "dual_clip": None}
DOCUMENTED = {
    "grpo": ({"estimator": "grpo", "loss": "decoupled_ppo", "aggregation": "token-mean",
              "filter": "none", **PPO_CLIP, "kl_coef": 0.0, "overlong_penalty": False}, {}),
    "dr_grpo": ({"estimator": "dr_grpo", "aggregation": "dr_grpo", **PPO_CLIP, "kl_coef": 0.0},
                {}),
    "dapo": ({"estimator": "grpo", "aggregation": "token-mean", "filter": "dynamic_sampling",
              "clip_low": 0.2, "clip_high": 0.28, "dual_clip": None, "kl_coef": 0.0,
              "overlong_penalty": True}, {"correct_reward": 1.0, "wrong_reward": -1.0}),
    "ppo": ({"estimator": "gae", "loss": "decoupled_ppo", **PPO_CLIP, "value_clip": 0.5,
             "whiten_advantages": True, "gae_gamma": 1.0, "kl_placement": "reward"}, {}),
    "raft": ({"estimator": "raft", "loss": "raft_sft", "filter": "remove_all_wrong",
              "kl_coef": 0.0}, {}),
    "raft_pp": ({"estimator": "raft", "loss": "raft_pp", "filter": "remove_all_wrong",
                 "clip_low": 0.2, "clip_high": 0.2}, {}),
    "reinforce": ({"estimator": "reinforce", "filter": "none", **PPO_CLIP}, {}),
    "reinforce_rej": ({"estimator": "reinforce", "filter": "reject_all_same", "clip_low": 0.2,
                       "clip_high": 0.2, "dual_clip": 3.0},
                      {"correct_reward": 1.0, "wrong_reward": -1.0}),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_module_constants_match_the_documented_method(name: str) -> None:
    algo_values, rewards = DOCUMENTED[name]
    preset = PRESETS[name]
    assert {k: preset.values[k] for k in algo_values} == algo_values
    assert preset.rewards == rewards
    module = importlib.import_module(f"areal_sys.algorithms.presets.{name}")
    for const, field in (("CLIP", "clip_low"), ("CLIP", "clip_high"), ("CLIP_LOW", "clip_low"),
                         ("CLIP_HIGH", "clip_high"), ("VALUE_CLIP", "value_clip"),
                         ("DUAL_CLIP", "dual_clip")):
        if hasattr(module, const):  # a named constant is the value the preset uses
            assert getattr(module, const) == preset.values[field], (name, const)
    if hasattr(module, "CORRECT_REWARD"):
        assert (module.CORRECT_REWARD, module.WRONG_REWARD) == (
            rewards["correct_reward"], rewards["wrong_reward"])


def test_preset_rewards_are_defaults_of_the_reward_section() -> None:
    """DAPO's +-1 reach reward.* unless the config sets them; other presets leave 1/0."""
    dapo = ExperimentConfig.model_validate({"algorithm": {"name": "dapo"}})
    assert (dapo.reward.correct_reward, dapo.reward.wrong_reward) == (1.0, -1.0)
    mine = ExperimentConfig.model_validate(
        {"algorithm": {"name": "dapo"}, "reward": {"wrong_reward": 0.0}})
    assert (mine.reward.correct_reward, mine.reward.wrong_reward) == (1.0, 0.0)
    grpo = ExperimentConfig.model_validate({"algorithm": {"name": "grpo"}})
    assert (grpo.reward.correct_reward, grpo.reward.wrong_reward) == (1.0, 0.0)
    built = ExperimentConfig(algorithm=AlgorithmConfig(name="reinforce_rej"))
    assert built.reward.wrong_reward == -1.0
    assert ExperimentConfig.model_validate(dapo.model_dump()) == dapo  # the dump round-trips


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves_to_registered_pieces(name: str) -> None:
    cfg = AlgorithmConfig(name=name)
    for kind, field in ((ESTIMATOR, "estimator"), (POLICY_LOSS, "loss"),
                        (AGGREGATION, "aggregation"), (FILTER, "filter")):
        assert field in PRESETS[name].values, (name, field)  # every preset names all four pieces
        assert get_plugin(kind, getattr(cfg, field)).name == getattr(cfg, field)
    for key, value in preset_values(name).items():
        assert getattr(cfg, key) == value, (name, key)
    algo = build_algorithm(cfg, max_new_tokens=1024)
    assert algo.summary.startswith(f"preset={name};")
    assert PRESETS[name].description


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_recipes_resolve_in_the_config(name: str) -> None:
    expected = DOCUMENTED[name][0]
    cfg = AlgorithmConfig(name=name)
    assert {k: getattr(cfg, k) for k in expected} == expected


def test_explicit_keys_win_over_the_preset() -> None:
    cfg = AlgorithmConfig.model_validate({"name": "dapo", "filter": "none", "clip_high": 0.3})
    assert (cfg.filter, cfg.clip_high, cfg.overlong_penalty) == ("none", 0.3, True)
    cfg = AlgorithmConfig.model_validate({"name": "ppo", "estimator": "grpo"})
    assert not build_algorithm(cfg).needs_critic
    cfg = AlgorithmConfig.model_validate({"name": "grpo", "estimator": "gae"})
    assert build_algorithm(cfg).needs_critic


def test_resolved_config_round_trips() -> None:
    """A dumped (fully resolved) config validates to itself: what run_dir/config.yaml stores."""
    for name in PRESETS:
        cfg = AlgorithmConfig(name=name, clip_high=0.25)
        assert AlgorithmConfig.model_validate(cfg.model_dump()) == cfg


def test_unknown_preset_lists_the_choices() -> None:
    with pytest.raises(KeyError, match="presets"):
        preset_values("nope")
    with pytest.raises(ValueError, match="unknown preset 'nope'; presets: 'grpo', 'dr_grpo'"):
        AlgorithmConfig.model_validate({"name": "nope"})


def test_ppo_needs_a_critic_and_binds_gae() -> None:
    algo = build_algorithm({"name": "ppo", "gae_lambda": 0.95})
    assert algo.needs_critic and algo.estimator is None and algo.whiten_advantages
    assert algo.token_estimator is not None and algo.value_loss is not None
    adv, ret = algo.token_estimator(
        torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3)
    )
    assert torch.allclose(adv, torch.tensor([[0.46575, 0.385, 0.3]]), atol=1e-5)
    loss, stats = algo.value_loss(  # value clip 0.5 bound from the config
        torch.tensor([1.5]), torch.tensor([0.0]), torch.tensor([2.0]), torch.ones(1)
    )
    assert loss.item() == pytest.approx(1.125) and stats["vf_clipped"].item() == 1.0
    assert "critic(" in algo.summary


def test_raft_presets_mask_zero_weights_and_drop_all_wrong_groups() -> None:
    for name in ("raft", "raft_pp"):
        algo = build_algorithm({"name": name})
        assert algo.mask_zero_advantage
        assert algo.estimator(torch.tensor([1.0, -1.0, -1.0, -1.0])).tolist() == [1, 0, 0, 0]  # type: ignore[misc]
        assert not algo.filter(torch.tensor([-1.0, -1.0]))
        assert algo.filter(torch.tensor([1.0, 1.0]))


def test_reinforce_rej_drops_uniform_groups() -> None:
    algo = build_algorithm({"name": "reinforce_rej"})
    assert algo.estimator(torch.tensor([1.0, -1.0])).tolist() == [1.0, -1.0]  # type: ignore[misc]
    assert not algo.filter(torch.tensor([1.0, 1.0, 1.0]))
    assert not algo.filter(torch.tensor([-1.0, -1.0, -1.0]))
    assert algo.filter(torch.tensor([1.0, -1.0, -1.0]))


def test_reinforce_rej_dual_clips_negative_advantages_at_three() -> None:
    """π_b = π_prox = 0.1, π_θ = 0.5, A = −1: u = 5, the PPO term −min(5·(−1), 1.2·(−1)) = 5 is
    capped at c·|A| = 3 (Minimal-RL's dual clip); plain Reinforce keeps 5."""
    old, new, neg = torch.log(torch.tensor([0.1])), torch.log(torch.tensor([0.5])), -torch.ones(1)
    rej, _ = build_algorithm({"name": "reinforce_rej"}).policy_loss(
        new, old, old, neg, torch.ones(1))
    plain, _ = build_algorithm({"name": "reinforce"}).policy_loss(new, old, old, neg, torch.ones(1))
    assert rej.item() == pytest.approx(3.0, abs=1e-5)
    assert plain.item() == pytest.approx(5.0, abs=1e-5)


def test_dapo_overlong_penalty_resolves_lengths() -> None:
    with pytest.raises(ValueError, match="overlong"):
        build_algorithm({"name": "dapo"})  # L_max unknown: neither configured nor passed
    algo = build_algorithm({"name": "dapo"}, max_new_tokens=20480)
    assert algo.overlong_lengths == (20480, 4096)
    shaped = algo.shape_rewards(torch.tensor([1.0, 1.0, 1.0]), [16384, 18432, 20480])
    assert torch.allclose(shaped, torch.tensor([1.0, 0.5, 0.0]))
    algo = build_algorithm({"name": "dapo", "overlong_max_len": 100, "overlong_cache_len": 10})
    assert algo.overlong_lengths == (100, 10)
    assert not algo.filter(torch.tensor([1.0, 1.0])) and algo.filter(torch.tensor([1.0, 0.0]))
    assert "overlong_penalty(L_max=100, L_cache=10)" in algo.summary


def test_overlong_filter_masks_truncated_responses() -> None:
    algo = build_algorithm({"overlong_filter": True})
    assert algo.train_mask(["stop", "length", "abort"]).tolist() == [1.0, 0.0, 1.0]


def test_kl_settings() -> None:
    off = build_algorithm({})
    with pytest.raises(RuntimeError, match="KL is off"):
        off.kl_loss(torch.zeros(1), torch.zeros(1), torch.ones(1))
    algo = build_algorithm({"kl_coef": 0.1})  # default estimator k3, in the loss
    assert algo.needs_reference and algo.kl_in_loss and not algo.kl_in_reward
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    assert algo.kl_loss(logp, ref, torch.ones(1)).item() == pytest.approx(0.019315, abs=1e-5)
    algo = build_algorithm({"kl_coef": 0.1, "kl_estimator": "k1", "kl_placement": "reward"})
    assert algo.kl_in_reward and not algo.kl_in_loss
    assert algo.kl_reward(logp, ref, torch.ones(1)).item() == pytest.approx(-0.1 * 0.693147)
    assert "kl=k1(coef=0.1, in reward)" in algo.summary
