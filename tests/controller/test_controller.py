"""The real controller (controller/controller.py) driven by fake actors (tests/controller/fakes.py):
admission under the staleness and refill bounds, synchronous vs asynchronous overlap, worker
deaths, failures, critic orchestration and RPO planning. No Ray, vLLM or DeepSpeed; seconds each."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from areal_sys.algorithms.algorithm import Algorithm
from areal_sys.metrics import read_jsonl
from controller.actors import PeerTimedOut, TrainerDied
from tests.controller import fakes


def _run_to_end(cfg, actors, train):
    ctl = fakes.controller(cfg, actors, train)
    try:
        results = asyncio.run(ctl.run())
    finally:
        ctl.close()
    return ctl, results


@pytest.mark.parametrize("eta", [0, 1, 3])
def test_admission_keeps_the_staleness_and_refill_bounds_and_accounts_for_every_group(
        tmp_path: Path, eta: int) -> None:
    """Dynamic sampling (half the groups have equal rewards and are dropped): no trained token is
    older than eta versions; at most R·B groups are dropped per version; every admitted group is
    trained (exactly once), filtered (exactly once), or still buffered / in flight at the end; and
    each response was graded with its own prompt's task data."""
    B, R, n = 3, 1, 2
    cfg = fakes.config(tmp_path, "trainer.total_steps=8", f"controller.batch_size={B}",
                       f"controller.max_staleness={eta}", f"rollout.n_samples={n}",
                       "rollout.num_workers=2", "algorithm.filter=dynamic_sampling",
                       f"algorithm.max_oversample_rounds={R}")
    actors = fakes.fake_actors(tmp_path, workers=2, train_ticks=3)
    ctl, results = _run_to_end(cfg, actors, fakes.prompts(200))

    audit = read_jsonl(tmp_path / "staleness.jsonl")
    for row in audit:
        assert row["trainer_version"] - row["min_token_version"] <= eta
        assert row["trainer_version"] - row["admit_version"] <= eta
    per_group = Counter(row["group_id"] for row in audit)
    assert set(per_group.values()) == {n} and len(per_group) == 8 * B
    filtered = read_jsonl(tmp_path / "filtered.jsonl")
    dropped = [f["group_id"] for f in filtered]
    assert len(dropped) == len(set(dropped)) == results["groups_filtered"] > 0
    assert max(Counter(f["version"] for f in filtered).values()) <= R * B
    for f in filtered:
        assert len(set(f["rewards"])) == 1  # the filter drops only groups without signal
    left = set(ctl.admission.inflight) | {seq for seq, _, _ in
                                          ctl.admission.buffer.completed_groups()}
    places = [set(per_group), set(dropped), left]
    assert sum(map(len, places)) == len(set().union(*places))
    assert set().union(*places) == set(range(ctl.admission.next_seq))
    for item in actors.reward_obj.items:  # task data: the prompt's own, from the controller
        i = int(re.fullmatch(r"ref-p(\d+)", item["reference"]).group(1))
        assert item["task"] == f"task-p{i % 3}"


def test_without_refills_left_a_group_without_signal_fills_the_batch_anyway(tmp_path: Path) -> None:
    cfg = fakes.config(tmp_path, "trainer.total_steps=4", "controller.batch_size=3",
                       "rollout.n_samples=2", "algorithm.filter=dynamic_sampling",
                       "algorithm.max_oversample_rounds=0")
    _run_to_end(cfg, fakes.fake_actors(tmp_path), fakes.prompts(50))
    metrics = read_jsonl(tmp_path / "metrics.jsonl")
    assert not (tmp_path / "filtered.jsonl").read_text()
    assert sum(m["groups_filter_bypassed"] for m in metrics) > 0
    assert all(m["groups_filtered"] == 0 for m in metrics)


def test_a_bypassed_group_reaches_the_trainer_marked_and_trains_at_zero_advantage(
        tmp_path: Path) -> None:
    """Reinforce-Rej (A_i = R_i, rewards ±1) with no refill budget: every group the filter rejects
    is bypassed into the batch. Each reaches the trainer marked `filter_bypassed` (and no kept
    group is), so an all-wrong group, which would train at A = −1 on every token, gets A = 0 and
    mask 0 in the trainer's batch; a kept mixed group still trains at A = R_i = ±1."""
    from workers.batch import prepare_batch

    cfg = fakes.config(tmp_path, "trainer.total_steps=4", "controller.batch_size=3",
                       "rollout.n_samples=2", "algorithm.name=reinforce_rej",
                       "algorithm.max_oversample_rounds=0")
    assert (cfg.reward.correct_reward, cfg.reward.wrong_reward) == (1.0, -1.0)
    actors = fakes.fake_actors(tmp_path)
    actors.reward_obj = fakes.FakeReward(correct_reward=1.0, wrong_reward=-1.0)
    ctl, _ = _run_to_end(cfg, actors, fakes.prompts(50))
    groups = [g for batch in actors.trainer_objs[0].batches for g in batch]
    assert len(groups) == 4 * 3
    for g in groups:
        assert g.filter_bypassed == (not ctl.algo.filter(torch.tensor(g.rewards)))
    all_wrong = [g for g in groups if g.rewards == [-1.0, -1.0]]
    mixed = [g for g in groups if sorted(g.rewards) == [-1.0, 1.0]]
    assert all_wrong and mixed  # the fake rollout's answers (seeded) give both kinds
    batch = prepare_batch(all_wrong + mixed, ctl.algo)
    for (gi, k), adv, mask in zip(batch.positions, batch.adv, batch.mask, strict=True):
        if gi < len(all_wrong):
            assert adv.tolist() == [0.0] * 4 and mask.tolist() == [0.0] * 4
        else:
            assert adv.tolist() == [mixed[gi - len(all_wrong)].rewards[k]] * 4
            assert mask.tolist() == [1.0] * 4


@pytest.mark.parametrize(("eta", "overlaps"), [(0, False), (2, True)])
def test_generation_overlaps_training_only_when_asynchronous(
        tmp_path: Path, eta: int, overlaps: bool) -> None:
    """eta = 0 is synchronous RL: the gate admits exactly the batch of the current version, so no
    token is generated while the trainer trains (as the fake trainer observes and as
    `overlap_tokens` reports). With eta > 0 the next batches generate during training."""
    cfg = fakes.config(tmp_path, "trainer.total_steps=5", "controller.batch_size=2",
                       f"controller.max_staleness={eta}", "rollout.n_samples=2",
                       "rollout.num_workers=2")
    actors = fakes.fake_actors(tmp_path, workers=2, response_tokens=6, train_ticks=20)
    _run_to_end(cfg, actors, fakes.prompts(40))
    seen = actors.trainer_objs[0].overlap
    reported = [m["overlap_tokens"] for m in read_jsonl(tmp_path / "metrics.jsonl")]
    assert len(seen) == len(reported) == 5
    if overlaps:
        assert sum(seen) > 0 and sum(reported) > 0
    else:
        assert seen == [0] * 5 and reported == [0] * 5
        audit = read_jsonl(tmp_path / "staleness.jsonl")
        assert all(r["trainer_version"] == r["admit_version"] == r["min_token_version"]
                   for r in audit)


@pytest.mark.parametrize("sync", ["shm_file", "collective"])
def test_a_dead_rollout_worker_is_restarted_and_its_groups_resent(tmp_path: Path,
                                                                   sync: str) -> None:
    """A worker dies mid-generation after the first weight push: its groups go to the other
    worker at once, while it is started again and loads the current weights (the last file; or,
    collective, a new group with trainer rank 0 and a broadcast to it alone); every group still
    trains exactly once."""
    cfg = fakes.config(tmp_path, "trainer.total_steps=5", "controller.batch_size=2",
                       "controller.max_staleness=1", "rollout.n_samples=2",
                       "rollout.num_workers=2", f"trainer.weight_sync={sync}")
    actors = fakes.fake_actors(tmp_path, workers=2)
    for r in actors.rollouts:
        r.kill_on_group = 6  # admitted at version 1 or later: weights were exported by then
    _run_to_end(cfg, actors, fakes.prompts(40))
    events = read_jsonl(tmp_path / "events.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds.count("rollout_worker_died") == 1
    assert kinds.count("rollout_worker_restarted") == 1
    died = next(e for e in events if e["event"] == "rollout_worker_died")
    resent = [e for e in events if e["event"] == "group_resent"]
    assert 6 in {e["group_id"] for e in resent}
    assert all(e["worker"] != died["worker"] == e["dead_worker"] for e in resent)
    restarted = next(e for e in events if e["event"] == "rollout_worker_restarted")
    worker = actors.rollouts[died["worker"]]
    assert worker.started and worker.version == 5
    assert died["version"] >= 1  # so the restart had weights to load: the current ones
    path, version = worker.loaded[worker.loaded.index(("died", -1)) + 1]
    if sync == "shm_file":  # the newest exported weights (those of the push under way, if any)
        assert path == f"{tmp_path}/weights.safetensors"
        assert version in (restarted["version"], restarted["version"] + 1)
    else:  # the broadcast to it alone, at the version of the moment, then every later sync
        rejoined = [e for e in events if e["event"] == "weight_group_rejoined"]
        assert [e["worker"] for e in rejoined] == [died["worker"]]
        assert (path, version) == (None, rejoined[0]["version"])
        loads = worker.loaded[worker.loaded.index(("died", -1)) + 1:]
        assert [v for _, v in loads] == list(range(version, 6))
        calls = [c for c in actors.activity.calls if c[0].startswith(("broadcast", "init"))]
        assert ("init_weight_group[0]", died["worker"]) in calls
        assert ("broadcast_weights[0]", [died["worker"]]) in calls
        assert kinds.count("weight_sync_failed") <= 1  # a sync under way when it died
    per_group = Counter(r["group_id"] for r in read_jsonl(tmp_path / "staleness.jsonl"))
    assert set(per_group.values()) == {2} and len(per_group) == 10
    for a in read_jsonl(tmp_path / "staleness.jsonl"):
        assert a["trainer_version"] - a["min_token_version"] <= 1


def test_a_dead_trainer_stops_the_run_with_trainer_died(tmp_path: Path) -> None:
    cfg = fakes.config(tmp_path, "trainer.total_steps=5", "controller.batch_size=2",
                       "rollout.n_samples=2")
    actors = fakes.fake_actors(tmp_path)
    actors.trainer_objs[0].die_at_step = 2
    with pytest.raises(TrainerDied):
        _run_to_end(cfg, actors, fakes.prompts(20))
    assert [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1]
    assert [e["event"] for e in read_jsonl(tmp_path / "events.jsonl")] == ["trainer_died"]


@pytest.mark.parametrize("where, setting, what", [
    ("train", "train_timeout_s", "training step 2"),
    ("sync", "weight_sync_timeout_s", "weight sync to version 3"),
    ("reward", "reward_timeout_s", "scoring 2 responses"),
    ("restart", "restart_timeout_s", "placing rollout worker 0 again"),
])
def test_a_peer_that_never_answers_stops_the_run_within_its_limit(
        tmp_path: Path, where: str, setting: str, what: str) -> None:
    """A trainer rank lost inside a step, a weight sync that never completes (collective), a
    reward call that never returns, a dead rollout worker no node can host again: each stops
    the run after controller.SETTING with a
    `timeout` event and PeerTimedOut naming it (the CLI adds the resume command), never a hang."""
    cfg = fakes.config(tmp_path, "trainer.total_steps=5", "controller.batch_size=2",
                       "rollout.n_samples=2", "trainer.weight_sync=collective",
                       f"controller.{setting}=0.5")
    actors = fakes.fake_actors(tmp_path)
    trainer = actors.trainer_objs[0]
    if where == "train":
        trainer.hang_at_step = 2
    elif where == "sync":
        trainer.hang_at_sync = 2
    elif where == "reward":
        actors.reward_obj.hang_after = 5
    else:  # its node lost and no other can host it
        actors.rollouts[0].kill_on_group = 3
        actors.rollouts[0].never_placed = True
    t0 = time.monotonic()
    with pytest.raises(PeerTimedOut, match=f"{what} did not finish within "
                                           f"controller.{setting}=0.5 s"):
        _run_to_end(cfg, actors, fakes.prompts(40))
    assert time.monotonic() - t0 < 30
    events = read_jsonl(tmp_path / "events.jsonl")
    if where == "restart":
        assert [e["event"] for e in events] == ["rollout_worker_died", "timeout"]
        events = events[1:]
    # scoring calls run side by side: on a loaded machine several may expire in the same tick,
    # each one its own event; nothing else is in the file
    assert events and {(e["event"], e["setting"], e["what"]) for e in events} == {
        ("timeout", f"controller.{setting}", what)}
    if where != "reward":
        assert len(events) == 1
    if where in ("train", "sync"):  # the steps before the lost one are all there, and no other
        assert [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1]


def test_a_worker_no_node_can_host_stops_the_run_though_its_groups_went_elsewhere(
        tmp_path: Path) -> None:
    """Two workers; one dies and is never placed again. Its group goes to the other at once
    and the run trains on; the restart nobody waits for still stops the run once
    controller.restart_timeout_s has passed, with the same PeerTimedOut."""
    cfg = fakes.config(tmp_path, "trainer.total_steps=100000", "controller.batch_size=2",
                       "rollout.n_samples=2", "rollout.num_workers=2",
                       "controller.restart_timeout_s=2")
    actors = fakes.fake_actors(tmp_path, workers=2)
    for r in actors.rollouts:  # whichever generates group 3 dies (fakes: once)
        r.kill_on_group, r.never_placed = 3, True
    with pytest.raises(PeerTimedOut, match="placing rollout worker . again did not finish"):
        _run_to_end(cfg, actors, fakes.prompts(40))
    events = read_jsonl(tmp_path / "events.jsonl")
    kinds = Counter(e["event"] for e in events)
    assert kinds["rollout_worker_died"] == 1 and kinds["timeout"] == 1 and kinds["group_resent"]
    assert len(kinds) == 3
    died = next(e for e in events if e["event"] == "rollout_worker_died")["worker"]
    for e in events:  # every group it held, sent to the other at once
        if e["event"] == "group_resent":
            assert (e["worker"], e["dead_worker"]) == (1 - died, died)
    steps = [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")]
    assert steps == list(range(len(steps))) and len(steps) >= 3  # it trained on meanwhile


def test_a_failed_rollout_stops_the_run_with_its_own_error(tmp_path: Path) -> None:
    cfg = fakes.config(tmp_path, "trainer.total_steps=5", "controller.batch_size=2",
                       "rollout.n_samples=2")
    actors = fakes.fake_actors(tmp_path)
    actors.rollouts[0].error_on_group = 3
    with pytest.raises(ValueError, match="fake engine error on group 3"):
        _run_to_end(cfg, actors, fakes.prompts(20))


@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
def test_critic_orchestration(tmp_path: Path, kl_coef: float) -> None:
    """PPO: per step [reference log-probs ->] critic.prepare -> every rank's train_step on the
    critic's advantages, with the critic's update; the value figures join the step's metrics."""
    cfg = fakes.config(tmp_path, "algorithm.name=ppo", f"algorithm.kl_coef={kl_coef}",
                       "trainer.total_steps=3", "controller.batch_size=2",
                       "rollout.n_samples=2", "trainer.num_workers=2")
    actors = fakes.fake_actors(tmp_path, trainers=2, critic=True)
    ctl, _ = _run_to_end(cfg, actors, fakes.prompts(20))
    assert ctl.algo.kl_in_reward == (kl_coef > 0)
    calls = [name for name, _ in actors.activity.calls
             if not name.startswith("export_weights")]
    per_step = (["reference_logprobs"] if kl_coef else []) + [
        "critic.prepare", "train_step[0]", "train_step[1]", "critic.update"]
    assert calls == per_step * 3
    for trainer in actors.trainer_objs:
        for (_, ids, adv), batch in zip(trainer.trained, trainer.batches, strict=True):
            expected = [[[g.group_id + (-1.0 if kl_coef else 0.0)] * len(t.response_ids)
                         for t in g.trajectories] for g in batch]
            assert adv == expected and ids == [g.group_id for g in batch]
    metrics = read_jsonl(tmp_path / "metrics.jsonl")
    assert [m["train/value_loss"] for m in metrics] == [0.25] * 3


def test_rpo_groups_continue_cached_prefixes_and_update_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RPO: a cache-fill pass (one full response per prompt), then every group continues a
    prefix of its prompt's cached response; after each step each trained group's response
    replaces its prompt's entry, chosen on the shaped rewards."""
    shaped_for: list[int] = []

    def spy(algo, group, bonus=None):
        shaped_for.append(group.group_id)
        return torch.arange(len(group.trajectories), dtype=torch.float32)  # the last is best

    monkeypatch.setattr(Algorithm, "shaped_rewards", spy)
    cfg = fakes.config(tmp_path, "rpo.enabled=true", "rpo.max_regen_tokens=2", "rpo.epsilon=1",
                       "trainer.total_steps=4", "controller.batch_size=2",
                       "controller.max_staleness=1", "rollout.n_samples=2")
    actors = fakes.fake_actors(tmp_path, response_tokens=4)
    ctl, results = _run_to_end(cfg, actors, fakes.prompts(30))
    assert results["rpo_cache_fill"]["entries"] == 30
    fill = [r for r in actors.rollouts[0].requests if r["group_id"] < 0]
    train = [r for r in actors.rollouts[0].requests if r["group_id"] >= 0]
    assert len(fill) == 30 and all(r["prefix_ids"] is None for r in fill)
    for r in train:  # cached 4 tokens, m ~ U{1, 2}: keep 4 - m, generate at most m
        assert r["prefix_ids"] and set(r["prefix_ids"]) == {5}
        assert len(r["prefix_ids"]) + r["max_new_tokens"] == 4
    trained = [g for batch in actors.trainer_objs[0].batches for g in batch]
    assert sorted(shaped_for) == sorted(g.group_id for g in trained)
    assert len({g.prompt_uid for g in trained}) == len(trained)  # each prompt trained once
    prefix_of = {r["group_id"]: len(r["prefix_ids"]) for r in train}
    for g in trained:  # its entry is a response of the group (the best shaped reward, ε = 1)
        entry = ctl.admission.rpo.cache.get(g.prompt_uid)
        assert list(entry.versions) == g.trajectories[-1].versions
        assert [t.prefix_len for t in g.trajectories] == [prefix_of[g.group_id]] * 2
    assert any(max(ctl.admission.rpo.cache.get(g.prompt_uid).versions) > 0 for g in trained)
    metrics = read_jsonl(tmp_path / "metrics.jsonl")
    batches = actors.trainer_objs[0].batches
    assert len(metrics) == len(batches) == 4
    for m, batch in zip(metrics, batches, strict=True):  # every group here is on a prefix
        rewards = [[t.reward for t in g.trajectories] for g in batch]
        assert m["train/informative_groups"] == sum(len(set(r)) > 1 for r in rewards)
        assert m["rpo/dead_prefix_frac"] == sum(max(r) < 0.5 for r in rewards) / len(batch)
