"""Decoupled PPO and PPO-clip against the hand-checked values of ALGORITHMS.md."""

import math

import pytest
import torch

from areal_sys.algorithms import decoupled_ppo_loss, ppo_clip_loss


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
