"""The reference policy (a frozen copy of the initial weights) and the no-gradient, packed
log-prob pass that it shares with the trainer.

`TrainerWorker` (workers/trainer.py) holds a `ReferencePolicy` when the algorithm needs one (KL
penalty on) or the `kl_to_initial` metric is asked for, else None. The copy is made in `setup()`
from the freshly loaded model, before DeepSpeed wraps it. It stays fp32 and unsharded (one full
copy per rank, moved to the engine's device on first use) and never trains.

Uses: reference log-probs in the trainer's reference pass before the update (KL in the loss
every step, the metric on its schedule),
`TrainerWorker.reference_logprobs(groups)` for a KL placed in the reward (the controller passes
them to the critic), and `kl_reward_sums` (a group estimator adds the summed −β·KL_t of each
response to its reward).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from areal_sys.algorithms import Algorithm
from areal_sys.packing import (
    PackedMicroBatch,
    ffd_pack,
    pack_micro_batch,
    response_logprobs,
    to_padded,
)
from areal_sys.trajectory import Group
from workers.batch import Nested


def packed_logits(model: Any, mb: PackedMicroBatch) -> torch.Tensor:
    """Logits [N, V] of `model` at the positions predicting the micro-batch's response tokens."""
    out = model(
        input_ids=mb.input_ids,
        position_ids=mb.position_ids,
        attention_mask=None,  # with use_cache=False: block-diagonal mask from position_ids
        use_cache=False,
        logits_to_keep=mb.logit_index,
    )
    return out.logits[0]


@torch.no_grad()
def nested_logprobs(
    groups: list[Group],
    logits_fn: Callable[[PackedMicroBatch], torch.Tensor],
    *,
    max_tokens: int,
    temperature: float,
    device: Any,
) -> Nested:
    """Log-probs (at `temperature`) of every response token under `logits_fn`, packed into
    micro-batches of at most `max_tokens` tokens, without gradient: one list per trajectory,
    nested like `groups` (empty responses get [])."""
    trajs = [t for g in groups for t in g.trajectories]
    out: list[list[float]] = [[] for _ in trajs]
    live = [i for i, t in enumerate(trajs) if t.response_ids]
    for bin_ in ffd_pack([trajs[i].length for i in live], max_tokens):
        idx = [live[j] for j in bin_]
        mb = pack_micro_batch(
            [trajs[i].prompt_ids for i in idx], [trajs[i].response_ids for i in idx], idx
        ).to(device)
        rows = to_padded(response_logprobs(logits_fn(mb), mb.target_ids, temperature), mb).cpu()
        for s, i in enumerate(idx):
            out[i] = rows[s, : len(trajs[i].response_ids)].tolist()
    flat = iter(out)
    return [[next(flat) for _ in g.trajectories] for g in groups]


def has_dropout(model: torch.nn.Module) -> bool:
    """Whether a train-mode forward of `model` may differ from an eval-mode one: a dropout module
    with p > 0, or an attention dropout > 0 in its config (applied inside the attention call)."""
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        return True
    config = getattr(model, "config", None)
    return float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0


class ReferencePolicy:
    """A frozen copy of `model` (taken at construction): its logits, log-probs, KL-reward sums."""

    def __init__(self, model: torch.nn.Module, *, temperature: float, max_tokens: int) -> None:
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.temperature, self.max_tokens = temperature, max_tokens

    def logits(self, mb: PackedMicroBatch) -> torch.Tensor:
        """Reference logits [N, V] for `mb`, on the micro-batch's device."""
        if next(self.model.parameters()).device != mb.input_ids.device:
            self.model.to(mb.input_ids.device)
        return packed_logits(self.model, mb)

    def logprobs(self, groups: list[Group], device: Any) -> Nested:
        """Log-probs of every response token under the frozen initial weights, nested like
        `groups` (not sharded, so any single rank may answer)."""
        return nested_logprobs(groups, self.logits, max_tokens=self.max_tokens,
                               temperature=self.temperature, device=device)

    def kl_reward_sums(
        self, groups: list[Group], algo: Algorithm, device: Any
    ) -> list[list[float]]:
        """Σ_t −β·KL_t(behaviour ‖ reference) per response, nested like `groups` ([group][member]),
        for a group estimator's rewards. Every rank computes all of them, so every rank derives
        the same advantages."""
        ref = self.logprobs(groups, device)
        out = []
        for g, rows in zip(groups, ref, strict=True):
            sums = []
            for t, r in zip(g.trajectories, rows, strict=True):
                behav = torch.tensor(t.behav_logprobs, dtype=torch.float32)
                mask = torch.tensor(t.loss_mask, dtype=torch.float32)
                sums.append(float(algo.kl_reward(behav, torch.tensor(r), mask).sum()))
            out.append(sums)
        return out
