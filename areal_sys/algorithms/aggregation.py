"""Loss aggregation over the GLOBAL (mini)batch, never per micro-batch.

A micro-batch holds some sequences of a minibatch as [S, L] tensors (rows = sequences, M = 0 on
padding). Each aggregation divides by denominators computed once over the whole minibatch (all
micro-batches, all data-parallel ranks), so the micro-batch losses SUM to the global loss and
gradient accumulation needs no rescaling. Per-sequence terms (|o_i|) are local to one sequence,
and a sequence never spans micro-batches.

With ℓ the per-token loss and M the mask (ALGORITHMS.md, "Aggregation"):
- `token-mean`:          Σ M·ℓ / N_tok                       (DAPO; default)
- `seq-mean-token-mean`: Σ_i (Σ_t M·ℓ / |o_i|) / B           (original GRPO)
- `seq-mean-token-sum`:  Σ_i Σ_t M·ℓ / B
- `dr_grpo`:             Σ M·ℓ / (B · L_max)
N_tok = Σ M, B = sequences with at least one loss token, |o_i| = Σ_t M_i, L_max = the constant
generation budget (`rollout.max_new_tokens`, as in Dr.GRPO's own code), never the longest response
of the minibatch: a constant keeps the loss scale independent of which responses a minibatch holds.
Sanity: per-token losses [1,1] and [2,2,2,2] → 1.667, 1.5, 5, 1.25 (B=2, L_max=4).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from areal_sys.algorithms.registry import AGGREGATION, GENERATION_BUDGET, register


@dataclass(frozen=True)
class LossDenominators:
    """Global denominators of one (mini)batch: loss tokens and trained sequences."""

    n_tokens: float  # Σ M over the minibatch
    n_seqs: float  # sequences with at least one loss token (B)

    @classmethod
    def from_masks(cls, masks: Iterable[torch.Tensor]) -> LossDenominators:
        """From every sequence's response loss mask (1-D, one per sequence) of the minibatch."""
        n_tokens = n_seqs = 0
        for m in masks:
            k = int(m.sum().item())
            n_tokens += k
            n_seqs += int(k > 0)
        return cls(float(n_tokens), float(n_seqs))


def _masked_sum(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool(), loss, torch.zeros_like(loss))


@register(AGGREGATION, "token-mean")
def token_mean(loss: torch.Tensor, mask: torch.Tensor, denom: LossDenominators) -> torch.Tensor:
    """Σ M·ℓ / N_tok (global token count)."""
    return _masked_sum(loss, mask).sum() / max(denom.n_tokens, 1.0)


@register(AGGREGATION, "seq-mean-token-mean")
def seq_mean_token_mean(
    loss: torch.Tensor, mask: torch.Tensor, denom: LossDenominators
) -> torch.Tensor:
    """Σ_i (Σ_t M·ℓ / |o_i|) / B; rows of `loss` are sequences."""
    per_seq = _masked_sum(loss, mask).sum(-1) / mask.float().sum(-1).clamp(min=1.0)
    return per_seq.sum() / max(denom.n_seqs, 1.0)


@register(AGGREGATION, "seq-mean-token-sum")
def seq_mean_token_sum(
    loss: torch.Tensor, mask: torch.Tensor, denom: LossDenominators
) -> torch.Tensor:
    """Σ_i Σ_t M·ℓ / B."""
    return _masked_sum(loss, mask).sum() / max(denom.n_seqs, 1.0)


@register(AGGREGATION, "dr_grpo", options={"max_len": GENERATION_BUDGET})
def dr_grpo(
    loss: torch.Tensor, mask: torch.Tensor, denom: LossDenominators, *, max_len: int
) -> torch.Tensor:
    """Σ M·ℓ / (B · L_max), L_max = `max_len` the generation budget: a constant normaliser, so no
    length bias (Dr.GRPO). `build_algorithm` binds `max_len` to `rollout.max_new_tokens`."""
    if max_len < 1:
        raise ValueError(f"dr_grpo: the generation budget max_len must be >= 1, got {max_len}")
    return _masked_sum(loss, mask).sum() / max(denom.n_seqs * max_len, 1.0)
