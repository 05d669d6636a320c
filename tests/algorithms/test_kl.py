"""KL estimators to a reference policy and where the penalty goes."""

import math

import pytest
import torch

from areal_sys.algorithms import kl_k1, kl_k2, kl_k3, kl_loss_term, kl_reward_term

LOGP = torch.log(torch.tensor([0.5]))  # π_θ
REF = torch.log(torch.tensor([0.25]))  # π_ref


def test_estimator_values() -> None:
    assert kl_k1(LOGP, REF).item() == pytest.approx(math.log(2), abs=1e-6)
    assert kl_k2(LOGP, REF).item() == pytest.approx(0.5 * math.log(2) ** 2, abs=1e-6)
    # k3 = π_ref/π_θ − log(π_ref/π_θ) − 1 = 0.5 − ln 0.5 − 1
    assert kl_k3(LOGP, REF).item() == pytest.approx(0.5 - math.log(0.5) - 1, abs=1e-6)
    assert kl_k3(LOGP, REF).item() == pytest.approx(0.193147, abs=1e-6)


def test_estimators_vanish_when_policies_agree_and_k3_is_nonnegative() -> None:
    lp = torch.log(torch.tensor([0.1, 0.5, 0.9]))
    for est in (kl_k1, kl_k2, kl_k3):
        assert torch.allclose(est(lp, lp), torch.zeros(3), atol=1e-7)
    torch.manual_seed(0)
    a, b = torch.randn(100), torch.randn(100)
    assert (kl_k3(a, b) >= 0).all()
    assert torch.isfinite(kl_k3(torch.tensor([0.0]), torch.tensor([-1e4]))).all()  # clamped


def test_k3_is_clamped_to_ten_as_in_areal_and_verl() -> None:
    """r = logπ_ref − logπ_θ. r = −5: e^−5 + 5 − 1 = 4.0067, under the bound, unchanged;
    r = +5: e^5 − 5 − 1 = 142.41 → 10; r = 30 (log-ratio clamp 20, then 2.9e8) → 10."""
    logp = torch.zeros(3, requires_grad=True)
    ref = torch.tensor([-5.0, 5.0, 30.0])
    kl = kl_k3(logp, ref)
    assert kl.tolist() == pytest.approx([math.exp(-5) + 4, 10.0, 10.0], abs=1e-5)
    assert math.exp(-5) + 4 == pytest.approx(4.0067, abs=1e-4)
    assert math.exp(5) - 6 == pytest.approx(142.41, abs=1e-2)  # what the clamp replaces
    kl.sum().backward()
    # d/dlogπ_θ (e^r − r − 1) = 1 − e^r at r = −5; clamped tokens: no gradient, never nan
    assert logp.grad.tolist() == pytest.approx([1 - math.exp(-5), 0.0, 0.0], abs=1e-6)


def test_k3_gradient_flows_to_the_policy_only() -> None:
    logp, ref = LOGP.clone().requires_grad_(), REF.clone().requires_grad_()
    kl_k3(logp, ref).sum().backward()
    # d/dlogπ_θ (e^r − r − 1), r = logπ_ref − logπ_θ: 1 − e^r = 1 − 0.5
    assert logp.grad.item() == pytest.approx(0.5, abs=1e-6)  # type: ignore[union-attr]
    assert ref.grad is None


def test_loss_and_reward_placement() -> None:
    logp = torch.log(torch.tensor([0.5, 0.5])).requires_grad_()
    ref = torch.log(torch.tensor([0.25, 0.25]))
    mask = torch.tensor([1.0, 0.0])
    term = kl_loss_term(logp, ref, mask, coef=0.1)
    assert term.tolist() == pytest.approx([0.0193147, 0.0], abs=1e-6) and term.requires_grad
    shaped = kl_reward_term(logp, ref, mask, coef=0.1, estimator=kl_k1)
    assert shaped.tolist() == pytest.approx([-0.1 * math.log(2), 0.0], abs=1e-6)
    assert not shaped.requires_grad
