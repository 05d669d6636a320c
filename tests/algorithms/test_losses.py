"""Policy losses (decoupled PPO, PPO-clip, dual clip, RAFT, RAFT++) against ALGORITHMS.md."""

import math

import pytest
import torch

from areal_sys.algorithms import decoupled_ppo_loss, ppo_clip_loss, raft_pp_loss, raft_sft_loss
from areal_sys.algorithms.registry import POLICY_LOSS, plugins


def _lp(p: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor([math.log(p)], requires_grad=grad)


ONE = torch.ones(1)


def test_decoupled_ppo_in_range_has_gradient() -> None:
    theta = _lp(0.22, grad=True)
    loss, stats = decoupled_ppo_loss(theta, _lp(0.2), _lp(0.1), ONE, ONE)
    assert loss.item() == pytest.approx(-2.2, abs=1e-5)
    assert stats["behav_weight"].item() == pytest.approx(2.0, abs=1e-5)
    assert stats["clipped"].item() == 0.0
    loss.sum().backward()
    # d(−w·u·A)/dlogπ_θ = −w·u·A = −2.2
    assert theta.grad is not None and theta.grad.item() == pytest.approx(-2.2, abs=1e-5)


def test_decoupled_ppo_clipped_has_no_gradient() -> None:
    theta = _lp(0.30, grad=True)
    loss, stats = decoupled_ppo_loss(theta, _lp(0.2), _lp(0.1), ONE, ONE)
    assert loss.item() == pytest.approx(-2.4, abs=1e-5)
    assert stats["clipped"].item() == 1.0
    loss.sum().backward()
    assert theta.grad is not None and theta.grad.item() == 0.0


def test_naive_ppo_against_behaviour_is_clipped() -> None:
    theta = _lp(0.22, grad=True)
    loss, stats = ppo_clip_loss(theta, _lp(0.2), _lp(0.1), ONE, ONE)
    assert loss.item() == pytest.approx(-1.2, abs=1e-5)  # ratio 2.2 clipped at 1.2, w = 1
    assert stats["clipped"].item() == 1.0
    assert stats["behav_weight"].item() == 1.0
    loss.sum().backward()
    assert theta.grad is not None and theta.grad.item() == 0.0


@pytest.mark.parametrize(("clip_high", "bound"), [(0.28, 0.0128), (0.2, 0.012)])
def test_clip_higher_bound(clip_high: float, bound: float) -> None:
    """π_old = 0.01, A > 0: π_θ may rise to 0.01·(1+ε_high) before the gradient stops."""
    for p, flows in ((bound * 0.99, True), (bound * 1.01, False)):
        theta = _lp(p, grad=True)
        loss, _ = ppo_clip_loss(theta, _lp(0.01), _lp(0.01), ONE, ONE, clip_high=clip_high)
        loss.sum().backward()
        assert theta.grad is not None and (theta.grad.item() != 0.0) == flows, (p, clip_high)


def test_negative_advantage_uses_low_clip() -> None:
    theta = _lp(0.15, grad=True)  # u = 0.75 < 0.8 with A < 0: clipped, no gradient
    loss, stats = decoupled_ppo_loss(theta, _lp(0.2), _lp(0.2), -ONE, ONE)
    assert loss.item() == pytest.approx(0.8, abs=1e-5)
    assert stats["clipped"].item() == 1.0
    loss.sum().backward()
    assert theta.grad.item() == 0.0  # type: ignore[union-attr]


def test_behaviour_weight_cap_modes() -> None:
    # w = 0.8/0.1 = 8 > cap 5
    prox, behav = _lp(0.8), _lp(0.1)
    theta = _lp(0.8, grad=True)
    loss, stats = decoupled_ppo_loss(theta, prox, behav, ONE, ONE, behav_weight_cap=5.0)
    assert loss.item() == 0.0 and stats["capped"].item() == 1.0
    assert stats["behav_weight"].item() == pytest.approx(8.0, rel=1e-5)  # reported before capping
    loss.sum().backward()
    assert theta.grad.item() == 0.0  # type: ignore[union-attr]

    loss, stats = decoupled_ppo_loss(
        theta, prox, behav, ONE, ONE, behav_weight_cap=5.0, behav_cap_mode="clamp"
    )
    assert loss.item() == pytest.approx(-5.0, abs=1e-5) and stats["capped"].item() == 1.0

    loss, stats = decoupled_ppo_loss(theta, prox, behav, ONE, ONE, behav_weight_cap=None)
    assert loss.item() == pytest.approx(-8.0, rel=1e-5) and stats["capped"].item() == 0.0


def test_masked_tokens_give_zero_and_infinite_weights_do_not_poison_gradients() -> None:
    theta = torch.log(torch.tensor([0.22, 0.5, 0.5])).requires_grad_()
    prox = torch.log(torch.tensor([0.2, 0.5, 0.5]))
    behav = torch.tensor([math.log(0.1), -math.inf, math.log(0.5)])  # w = 2, inf, 1
    mask = torch.tensor([1.0, 1.0, 0.0])
    loss, stats = decoupled_ppo_loss(theta, prox, behav, torch.ones(3), mask, behav_weight_cap=5.0)
    assert torch.allclose(loss, torch.tensor([-2.2, 0.0, 0.0]), atol=1e-5)
    assert stats["capped"].tolist() == [0.0, 1.0, 0.0]
    loss.sum().backward()
    assert torch.isfinite(theta.grad).all()  # type: ignore[arg-type]
    assert theta.grad.tolist()[1:] == [0.0, 0.0]  # type: ignore[union-attr]


def test_rejects_unknown_cap_mode() -> None:
    with pytest.raises(ValueError, match="behav_cap_mode"):
        decoupled_ppo_loss(ONE, ONE, ONE, ONE, ONE, behav_weight_cap=2.0, behav_cap_mode="drop")  # type: ignore[arg-type]


@pytest.mark.parametrize("loss_fn", [decoupled_ppo_loss, ppo_clip_loss])
def test_dual_clip_caps_negative_advantage_terms(loss_fn) -> None:
    """A = −1, u = 5: the PPO term is u·|A| = 5; dual clip c = 3 caps it at 3, no gradient."""
    theta = _lp(0.5, grad=True)
    old = _lp(0.1)
    loss, stats = loss_fn(theta, old, old, -ONE, ONE)
    assert loss.item() == pytest.approx(5.0, abs=1e-5) and stats["clipped"].item() == 0.0
    loss, stats = loss_fn(theta, old, old, -ONE, ONE, dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0, abs=1e-5) and stats["clipped"].item() == 1.0
    loss.sum().backward()
    assert theta.grad is not None and theta.grad.item() == 0.0


def test_dual_clip_leaves_small_ratios_and_positive_advantages_alone() -> None:
    theta = _lp(0.2, grad=True)  # u = 2 < c = 3 with A < 0: ℓ = 2 with gradient
    loss, stats = decoupled_ppo_loss(theta, _lp(0.1), _lp(0.1), -ONE, ONE, dual_clip=3.0)
    assert loss.item() == pytest.approx(2.0, abs=1e-5) and stats["clipped"].item() == 0.0
    loss.sum().backward()
    assert theta.grad.item() == pytest.approx(2.0, abs=1e-5)  # type: ignore[union-attr]
    theta = _lp(0.5)  # A > 0, u = 5: ordinary clip at 1.2, the dual clip does not apply
    loss, _ = decoupled_ppo_loss(theta, _lp(0.1), _lp(0.1), ONE, ONE, dual_clip=3.0)
    assert loss.item() == pytest.approx(-1.2, abs=1e-5)
    with pytest.raises(ValueError, match="dual_clip"):
        decoupled_ppo_loss(ONE, ONE, ONE, ONE, ONE, dual_clip=1.0)


def test_dual_clip_multiplies_the_behaviour_weight_after_capping() -> None:
    # w = 2 (prox 0.2 / behav 0.1), u = 5 (θ 1.0 / prox 0.2), A = −1: 2·min(5, 3) = 6
    loss, _ = decoupled_ppo_loss(_lp(1.0), _lp(0.2), _lp(0.1), -ONE, ONE, dual_clip=3.0)
    assert loss.item() == pytest.approx(6.0, abs=1e-5)


def test_raft_sft_is_weighted_nll() -> None:
    theta = torch.log(torch.tensor([0.5, 0.25, 0.5])).requires_grad_()
    w = torch.tensor([1.0, 1.0, 0.0])
    loss, stats = raft_sft_loss(theta, theta.detach(), theta.detach(), w, torch.tensor([1.0, 1, 0]))
    assert torch.allclose(loss, torch.tensor([0.693147, 1.386294, 0.0]), atol=1e-5)
    loss.sum().backward()
    assert theta.grad.tolist() == [-1.0, -1.0, 0.0]  # type: ignore[union-attr]
    assert stats["clipped"].sum() == 0 and stats["capped"].sum() == 0
    assert stats["behav_weight"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(("u", "term", "flows"), [(1.3, 1.2, False), (0.7, 0.7, True)])
def test_raft_pp_clipped_ratio(u: float, term: float, flows: bool) -> None:
    """RAFT++ with w = 1: u = 1.3 → 1.2 (no gradient); u = 0.7 → 0.7 (gradient)."""
    theta = _lp(0.5 * u, grad=True)
    loss, stats = raft_pp_loss(theta, _lp(0.5), _lp(0.5), ONE, ONE)
    assert loss.item() == pytest.approx(-term, abs=1e-5)
    assert stats["clipped"].item() == float(not flows)
    loss.sum().backward()
    assert theta.grad is not None and (theta.grad.item() != 0.0) == flows


def test_raft_pp_zero_weight_trains_nothing() -> None:
    theta = _lp(0.3, grad=True)
    loss, _ = raft_pp_loss(theta, _lp(0.5), _lp(0.5), torch.zeros(1), ONE)
    loss.sum().backward()
    assert loss.item() == 0.0 and theta.grad.item() == 0.0  # type: ignore[union-attr]


@pytest.mark.parametrize("name", sorted(plugins(POLICY_LOSS)))
def test_every_loss_keeps_the_common_interface(name: str) -> None:
    fn = plugins(POLICY_LOSS)[name].fn
    logp = torch.log(torch.full((2, 3), 0.3)).requires_grad_()
    other = torch.log(torch.full((2, 3), 0.25))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, stats = fn(logp, other, other, torch.ones(2, 3), mask)
    assert loss.shape == (2, 3) and torch.equal(loss[mask == 0], torch.zeros(3))
    assert {"clipped", "behav_weight", "capped"} <= set(stats)
    assert all(v.shape == (2, 3) and not v.requires_grad for v in stats.values())
