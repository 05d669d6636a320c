"""algorithms/rpo.py: truncation arithmetic, shared prefixes, the ε-greedy cache update, the
length-aware reward, the three loss modes, and cache save/restore (values from ALGORITHMS.md)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from areal_sys.algorithms import build_algorithm
from areal_sys.algorithms.losses import decoupled_ppo_loss
from areal_sys.algorithms.rpo import (
    CacheEntry,
    ExperienceCache,
    RpoPlanner,
    choose_for_cache,
    length_aware_rewards,
    on_policy_prefix,
    plan_partial,
)
from areal_sys.config import ConfigError, RpoConfig, load_config
from areal_sys.trajectory import Group, Trajectory
from workers.batch import prepare_batch


def _entry(n: int, version: int = 0) -> CacheEntry:
    return CacheEntry.of(list(range(100, 100 + n)), [-0.5] * n, [version] * n)


def test_truncation_arithmetic() -> None:
    plan = plan_partial(_entry(1000), m=200, max_new_tokens=4096)
    assert (len(plan.prefix_ids), plan.budget, plan.full) == (800, 200, False)
    assert plan.prefix_ids == list(range(100, 900))  # the cached ids, untouched
    for m in (1000, 1500):  # m >= cached length: a full rollout with the normal budget
        full = plan_partial(_entry(1000), m=m, max_new_tokens=4096)
        assert (full.prefix_ids, full.budget, full.full) == ([], 4096, True)
    assert plan_partial(_entry(10), m=1, max_new_tokens=4096).budget == 1


def test_regen_limit_fixed_or_fraction() -> None:
    assert RpoConfig(max_regen_tokens=300).regen_limit(2689) == 300
    assert RpoConfig().regen_limit(1000) == 500  # default: L = 0.5 * cached length
    assert RpoConfig(regen_fraction=0.1).regen_limit(3) == 1  # at least one token
    with pytest.raises(ValueError, match="not both"):
        RpoConfig(max_regen_tokens=300, regen_fraction=0.5)


def test_planner_draws_m_uniformly_and_counts_hits() -> None:
    planner = RpoPlanner(RpoConfig(enabled=True, max_regen_tokens=4), max_new_tokens=64, seed=0)
    assert planner.plan("q").full  # no entry yet: a full rollout
    planner.fill("q", list(range(10)), [-1.0] * 10, [0] * 10)
    budgets = Counter(planner.plan("q").budget for _ in range(4000))
    assert sorted(budgets) == [1, 2, 3, 4]
    assert all(abs(c / 4000 - 0.25) < 0.03 for c in budgets.values())
    m = planner.metrics()
    assert m["rpo/cache_hit_rate"] == pytest.approx(4000 / 4001)
    assert m["rpo/cache_entries"] == 1 and m["rpo/full_rollouts"] == 1
    assert m["rpo/cache_lookups"] == 4001
    assert planner.metrics()["rpo/cache_hit_rate"] == 0.0  # counters reset per call


def test_shared_prefix_per_group() -> None:
    """One plan per group: every one of the G samples receives the same prefix (the controller
    passes the plan's prefix to generate_group once, which prepends it to all n requests)."""
    planner = RpoPlanner(RpoConfig(enabled=True, regen_fraction=0.5), max_new_tokens=64, seed=1)
    planner.fill("q", list(range(40)), [-1.0] * 40, [3] * 40)
    plan = planner.plan("q")
    group = [
        Trajectory("q", 0, [1], plan.prefix_ids + [7] * k, plan.prefix_logprobs + [-2.0] * k,
                   plan.prefix_versions + [5] * k, [1] * (len(plan.prefix_ids) + k),
                   prefix_len=len(plan.prefix_ids))
        for k in (1, 2, 3)
    ]
    assert {tuple(t.response_ids[: t.prefix_len]) for t in group} == {tuple(plan.prefix_ids)}
    assert 20 <= len(plan.prefix_ids) <= 39
    # staleness counts only generated tokens; the prefix's age is kept apart
    assert all(t.min_version == 5 and min(t.versions[: t.prefix_len]) == 3 for t in group)


def test_epsilon_greedy_update_distribution() -> None:
    rng = random.Random(0)
    rewards = [0.2, 0.9, 0.1, 0.5]  # best = index 1
    picks = Counter(choose_for_cache(rewards, rng, epsilon=0.5) for _ in range(20000))
    assert picks[1] / 20000 == pytest.approx(0.5, abs=0.015)
    for k in (0, 2, 3):  # the rest is uniform over the G - 1 others
        assert picks[k] / 20000 == pytest.approx(0.5 / 3, abs=0.015)
    assert {choose_for_cache(rewards, rng, epsilon=1.0) for _ in range(100)} == {1}
    assert 1 not in {choose_for_cache(rewards, rng, epsilon=0.0) for _ in range(500)}
    ties = Counter(choose_for_cache([1.0, 1.0, 0.0], rng, epsilon=1.0) for _ in range(4000))
    assert set(ties) == {0, 1} and abs(ties[0] - ties[1]) < 400  # ties broken uniformly
    assert choose_for_cache([0.3], rng, epsilon=0.0) == 0


def test_planner_update_replaces_entry_with_full_response() -> None:
    planner = RpoPlanner(RpoConfig(enabled=True, epsilon=1.0), max_new_tokens=64, seed=0)
    planner.fill("q", [1, 2, 3], [-1.0] * 3, [0] * 3)
    planner.update("q", [([1, 2, 9], [-1.0, -1.0, -0.3], [0, 0, 4]),
                         ([1, 2, 8, 8], [-1.0, -1.0, -0.2, -0.1], [0, 0, 4, 4])], [0.0, 1.0],
                   correct=[False, True], prefix_len=2, at_length=[False, True])
    entry = planner.cache.get("q")
    assert entry is not None and list(entry.token_ids) == [1, 2, 8, 8]
    assert list(entry.versions) == [0, 0, 4, 4]
    m = planner.metrics()
    assert m["rpo/cache_correct_frac"] == 1.0 and m["rpo/suffix_length_frac"] == 0.5
    assert m["rpo/dead_prefix_frac"] == 0.0


def _visit(planner: RpoPlanner, uid: str, correct: list[bool]) -> int:
    """One group on `uid`: plan it, answer with len(correct) responses, update; its prefix
    length (0: a full rollout)."""
    plan = planner.plan(uid)
    n = len(plan.prefix_ids)
    responses = [(plan.prefix_ids + [7] * 6, plan.prefix_logprobs + [-1.0] * 6,
                  plan.prefix_versions + [1] * 6) for _ in correct]
    planner.update(uid, responses, [float(c) for c in correct], correct=correct, prefix_len=n,
                   at_length=[False] * len(correct))
    return n


@pytest.mark.parametrize("k", [1, 2])
def test_cache_heals_a_prefix_that_stays_all_wrong(k: int) -> None:
    cfg = RpoConfig(enabled=True, max_regen_tokens=2, heal_after=k)
    planner = RpoPlanner(cfg, max_new_tokens=64, seed=0)
    planner.fill("q", list(range(20)), [-1.0] * 20, [0] * 20)
    assert _visit(planner, "q", [False, False]) > 0  # all wrong on a cached prefix: 1 dead visit
    if k == 2:
        assert _visit(planner, "q", [False, True]) > 0  # one right answer: the count restarts
        assert _visit(planner, "q", [False, False]) > 0
        assert planner.metrics()["rpo/dead_prefix_frac"] == pytest.approx(2 / 3)
        assert _visit(planner, "q", [False, False]) > 0  # second consecutive dead visit
    assert _visit(planner, "q", [True, False]) == 0  # refreshed by a full rollout
    assert planner.metrics()["rpo/cache_refreshes"] == 1.0
    assert _visit(planner, "q", [False, False]) > 0  # partial again from the new entry
    assert planner.state_dict()["dead_visits"] == {"q": 1}


def test_healing_off_is_the_papers_cache() -> None:
    planner = RpoPlanner(RpoConfig(enabled=True, max_regen_tokens=2, heal_after=0),
                         max_new_tokens=64, seed=0)
    planner.fill("q", list(range(20)), [-1.0] * 20, [0] * 20)
    assert all(_visit(planner, "q", [False, False]) > 0 for _ in range(5))
    assert planner.metrics()["rpo/cache_refreshes"] == 0.0


def test_planner_state_round_trip() -> None:
    cfg = RpoConfig(enabled=True, max_regen_tokens=3, heal_after=3)
    a = RpoPlanner(cfg, max_new_tokens=64, seed=5)
    a.fill("q", list(range(20)), [-1.0] * 20, [0] * 20)
    _visit(a, "q", [False, False])
    b = RpoPlanner(cfg, max_new_tokens=64, seed=99)
    b.cache = a.cache
    b.load_state_dict(a.state_dict())
    assert b.dead_visits == a.dead_visits == {"q": 1} and b.correct == a.correct == set()
    assert [b.plan("q").budget for _ in range(20)] == [a.plan("q").budget for _ in range(20)]


def test_length_aware_reward_values() -> None:
    r = length_aware_rewards(torch.tensor([1.0, 1.0, 0.0, 0.0]), [100, 200, 300, 400],
                             alpha=0.01, success_threshold=0.5)
    assert r.tolist() == pytest.approx([0.8176, 0.6225, 0.0, 0.0], abs=1e-4)
    # mean length 470: short correct ≈ σ(4.6), long correct clipped at 0.5, wrong keeps -1
    r = length_aware_rewards(torch.tensor([1.0, -1.0, 1.0]), [10, 500, 900],
                             alpha=0.01, success_threshold=0.5)
    assert r.tolist() == pytest.approx([1.0 / (1 + torch.exp(torch.tensor(-4.6)).item()), -1.0,
                                        0.5], abs=1e-4)


def test_length_reward_is_on_by_default_with_rpo_only() -> None:
    rewards, lens = torch.tensor([1.0, 1.0, 0.0, 0.0]), [100, 200, 300, 400]
    on = build_algorithm({"name": "grpo"}, rpo=RpoConfig(enabled=True))
    off = build_algorithm({"name": "grpo"}, rpo=RpoConfig(enabled=False))
    assert on.shape_rewards(rewards, lens).tolist() == pytest.approx([0.8176, 0.6225, 0, 0],
                                                                      abs=1e-4)
    assert off.shape_rewards(rewards, lens).tolist() == [1.0, 1.0, 0.0, 0.0]


def _partial_group() -> Group:
    """Two responses sharing a 3-token cached prefix (behaviour log-prob -3, i.e. stale)."""
    trajs = [
        Trajectory("q", 0, [1, 2], [5, 6, 7, 8 + k], [-3.0, -3.0, -3.0, -1.0],
                   [0, 0, 0, 4], [1, 1, 1, 1], prefix_len=3, reward=float(k))
        for k in range(2)
    ]
    return Group(0, "q", trajs)


@pytest.mark.parametrize("mode", ["faithful", "suffix_only", "decoupled"])
def test_loss_modes(mode: str) -> None:
    algo = build_algorithm({"name": "grpo", "behav_weight_cap": 5.0},
                           rpo=RpoConfig(enabled=True, loss_mode=mode, length_reward=False))
    batch = prepare_batch([_partial_group()], algo)
    prox = torch.full((4,), -1.0)  # π_prox of every token: e^-1; prefix π_b = e^-3 → w = e^2
    behav = batch.behav[0]
    if algo.prefix_loss == "faithful":  # what the trainer does after the proximal pass
        behav = on_policy_prefix(behav, prox, batch.prefix_lens[0])
    logp = prox.clone().requires_grad_(True)
    loss, stats = decoupled_ppo_loss(logp, prox, behav, batch.adv[0], batch.mask[0],
                                     behav_weight_cap=5.0)
    loss.sum().backward()
    prefix_grad = logp.grad[:3]
    assert batch.prefix_lens == [3, 3]
    if mode == "suffix_only":
        assert batch.mask[0].tolist() == [0, 0, 0, 1]
        assert prefix_grad.abs().sum() == 0
    elif mode == "faithful":
        assert batch.mask[0].tolist() == [1, 1, 1, 1]
        assert stats["behav_weight"][:3].tolist() == pytest.approx([1.0] * 3)
        assert prefix_grad.abs().min() > 0
    else:  # decoupled: cached logprobs kept; w = e^2 ≈ 7.4 > cap 5 → masked by the cap
        assert batch.mask[0].tolist() == [1, 1, 1, 1]
        assert stats["behav_weight"][:3].tolist() == pytest.approx([7.389] * 3, abs=1e-3)
        assert stats["capped"][:3].tolist() == [1.0] * 3
        assert prefix_grad.abs().sum() == 0
    assert logp.grad[3] != 0  # the suffix token always trains


def test_cache_bounded_and_save_restore(tmp_path: Path) -> None:
    cache = ExperienceCache(max_entries=3)
    for k in range(5):
        cache.put(f"p{k}", _entry(10 + k, version=k))
    cache.get("p2")  # p2 becomes the most recently used
    cache.put("p5", _entry(7))
    assert len(cache) == 3 and cache.evictions == 3
    assert "p3" not in cache and all(u in cache for u in ("p2", "p4", "p5"))
    assert cache.num_tokens == 12 + 14 + 7 and cache.nbytes == 33 * 12
    cache.save(tmp_path / "rpo_cache.npz")
    assert not list(tmp_path.glob("*.tmp"))
    back = ExperienceCache.load(tmp_path / "rpo_cache.npz")
    assert len(back) == 3 and back.num_tokens == cache.num_tokens and back.max_entries == 3
    for uid in ("p2", "p4", "p5"):
        a, b = cache.get(uid), back.get(uid)
        assert a is not None and b is not None
        assert list(a.token_ids) == list(b.token_ids) and list(a.versions) == list(b.versions)
        assert list(a.logprobs) == pytest.approx(list(b.logprobs))


def test_config_rejects_rpo_with_critic_and_decoupled_without_decoupled_loss() -> None:
    with pytest.raises(ConfigError, match="group estimator"):
        load_config(None, ["rpo.enabled=true", "algorithm.name=ppo"])
    with pytest.raises(ConfigError, match="decoupled_ppo"):
        load_config(None, ["rpo.enabled=true", "rpo.loss_mode=decoupled",
                           "algorithm.loss=ppo_clip"])
    assert load_config(None, ["rpo.enabled=true", "algorithm.name=dapo"]).rpo.enabled
