"""workers/batch.py: the algorithm's per-group pieces applied in order, and the lr schedule."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from areal_sys.algorithms import LossDenominators, build_algorithm, grpo_advantages
from areal_sys.trajectory import Group, Trajectory
from tests.workers.test_trainer import make_groups
from workers.batch import lr_at_step, nest, prepare_batch, signal_lr_factor


def test_lr_schedule() -> None:
    kw: dict[str, Any] = {"lr": 1.0, "warmup_steps": 4, "total_steps": 14}
    assert [lr_at_step(s, schedule="constant", **kw) for s in (0, 3, 4, 13)] == [0.25, 1, 1, 1]
    cosine = [lr_at_step(s, schedule="cosine", **kw) for s in (4, 9, 14, 20)]
    assert cosine == pytest.approx([1.0, 0.5, 0.0, 0.0], abs=1e-9)


def test_prepare_batch_broadcasts_group_advantages_and_skips_empty_responses() -> None:
    groups = make_groups(2, 4, seed=0)
    empty = groups[1].trajectories[3]
    groups[1].trajectories[3] = Trajectory(empty.prompt_uid, 1, empty.prompt_ids, [], [], [], [])
    batch = prepare_batch(groups, build_algorithm({"name": "grpo"}))
    assert len(batch.prompts) == 7
    expected = grpo_advantages(torch.tensor([0.0, 1.0, 0.0, 1.0]))
    for k in range(4):
        assert torch.allclose(batch.adv[k], expected[k].expand(len(batch.responses[k])))
    # the empty response still counts in its group's statistics (rewards 0, 1, 0, 0)
    assert batch.adv[4][0].item() == pytest.approx(-0.5, abs=1e-5)
    assert batch.names[6] == "p1/group1/sample2"
    assert batch.positions[6] == (1, 2)


def _group(rewards: list[float], lengths: list[int], reasons: list[str], *,
           group_id: int = 0, filter_bypassed: bool = False) -> Group:
    trajs = [
        Trajectory("p", group_id, [3, 4], [5] * n, [-1.0] * n, [0] * n, [1] * n,
                   finish_reason=f, reward=r)
        for r, n, f in zip(rewards, lengths, reasons, strict=True)
    ]
    return Group(group_id, "p", trajs, filter_bypassed=filter_bypassed)


def test_raft_weights_mask_out_wrong_responses() -> None:
    g = _group([1.0, 0.0, 1.0, 0.0], [4, 5, 6, 7], ["stop"] * 4)
    batch = prepare_batch([g], build_algorithm({"name": "raft"}))
    assert [float(m.sum()) for m in batch.mask] == [4.0, 0.0, 6.0, 0.0]
    assert [float(a[0]) for a in batch.adv] == [1.0, 0.0, 1.0, 0.0]


def test_overlong_penalty_and_filter_shape_rewards_and_masks() -> None:
    # dapo: soft punishment with L_max = 10 (max_new_tokens), L_cache = 2
    algo = build_algorithm({"name": "dapo", "overlong_filter": True}, max_new_tokens=10)
    g = _group([1.0, 1.0, -1.0, -1.0], [4, 9, 10, 3], ["stop", "stop", "length", "stop"])
    batch = prepare_batch([g], algo)
    assert batch.rewards == pytest.approx([1.0, 0.5, -2.0, -1.0])
    assert [float(m.sum()) for m in batch.mask] == [4.0, 9.0, 0.0, 3.0]


def test_token_level_estimator_takes_the_critics_advantages() -> None:
    algo = build_algorithm({"name": "ppo"})
    groups = make_groups(2, 2, seed=1)
    with pytest.raises(ValueError, match="critic"):
        prepare_batch(groups, algo)
    adv = [[[0.5 + k] * len(t.response_ids) for k, t in enumerate(g.trajectories)]
           for g in groups]
    batch = prepare_batch(groups, algo, advantages=adv)
    assert nest([a.tolist() for a in batch.adv], batch, groups) == adv


def test_reward_bonus_enters_before_the_estimator() -> None:
    g = _group([1.0, 0.0], [3, 3], ["stop"] * 2)
    batch = prepare_batch([g], build_algorithm({"name": "reinforce"}), reward_bonus=[[-0.25, 0.0]])
    assert [float(a[0]) for a in batch.adv] == pytest.approx([0.75, 0.0])


def test_a_filter_bypassed_group_gets_zero_advantage_and_leaves_the_denominators() -> None:
    """Reinforce-Rej (A_i = R_i, rewards ±1): the mixed group [+1, −1] trains at A = [1, −1]; the
    all-wrong group [−1, −1] the filter rejected but the spent refill budget put in the batch
    would train at A = −1 on every token; marked, it gets A = 0 and mask 0, so the token-mean
    denominator is the mixed group's 2 + 3 = 5 tokens, not 5 + 4 + 4 = 13."""
    algo = build_algorithm({"name": "reinforce_rej"})
    mixed = _group([1.0, -1.0], [2, 3], ["stop"] * 2)
    wrong = [-1.0, -1.0], [4, 4], ["stop"] * 2
    unmarked = prepare_batch([mixed, _group(*wrong, group_id=1)], algo)
    assert [a.tolist() for a in unmarked.adv] == [[1, 1], [-1, -1, -1], [-1] * 4, [-1] * 4]
    batch = prepare_batch([mixed, _group(*wrong, group_id=1, filter_bypassed=True)], algo)
    assert [a.tolist() for a in batch.adv] == [[1, 1], [-1, -1, -1], [0] * 4, [0] * 4]
    assert [m.tolist() for m in batch.mask] == [[1, 1], [1, 1, 1], [0] * 4, [0] * 4]
    assert batch.group_ids == [0, 0, 1, 1]  # still in the batch: B groups, audited as trained
    denom = LossDenominators.from_masks(batch.mask)
    assert (denom.n_tokens, denom.n_seqs) == (5.0, 2.0)


def test_informative_groups_are_those_with_a_nonzero_advantage_on_a_loss_token() -> None:
    """GRPO: a mixed group carries signal; all-right and all-wrong groups do not (A = 0 on
    every token); a filter-bypassed mixed group does not either (mask 0)."""
    algo = build_algorithm({"name": "grpo"})
    groups = [
        _group([1.0, 0.0], [2, 3], ["stop"] * 2, group_id=0),
        _group([1.0, 1.0], [2, 3], ["stop"] * 2, group_id=1),
        _group([0.0, 0.0], [2, 3], ["stop"] * 2, group_id=2),
        _group([1.0, 0.0], [2, 3], ["stop"] * 2, group_id=3, filter_bypassed=True),
    ]
    batch = prepare_batch(groups, algo)
    assert (batch.informative, batch.num_groups) == (1, 4)


@pytest.mark.parametrize(("mode", "informative", "expected"), [
    ("off", 0, 1.0), ("off", 3, 1.0),
    ("skip", 1, 0.0), ("skip", 2, 1.0), ("skip", 8, 1.0),
    ("scale", 0, 0.0), ("scale", 2, 0.25), ("scale", 8, 1.0),
])
def test_sparse_signal_lr_factor(mode: str, informative: int, expected: float) -> None:
    assert signal_lr_factor(mode, informative, groups=8, min_groups=2) == expected


def test_sparse_signal_rejects_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="sparse_signal"):
        signal_lr_factor("halve", 1, groups=8, min_groups=1)


def test_tool_results_leave_the_loss_and_its_denominators() -> None:
    """A tool episode (areal_sys/episode.py): model tokens (mask 1), the tool's result (mask 0,
    behaviour log-prob 0.0 as a placeholder), model tokens. The result tokens get no gradient and
    do not count in token-mean; whatever their placeholders or the policy's log-probs there, the
    loss is the same."""
    algo = build_algorithm({"name": "grpo"})
    mask = [1, 1, 1, 0, 0, 0, 1, 1]
    env = [3, 4, 5]

    def episode(reward: float) -> Trajectory:
        return Trajectory("p", 0, [3, 4], list(range(5, 13)), [-1.0, -1.0, -1.0, 0.0, 0.0, 0.0,
                                                               -1.0, -1.0],
                          [0] * 8, mask, reward=reward, turns=2, tool_calls=1)

    batch = prepare_batch([Group(0, "p", [episode(1.0), episode(0.0)])], algo)
    assert [m.tolist() for m in batch.mask] == [mask, mask]
    denom = LossDenominators.from_masks(batch.mask)
    assert denom.n_tokens == 10.0
    m, adv, behav = (torch.stack(x) for x in (batch.mask, batch.adv, batch.behav))

    def loss(env_logp: float, env_behav: float) -> tuple[float, torch.Tensor]:
        logp = torch.full((2, 8), -0.9)
        logp[:, env] = env_logp
        logp.requires_grad_(True)
        b = behav.clone()
        b[:, env] = env_behav
        token_loss, _ = algo.policy_loss(logp, torch.full((2, 8), -0.95), b, adv, m)
        out = algo.aggregate(token_loss, m, denom)
        out.backward()
        return out.item(), logp.grad

    value, grad = loss(-2.0, 0.0)
    assert grad[:, env].abs().sum() == 0.0 and grad[:, [0, 1, 2, 6, 7]].abs().sum() > 0
    assert all(loss(lp, b)[0] == value for lp, b in [(-40.0, 0.0), (0.0, -60.0), (-3.0, 5.0)])
