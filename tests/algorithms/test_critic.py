"""GAE, whitening and the clipped value loss against ALGORITHMS.md (PPO + GAE)."""

import pytest
import torch

from areal_sys.algorithms import gae_advantages, masked_whiten, outcome_token_rewards, value_loss
from areal_sys.algorithms.critic import discounted_reverse_cumsum

R = torch.tensor([[0.0, 0.0, 1.0]])
V = torch.tensor([[0.5, 0.6, 0.7]])


@pytest.mark.parametrize(
    ("lam", "expected"), [(1.0, [0.5, 0.4, 0.3]), (0.95, [0.46575, 0.385, 0.3])]
)
def test_gae_sanity_values(lam: float, expected: list[float]) -> None:
    adv, ret = gae_advantages(R, V, torch.ones(1, 3), gamma=1.0, lam=lam)
    assert torch.allclose(adv, torch.tensor([expected]), atol=1e-6)
    assert torch.allclose(ret, adv + V, atol=1e-6)  # returns = A + V


def test_gae_ignores_padding() -> None:
    """A padded row gives the same numbers as the unpadded one, zeros on the padding."""
    r = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 9.0, 9.0, 9.0]])
    v = torch.tensor([[0.5, 0.6, 0.7, 9.0, 9.0], [0.2, 0.3, 9.0, 9.0, 9.0]])
    m = torch.tensor([[1.0, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    adv, ret = gae_advantages(r, v, m, gamma=1.0, lam=0.95)
    assert torch.allclose(adv[0], torch.tensor([0.46575, 0.385, 0.3, 0, 0]), atol=1e-6)
    # row 2: δ = [0.3−0.2, 1−0.3] = [0.1, 0.7]; A = [0.1 + 0.95·0.7, 0.7]
    assert torch.allclose(adv[1], torch.tensor([0.765, 0.7, 0, 0, 0]), atol=1e-6)
    assert torch.equal(ret[m == 0], torch.zeros(5))


def test_gae_skips_a_masked_segment_inside_a_response() -> None:
    """A tool_use episode: model tokens, a tool's result (M = 0), model tokens. The steps are the
    loss tokens: the row gives the numbers of the same row without the result (ALGORITHMS.md's
    hand-checked [0.46575, 0.385, 0.3] at lam 0.95), whatever rewards and values sit on it; the
    last token before the result bootstraps from the first one after it, not from 0."""
    r = torch.tensor([[0.0, 5.0, 5.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 9.0, 9.0, 0.6, 0.7]])
    m = torch.tensor([[1.0, 0, 0, 1, 1]])
    adv, ret = gae_advantages(r, v, m, gamma=1.0, lam=0.95)
    assert torch.allclose(adv, torch.tensor([[0.46575, 0, 0, 0.385, 0.3]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0.96575, 0, 0, 0.985, 1.0]]), atol=1e-6)
    # with gamma < 1 the gap is not discounted either: one step from token 0 to token 3
    adv, _ = gae_advantages(r, v, m, gamma=0.9, lam=1.0)
    compact, _ = gae_advantages(r[:, [0, 3, 4]], v[:, [0, 3, 4]], torch.ones(1, 3), gamma=0.9,
                                lam=1.0)
    assert torch.allclose(adv[:, [0, 3, 4]], compact, atol=1e-6)


def test_discounted_cumsum_matches_the_recursion_across_blocks() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 37, dtype=torch.float64)
    ref = torch.zeros_like(x)
    acc = torch.zeros(3, dtype=torch.float64)
    for t in reversed(range(37)):
        acc = x[:, t] + 0.9 * acc
        ref[:, t] = acc
    for block in (1, 5, 16, 256):
        assert torch.allclose(discounted_reverse_cumsum(x, 0.9, block=block), ref, atol=1e-10)
    assert discounted_reverse_cumsum(torch.zeros(2, 0), 0.9).shape == (2, 0)


def test_outcome_reward_on_the_last_response_token() -> None:
    m = torch.tensor([[1.0, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    out = outcome_token_rewards(torch.tensor([1.0, -1.0, 5.0]), m)
    assert out.tolist() == [[0, 0, 1, 0], [0, 0, 0, -1], [0, 0, 0, 0]]


def test_masked_whiten() -> None:
    x = torch.tensor([[1.0, 3.0, 100.0]])
    m = torch.tensor([[1.0, 1.0, 0.0]])
    w = masked_whiten(x, m)
    assert torch.allclose(w, torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-4)


def test_value_loss_clipping() -> None:
    """ℓ_V = 0.5·max((V−R)², (V_clip−R)²), clip 0.5."""
    # V moved from 0 to 1.5 toward R = 2: V_clip = 0.5, the clipped term 2.25 wins, no gradient.
    v = torch.tensor([1.5], requires_grad=True)
    loss, stats = value_loss(v, torch.tensor([0.0]), torch.tensor([2.0]), torch.ones(1))
    assert loss.item() == pytest.approx(1.125) and stats["vf_clipped"].item() == 1.0
    loss.sum().backward()
    assert v.grad is not None and v.grad.item() == 0.0
    # Within the clip range: plain 0.5·(V−R)² with gradient V − R.
    v = torch.tensor([1.2], requires_grad=True)
    loss, stats = value_loss(v, torch.tensor([1.0]), torch.tensor([2.0]), torch.ones(1))
    assert loss.item() == pytest.approx(0.32) and stats["vf_clipped"].item() == 0.0
    loss.sum().backward()
    assert v.grad.item() == pytest.approx(-0.8)  # type: ignore[union-attr]
    # No clipping, and masked tokens are zero.
    loss, _ = value_loss(torch.tensor([1.5, 7.0]), torch.tensor([0.0, 0.0]),
                         torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]), clip=None)
    assert loss.tolist() == [0.125, 0.0]
