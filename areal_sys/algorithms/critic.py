"""PPO with a critic: token-level GAE advantages, whitening and the clipped value loss.

Tensors are [S, L] (sequences × response positions, or any shape whose last dim is time) with a
mask M that is 1 on the response tokens of one contiguous span and 0 on padding. Positions with
M = 0 are treated as absent: their values and rewards count as 0, and the token after a row's last
M = 1 position is terminal (V = 0).

Formulas (ALGORITHMS.md, "PPO + GAE"):
- δ_t = r_t + γ·V_{t+1} − V_t;  A_t = Σ_l (γλ)^l · δ_{t+l};  returns R_t = A_t + V_t;
- the outcome reward sits on the last response token (`outcome_token_rewards`);
- A is then whitened over the batch's loss tokens (`masked_whiten`, `whiten_advantages`);
- value loss ℓ_V = 0.5 · max((V − R)², (V_clip − R)²), V_clip = V_old + clip(V − V_old, ±c), c 0.5.
Sanity: r=[0,0,1], V=[.5,.6,.7], γ=1: λ=1 → A=[0.5,0.4,0.3]; λ=0.95 → [0.46575, 0.385, 0.3].
"""

from __future__ import annotations

import torch

from areal_sys.algorithms.registry import ESTIMATOR, register

LossOutput = tuple[torch.Tensor, dict[str, torch.Tensor]]


def discounted_reverse_cumsum(x: torch.Tensor, factor: float, block: int = 256) -> torch.Tensor:
    """y_t = Σ_{l≥0} factor^l · x_{t+l} along the last dim, in float64.

    Vectorised in blocks of `block` positions: inside a block one matmul with the triangular
    matrix D[t, u] = factor^(u−t) (u ≥ t), then the block's first value is carried into the
    previous block as y_e·factor^(e−t). One Python step per block, never per token.
    """
    x64 = x.double()
    length = x64.shape[-1]
    if length == 0:
        return x64.clone()
    k = min(block, length)
    idx = torch.arange(k, device=x64.device)
    diff = idx[None, :] - idx[:, None]  # u − t
    powers = torch.full((k, k), float(factor), dtype=torch.float64, device=x64.device)
    tri = torch.where(diff >= 0, powers.pow(diff.clamp(min=0)), torch.zeros_like(powers))
    tail = torch.full((k,), float(factor), dtype=torch.float64, device=x64.device).pow(k - idx)
    out = torch.empty_like(x64)
    carry = torch.zeros(x64.shape[:-1], dtype=torch.float64, device=x64.device)
    for end in range(length, 0, -k):
        start = max(0, end - k)
        n = end - start
        y = x64[..., start:end] @ tri[:n, :n].T + carry[..., None] * tail[k - n :]
        out[..., start:end] = y
        carry = y[..., 0]
    return out


def outcome_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards [S, L]: R_i on row i's last M = 1 position, 0 elsewhere (float32).

    Rows with no loss token get all zeros. Add per-token shaping (e.g. `kl_reward_term`) on top.
    """
    m = mask.bool()
    length = m.shape[-1]
    last = (length - 1) - m.flip(-1).int().argmax(-1)  # index of the last True per row
    out = torch.zeros(m.shape, dtype=torch.float32, device=m.device)
    out.scatter_(-1, last.unsqueeze(-1), rewards.float().reshape(last.shape).unsqueeze(-1))
    return out * m.float()


@register(
    ESTIMATOR,
    "gae",
    options={"gamma": "gae_gamma", "lam": "gae_lambda"},
    meta={"token_level": True, "needs_critic": True},
)
def gae_advantages(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (token level, needs a critic): A_t = Σ_l (γλ)^l δ_{t+l}, δ_t = r_t + γV_{t+1} − V_t.

    Takes per-token rewards [S, L] (see `outcome_token_rewards`), critic values [S, L] and the
    mask; returns (advantages, returns = A + V), both float32, detached, zero where M = 0.

    The steps are the M = 1 positions of each row, in order: t + 1 is the next loss token, so a
    masked segment inside a response (a tool's result in a tool_use episode) is skipped, not a
    terminal state (its value taken as 0) and not a run of discounted steps. For a row whose loss
    tokens are contiguous this is the plain recursion over positions.
    """
    m = mask.bool()
    slot = (m.long().cumsum(-1) - 1).clamp(min=0)  # each loss token's index among its row's
    rows = torch.arange(m.shape[0], device=m.device)[:, None].expand_as(m)

    def compact(x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(m.shape, dtype=torch.float64, device=m.device)
        out[rows[m], slot[m]] = x.detach().double()[m]
        return out

    mc = compact(torch.ones_like(token_rewards))
    v, r = compact(values), compact(token_rewards)
    v_next = torch.cat([v[..., 1:], torch.zeros_like(v[..., :1])], dim=-1)
    delta = (r + gamma * v_next - v) * mc
    adv_c = discounted_reverse_cumsum(delta, gamma * lam) * mc
    adv = torch.zeros(m.shape, dtype=torch.float64, device=m.device)
    adv[m] = adv_c[rows[m], slot[m]]
    returns = adv + values.detach().double() * m
    return adv.float(), returns.float()


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / sqrt(var + eps) over the M = 1 entries (population variance); 0 where M = 0.

    Statistics come from the tensor given: pass the whole batch (all ranks' tokens if the
    trainer is data-parallel), not one micro-batch.
    """
    m = mask.double()
    n = m.sum().clamp(min=1.0)
    x64 = x.double()
    mean = (x64 * m).sum() / n
    var = (((x64 - mean) * m) ** 2).sum() / n
    return ((x64 - mean) * torch.rsqrt(var + eps) * m).to(x.dtype)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float | None = 0.5,
) -> LossOutput:
    """Clipped value loss: ℓ_V = 0.5 · max((V − R)², (V_clip − R)²) per token, 0 where M = 0.

    V_clip = V_old + clip(V − V_old, −c, c) with c = `clip` (None: ℓ_V = 0.5·(V − R)²).
    `values` are the critic's current (differentiable) predictions, `old_values` those used for
    GAE, `returns` the GAE returns. Aggregate like the policy loss. Stats: `vf_clipped` (1 where
    the clipped term is the larger one, i.e. no gradient).
    Sanity: V_old=0, R=2, V=1.5, c=0.5 → V_clip=0.5, ℓ_V = 0.5·max(0.25, 2.25) = 1.125, no gradient.
    """
    v = values.float()
    ret = returns.detach().float()
    keep = mask.bool()
    unclipped = (v - ret) ** 2
    if clip is None:
        loss, clipped = 0.5 * unclipped, torch.zeros_like(keep)
    else:
        old = old_values.detach().float()
        v_clip = old + (v - old).clamp(-clip, clip)
        clipped_sq = (v_clip - ret) ** 2
        loss, clipped = 0.5 * torch.maximum(unclipped, clipped_sq), clipped_sq > unclipped
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    return loss, {"vf_clipped": clipped.detach().float()}
