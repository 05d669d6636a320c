"""Overlong reward shaping (DAPO): what to do with responses that hit the length budget.

- Overlong filtering (`overlong_filter`): a truncated response (finish_reason "length") is masked
  out of the loss entirely (its tokens leave the aggregation denominators too).
- Soft overlong punishment (`overlong_penalty`), added to the reward R before the estimator:
      0                              if |y| ≤ L_max − L_cache
      ((L_max − L_cache) − |y|) / L_cache   if L_max − L_cache < |y| ≤ L_max
      −1                             if |y| > L_max
  Sanity: L_max 20480, L_cache 4096: |y| 16384 → 0; 18432 → −0.5; 20480 → −1.

|y| counts response tokens. L_max defaults to the generation budget (rollout.max_new_tokens) and
L_cache to L_max // 5 (DAPO: 4096 of 20480); see `resolve_overlong_lengths`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

TRUNCATED = "length"  # Trajectory.finish_reason of a response cut by the token budget


def overlong_penalty(lengths: torch.Tensor, *, max_len: int, cache_len: int) -> torch.Tensor:
    """Soft overlong punishment per response (float32, in [−1, 0]) from response lengths."""
    if not 0 < cache_len <= max_len:
        raise ValueError(f"need 0 < cache_len <= max_len, got {cache_len} and {max_len}")
    y = lengths.double()
    penalty = ((max_len - cache_len) - y) / cache_len
    return penalty.clamp(-1.0, 0.0).float()


def overlong_keep_mask(finish_reasons: Sequence[str]) -> torch.Tensor:
    """Per response: 1.0 to train on it, 0.0 for a truncated one (overlong filtering)."""
    return torch.tensor([float(r != TRUNCATED) for r in finish_reasons], dtype=torch.float32)


def resolve_overlong_lengths(
    max_len: int | None, cache_len: int | None, max_new_tokens: int | None
) -> tuple[int, int]:
    """(L_max, L_cache): L_max = `max_len` or else `max_new_tokens`; L_cache = `cache_len` or
    else L_max // 5 (at least 1). Raises ValueError when L_max is unknown or L_cache > L_max."""
    lmax = max_len if max_len is not None else max_new_tokens
    if lmax is None:
        raise ValueError(
            "overlong_penalty needs algorithm.overlong_max_len or the generation budget "
            "(build_algorithm(..., max_new_tokens=rollout.max_new_tokens))"
        )
    lcache = cache_len if cache_len is not None else max(1, lmax // 5)
    if not 0 < lcache <= lmax:
        raise ValueError(f"overlong_cache_len {lcache} must be in [1, L_max={lmax}]")
    return lmax, lcache
