"""Varlen attention for padding-free packed rows, registered with transformers as "packed_sdpa".

A packed micro-batch is one row of concatenated sequences whose `position_ids` restart at 0 for
each. Plain `sdpa` handles that with a block-diagonal [T, T] mask, which still computes (and
masks) all T² scores: on CPU, with micro-batches of thousands of tokens, that costs more than the
padding that packing saves. "packed_sdpa" instead cuts the row at every position-0 token and runs
causal scaled-dot-product attention per sequence, so attention costs Σ Lᵢ² like flash-attention's
varlen kernel (which `attention_implementation()` prefers on a GPU when flash-attn is installed).

Rows that are not packed (a batch > 1, or an explicit attention mask) fall back to plain `sdpa`.
Registering a name without a mask function makes transformers build no mask at all for it.
"""

from __future__ import annotations

from typing import Any

import torch

PACKED_SDPA = "packed_sdpa"


def packed_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [1, H, T, D], key/value [1, H_kv, T, D] → output [1, T, H, D] (transformers layout)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if position_ids is None or query.shape[0] != 1 or attention_mask is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    length = query.shape[2]
    starts = (position_ids[0, :length] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    bounds = [*starts, length]
    gqa = query.shape[1] != key.shape[1]
    outs = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
            dropout_p=dropout if module.training else 0.0, is_causal=True, scale=scaling,
            enable_gqa=gqa,
        )
        for s, e in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def register() -> str:
    """Register "packed_sdpa" with transformers (idempotent); returns the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
    return PACKED_SDPA


def attention_implementation(device_type: str) -> str:
    """What the trainer runs packed rows with: flash-attention 2 (varlen) on CUDA when installed,
    else "packed_sdpa" (registered here)."""
    if device_type == "cuda":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return register()
