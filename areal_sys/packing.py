"""Padding-free dynamic batching: token-budget bin packing, data-parallel balancing, packed tensors.

A micro-batch is ONE row of concatenated sequences (`input_ids` [1, T]) with `position_ids`
restarting at 0 for every sequence. Called with `attention_mask=None` and `use_cache=False`,
transformers then builds a block-diagonal causal mask, so a packed forward equals one forward per
sequence (checked by tests/test_packing.py) and no compute is spent on padding.

Planning (pure Python on sequence lengths, deterministic, so every rank derives the same plan):
1. `balanced_partition` splits sequences over data-parallel ranks with balanced token counts;
2. `ffd_pack` packs each rank's share first-fit-decreasing into micro-batches of at most
   `max_tokens_per_microbatch` tokens;
3. `plan_microbatches` equalises the number of micro-batches across ranks (ZeRO collectives run
   once per micro-batch on every rank) by splitting the fullest micro-batches, and as a last
   resort adding empty ones (the trainer runs a zero-loss dummy pass for those).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def ffd_pack(
    lengths: Sequence[int], max_tokens: int, names: Sequence[str] | None = None
) -> list[list[int]]:
    """First-fit-decreasing: indices of `lengths` grouped into bins of at most `max_tokens` tokens.

    Longest first, each into the first bin with room (uses at most 11/9·OPT + 1 bins). Raises
    ValueError naming the sequence (by `names[i]` if given, else its index) that alone exceeds
    the budget.
    """
    for i, n in enumerate(lengths):
        if n > max_tokens:
            who = names[i] if names is not None else f"#{i}"
            raise ValueError(
                f"sequence {who} has {n} tokens, more than max_tokens_per_microbatch={max_tokens}"
            )
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(max_tokens - lengths[i])
    return bins


def balanced_partition(lengths: Sequence[int], k: int) -> list[list[int]]:
    """Indices of `lengths` split into `k` parts with balanced token sums (greedy LPT).

    Longest first, each to the part with the fewest tokens among those holding fewer than
    ceil(n/k) items (so no part holds more than its share of sequences). Every part is non-empty
    when n ≥ k and all lengths are positive.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cap = -(-len(lengths) // k)
    parts: list[list[int]] = [[] for _ in range(k)]
    sums = [0] * k
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        p = min((j for j in range(k) if len(parts[j]) < cap), key=lambda j: (sums[j], j))
        parts[p].append(i)
        sums[p] += lengths[i]
    return parts


def plan_microbatches(
    lengths: Sequence[int],
    max_tokens: int,
    world_size: int = 1,
    names: Sequence[str] | None = None,
) -> list[list[list[int]]]:
    """Per rank, its micro-batches as lists of indices into `lengths`.

    Every rank gets the same number of micro-batches; each micro-batch holds at most `max_tokens`
    tokens. A rank may get empty micro-batches only when it has fewer sequences than the others
    have micro-batches.
    """
    plan = []
    for part in balanced_partition(lengths, world_size):
        bins = ffd_pack([lengths[i] for i in part], max_tokens, [_name(names, i) for i in part])
        plan.append([[part[j] for j in b] for b in bins])
    target = max(len(bins) for bins in plan)
    for bins in plan:
        while len(bins) < target:
            splittable = [b for b in bins if len(b) > 1]
            if not splittable:
                bins.append([])
                continue
            fullest = max(splittable, key=lambda b: sum(lengths[i] for i in b))
            bins.remove(fullest)
            halves = balanced_partition([lengths[i] for i in fullest], 2)
            bins.extend([fullest[j] for j in h] for h in halves)
    return plan


def plan_minibatches(
    lengths: Sequence[int],
    num_minibatches: int,
    max_tokens: int,
    world_size: int = 1,
    names: Sequence[str] | None = None,
    groups: Sequence[int] | None = None,
) -> list[list[list[list[int]]]]:
    """[minibatch][rank][micro-batch] → indices into `lengths`.

    The sequences are split into `num_minibatches` token-balanced minibatches (one optimiser
    update each; empty ones are dropped, when there are fewer sequences than minibatches), and
    each minibatch is planned over the ranks by `plan_microbatches`. With `groups` (a group id per
    sequence) the minibatch split keeps every group whole, for objectives that need a group's
    members in the same update.
    """
    plans = []
    for mbatch in _minibatch_split(lengths, num_minibatches, groups):
        if not mbatch:
            continue
        sub = plan_microbatches(
            [lengths[i] for i in mbatch], max_tokens, world_size, [_name(names, i) for i in mbatch]
        )
        plans.append([[[mbatch[j] for j in mb] for mb in bins] for bins in sub])
    return plans


def _minibatch_split(
    lengths: Sequence[int], k: int, groups: Sequence[int] | None
) -> list[list[int]]:
    if groups is None:
        return balanced_partition(lengths, k)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    units = list(members.values())
    parts = balanced_partition([sum(lengths[i] for i in u) for u in units], k)
    return [sorted(i for j in part for i in units[j]) for part in parts]


def _name(names: Sequence[str] | None, i: int) -> str:
    return names[i] if names is not None else f"#{i}"


@dataclass(frozen=True)
class PackingStats:
    """How well a plan packs.

    `padding_waste`: 1 − real tokens / (micro-batches × ranks × budget), the share of the
    micro-batch token budget left empty (padding-free packing computes no pad tokens; this is what
    padding every micro-batch to the budget would waste). `padded_layout_waste`: the share of pad
    tokens if each micro-batch were instead a padded [n_seqs, longest] batch (what packing saves).
    `rank_imbalance`: max rank tokens / mean rank tokens − 1 (0 = perfectly balanced).
    """

    num_microbatches: int  # per rank
    total_tokens: int
    rank_tokens: list[int]
    padding_waste: float
    padded_layout_waste: float
    rank_imbalance: float


def packing_stats(
    plan: list[list[list[int]]], lengths: Sequence[int], max_tokens: int
) -> PackingStats:
    """Statistics of a `plan_microbatches` result."""
    rank_tokens = [sum(lengths[i] for mb in bins for i in mb) for bins in plan]
    total = sum(rank_tokens)
    n_mb = max((len(bins) for bins in plan), default=0)
    budget = n_mb * len(plan) * max_tokens
    padded = sum(len(mb) * max(lengths[i] for i in mb) for bins in plan for mb in bins if mb)
    mean = total / len(plan) if plan else 0.0
    return PackingStats(
        num_microbatches=n_mb,
        total_tokens=total,
        rank_tokens=rank_tokens,
        padding_waste=1.0 - total / budget if budget else 0.0,
        padded_layout_waste=1.0 - total / padded if padded else 0.0,
        rank_imbalance=max(rank_tokens) / mean - 1.0 if mean > 0 else 0.0,
    )


@dataclass
class PackedMicroBatch:
    """The tensors of one packed micro-batch and where its response tokens are.

    `input_ids`, `position_ids`: [1, T]. For the N response tokens of all its sequences, in order:
    `logit_index` [N] = position in the row whose logits predict the token (pass it as the model's
    `logits_to_keep`, or index the logits with it), `target_ids` [N] = the token,
    `resp_row`/`resp_col` [N] = (sequence within the micro-batch, response position), to lay
    per-token values out as [S, max_resp_len] with `to_padded`.
    """

    seq_indices: list[int]
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    logit_index: torch.Tensor
    target_ids: torch.Tensor
    resp_row: torch.Tensor
    resp_col: torch.Tensor
    resp_lens: list[int]

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_seqs(self) -> int:
        return len(self.resp_lens)

    @property
    def max_resp_len(self) -> int:
        return max(self.resp_lens, default=0)

    def to(self, device: torch.device | str) -> PackedMicroBatch:
        """A copy with every tensor on `device`."""
        return PackedMicroBatch(
            self.seq_indices,
            *(
                t.to(device)
                for t in (
                    self.input_ids,
                    self.position_ids,
                    self.logit_index,
                    self.target_ids,
                    self.resp_row,
                    self.resp_col,
                )
            ),
            self.resp_lens,
        )


def pack_micro_batch(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    seq_indices: Sequence[int] | None = None,
) -> PackedMicroBatch:
    """Concatenate (prompt + response) token lists into one padding-free row.

    Every prompt needs at least one token (the logits predicting response token 0 sit at the last
    prompt position). `seq_indices` records which batch sequences these are (default 0..S-1).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    ids: list[int] = []
    pos: list[int] = []
    logit_index: list[int] = []
    targets: list[int] = []
    rows: list[int] = []
    cols: list[int] = []
    for s, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if len(p) == 0:
            raise ValueError(f"sequence {s} has an empty prompt; at least one token is needed")
        start = len(ids)
        ids.extend(p)
        ids.extend(r)
        pos.extend(range(len(p) + len(r)))
        logit_index.extend(range(start + len(p) - 1, start + len(p) - 1 + len(r)))
        targets.extend(r)
        rows.extend([s] * len(r))
        cols.extend(range(len(r)))

    def long(x: list[int]) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.long)

    return PackedMicroBatch(
        seq_indices=list(seq_indices) if seq_indices is not None else list(range(len(prompts))),
        input_ids=long(ids).unsqueeze(0),
        position_ids=long(pos).unsqueeze(0),
        logit_index=long(logit_index),
        target_ids=long(targets),
        resp_row=long(rows),
        resp_col=long(cols),
        resp_lens=[len(r) for r in responses],
    )


def to_padded(flat: torch.Tensor, mb: PackedMicroBatch, fill: float = 0.0) -> torch.Tensor:
    """Lay per-response-token values [N] out as [S, max_resp_len] (padding = `fill`).

    Differentiable in `flat`.
    """
    out = flat.new_full((mb.num_seqs, mb.max_resp_len), fill)
    return out.index_put((mb.resp_row, mb.resp_col), flat)


def from_sequences(values: Sequence[torch.Tensor], fill: float = 0.0) -> torch.Tensor:
    """Per-sequence 1-D tensors (a micro-batch's rows, in order) as one [S, max_len] tensor."""
    width = max((v.numel() for v in values), default=0)
    out = torch.full((len(values), width), fill, dtype=torch.float32)
    for s, v in enumerate(values):
        out[s, : v.numel()] = v
    return out


def response_logprobs(
    logits: torch.Tensor, target_ids: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probabilities [N] of `target_ids` under log_softmax(logits [N, V] / temperature), in
    float32 (differentiable).

    `logits` are the rows predicting the response tokens: `full_logits[0, mb.logit_index]`, or the
    model output when `mb.logit_index` was passed as `logits_to_keep`.
    """
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp_all.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def response_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy [N] (nats) of softmax(logits [N, V] / temperature), in float32, no gradient."""
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp_all.exp() * logp_all).sum(-1)
