"""The training view of a batch of scored groups, and the learning-rate schedule.

`prepare_batch` applies an `Algorithm`'s per-group pieces in the order its docstring fixes:

1. reward shaping: R = `algo.shaped_rewards(group, bonus)` (RPO's length-aware reward, the soft
   overlong penalty), plus an optional per-response reward bonus (the summed −β·KL_t when the KL
   sits in the reward);
2. loss mask: the rollout's loss mask × `train_mask(finish_reasons)` (overlong filtering);
3. advantages: a group estimator's A_i broadcast to every token of response i, or, for a
   token-level estimator (GAE), the per-token advantages the critic computed;
4. RAFT-style weights (`mask_zero_advantage`): responses whose weight is exactly 0 leave the loss
   (mask 0), so they drop out of the loss denominators too;
5. RPO prefixes under `suffix_only`: the cached prefix tokens leave the loss (mask 0). The other
   modes change the prefix's behaviour log-probs in the trainer (`on_policy_prefix`);
6. a group the filter rejected that fills a batch place after the refill budget ran out
   (`Group.filter_bypassed`, controller/admission.py): advantage 0 and mask 0 on every token, so
   it contributes neither gradient nor loss-denominator tokens.

Empty responses still count in their group's statistics but get no entry (nothing to train).
Pure tensor code: no I/O, no distributed calls; shared by the policy trainer and the critic.
`Proximal` holds one train step's π_prox and π_ref rows and the metrics measured on π_prox,
among them the numerators of the train–inference mismatch metrics (areal_sys/algorithms/
mismatch.py) over the tokens generated at the trainer's own version: no forward pass of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from areal_sys.algorithms import Algorithm, broadcast_to_tokens
from areal_sys.algorithms.kl import kl_k3
from areal_sys.algorithms.mismatch import mismatch_sums
from areal_sys.packing import (
    PackedMicroBatch,
    from_sequences,
    response_entropy,
    to_padded,
)
from areal_sys.trajectory import Group

# per trajectory, nested like the groups: [group][member][token]
Nested = list[list[list[float]]]


def lr_at_step(
    step: int, *, lr: float, warmup_steps: int, total_steps: int, schedule: str
) -> float:
    """Learning rate of train step `step` (0-based policy version): linear warm-up over
    `warmup_steps` steps (lr·(step+1)/warmup), then constant, or cosine decay to 0 at `total_steps`.
    Every minibatch update of one step uses the same rate.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule != "cosine":
        raise ValueError(f"unknown lr_schedule {schedule!r}")
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def signal_lr_factor(mode: str, informative: int, groups: int, min_groups: int) -> float:
    """The learning-rate multiplier of the sparse-signal guard (`trainer.sparse_signal`).

    With many groups carrying no signal (shared RPO prefixes, easy or hopeless prompts), Adam's
    normalisation turns the gradient of one or two informative groups into a full-size step.
    `off`: 1. `skip`: 0 below `min_groups` informative groups, else 1 (the step's gradient still
    enters Adam's moment estimates; the weights do not move). `scale`: the informative fraction
    of the batch's groups, so a step's size follows the amount of signal in it.
    """
    if mode == "off":
        return 1.0
    if mode == "skip":
        return 0.0 if informative < min_groups else 1.0
    if mode == "scale":
        return informative / max(groups, 1)
    raise ValueError(f"unknown sparse_signal mode {mode!r}")


@dataclass
class TrainBatch:
    """The training view of a list of groups: one entry per trained sequence (batch order)."""

    prompts: list[list[int]]
    responses: list[list[int]]
    behav: list[torch.Tensor]  # [R_i] engine log-probs
    mask: list[torch.Tensor]  # [R_i] float 0/1 (rollout × overlong filter × RAFT weight × not
    # filter-bypassed)
    adv: list[torch.Tensor]  # [R_i]
    rewards: list[float]  # shaped reward of each entry's response (R_i after shaping)
    names: list[str]
    group_ids: list[int]
    positions: list[tuple[int, int]]  # (group index, member index) of each entry
    prefix_lens: list[int]  # RPO: leading response tokens taken from the experience cache
    versions: list[torch.Tensor]  # [R_i] int64: the policy version that generated each token
    informative: int = 0  # groups with a nonzero advantage on some loss token (the signal)
    num_groups: int = 0

    @property
    def lengths(self) -> list[int]:
        return [len(p) + len(r) for p, r in zip(self.prompts, self.responses, strict=True)]


def prepare_batch(
    groups: list[Group],
    algo: Algorithm,
    *,
    advantages: Nested | None = None,
    reward_bonus: list[list[float]] | None = None,
) -> TrainBatch:
    """Shaped rewards, loss masks and advantages per group, then one entry per non-empty response.

    `advantages` (token-level estimators only): per-token advantages from the critic, nested like
    `groups`. `reward_bonus`: one number per response added to its reward before the estimator.
    """
    if advantages is None and algo.estimator is None:
        raise ValueError("a token-level estimator (gae) needs the critic's advantages")
    b = TrainBatch([], [], [], [], [], [], [], [], [], [], [], num_groups=len(groups))
    for gi, g in enumerate(groups):
        signal = False
        lengths = [len(t.response_ids) for t in g.trajectories]
        rewards = algo.shaped_rewards(g, reward_bonus[gi] if reward_bonus else None)
        keep = algo.train_mask([t.finish_reason for t in g.trajectories])
        if advantages is not None:
            per_token = [torch.tensor(a, dtype=torch.float32) for a in advantages[gi]]
        else:
            assert algo.estimator is not None
            adv = algo.estimator(rewards)
            if algo.mask_zero_advantage:
                keep = keep * (adv != 0).float()
            per_token = broadcast_to_tokens(adv, lengths)
        if g.filter_bypassed:  # rejected by the filter: in the batch, never in the gradient
            per_token = [torch.zeros_like(a) for a in per_token]
            keep = torch.zeros_like(keep)
        for k, (t, a) in enumerate(zip(g.trajectories, per_token, strict=True)):
            if not t.response_ids:
                continue
            b.prompts.append(list(t.prompt_ids))
            b.responses.append(list(t.response_ids))
            b.behav.append(torch.tensor(t.behav_logprobs, dtype=torch.float32))
            mask = torch.tensor(t.loss_mask, dtype=torch.float32) * keep[k]
            if algo.prefix_loss == "suffix_only":
                mask[: t.prefix_len] = 0.0
            b.mask.append(mask)
            b.adv.append(a)
            b.rewards.append(float(rewards[k]))
            b.names.append(f"{t.prompt_uid}/group{g.group_id}/sample{k}")
            b.group_ids.append(g.group_id)
            b.positions.append((gi, k))
            b.prefix_lens.append(t.prefix_len)
            b.versions.append(torch.tensor(t.versions, dtype=torch.int64))
            signal = signal or bool(torch.any((a * mask) != 0))
        b.informative += signal
    return b


@dataclass
class Proximal:
    """One train step's per-sequence π_prox and π_ref rows of this rank (other ranks' sequences
    stay empty), and the metric numerators measured on π_prox per micro-batch of `mbs` (this
    rank's micro-batches in plan order). The trainer sums `parts` in that order, so the sums do
    not depend on which pass (the proximal forward or the training forward) measured them."""

    batch: TrainBatch
    mbs: list[PackedMicroBatch]
    kl_metric: bool  # measure k3(π_prox ‖ π_ref) this step
    version: int  # the trainer's policy version (π_prox's weights): the mismatch metrics' tokens
    prox: list[torch.Tensor] = field(default_factory=list)
    ref: list[torch.Tensor] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.batch.prompts)
        self.prox = [torch.zeros(0) for _ in range(n)]
        self.ref = [torch.zeros(0) for _ in range(n)]
        self.parts = [{} for _ in self.mbs]

    @torch.no_grad()
    def measure(
        self, j: int, logits: torch.Tensor, logp_rows: torch.Tensor, temperature: float
    ) -> None:
        """π_prox := `logp_rows` ([S, L], no gradient) for the sequences of micro-batch `j`, and
        into `parts[j]` the sums measured on it over loss tokens: the entropy (of `logits`),
        logπ_b − logπ_prox, the token, trained-sequence and response-token counts, with
        `kl_metric` k3(π_prox ‖ π_ref) (π_ref of these sequences filled in before), and over
        every response token generated at `version` (loss mask or not: the engine's figures are
        what is measured) the mismatch numerators (`mismatch_sums`)."""
        mb, b = self.mbs[j], self.batch

        def rows(values: list[torch.Tensor]) -> torch.Tensor:
            return from_sequences([values[i] for i in mb.seq_indices]).to(logp_rows.device)

        for s, i in enumerate(mb.seq_indices):
            self.prox[i] = logp_rows[s, : len(b.responses[i])].cpu()
        mask = rows(b.mask)
        keep = mask.bool()
        entropy = to_padded(response_entropy(logits, temperature), mb)
        part = {
            "entropy": float(entropy[keep].sum()),
            "kl_behav": float((rows(b.behav) - logp_rows)[keep].sum()),
            "n_loss_tokens": float(keep.sum()),
            "n_seqs_trained": float((mask.sum(-1) > 0).sum()),
            "response_tokens": float(sum(len(b.responses[i]) for i in mb.seq_indices)),
        }
        lengths = torch.tensor([len(b.responses[i]) for i in mb.seq_indices])
        real = torch.arange(logp_rows.shape[-1])[None, :] < lengths[:, None]
        current = real.to(logp_rows.device) & (rows(b.versions) == self.version)
        part |= mismatch_sums(logp_rows, rows(b.behav), current)
        if self.kl_metric:
            part["kl_initial"] = float(kl_k3(logp_rows, rows(self.ref))[keep].sum())
        self.parts[j] = part


def nest(values: list[list[float]], batch: TrainBatch, groups: list[Group]) -> Nested:
    """Per-entry lists back into the shape of `groups` (empty responses get [])."""
    out: Nested = [[[] for _ in g.trajectories] for g in groups]
    for (gi, k), v in zip(batch.positions, values, strict=True):
        out[gi][k] = v
    return out
