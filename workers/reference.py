"""The reference policy of a TrainerWorker: a frozen copy of the initial weights.

A mixin of `TrainerWorker` (workers/trainer.py). The copy is made in `setup()` from the freshly
loaded model, before DeepSpeed wraps it, only when the algorithm needs it (KL penalty on) or the
`kl_to_initial` metric is asked for. It stays fp32 and unsharded (one full copy per rank, moved to
the engine's device on first use) and never trains.

Uses: reference log-probs in the proximal pass (KL in the loss, and the metric), and
`reference_logprobs(groups)` for a KL placed in the reward (the controller passes them to the
critic; a group estimator adds the summed −β·KL_t of each response to its reward).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from areal_sys.algorithms import Algorithm
from areal_sys.packing import PackedMicroBatch
from areal_sys.trajectory import Group
from workers.batch import Nested


class ReferencePolicy:
    """Frozen initial policy: creation, forward, and KL-in-reward sums (see the module doc)."""

    algo: Algorithm
    ref_model: Any

    @staticmethod
    def _frozen_copy(model: Any) -> Any:
        ref = copy.deepcopy(model).eval()
        ref.requires_grad_(False)
        return ref

    def _ref_logits(self, mb: PackedMicroBatch) -> torch.Tensor:
        if next(self.ref_model.parameters()).device != mb.input_ids.device:
            self.ref_model.to(mb.input_ids.device)
        return self._forward(self.ref_model, mb)

    @torch.no_grad()
    def reference_logprobs(self, groups: list[Group]) -> Nested:
        """Log-probs of every response token under the frozen initial weights, nested like
        `groups` (not sharded, so any single rank may answer)."""
        if self.ref_model is None:
            raise RuntimeError("no reference model (KL off and kl_to_initial false)")
        return self._all_logprobs(groups, self._ref_logits)

    def _kl_reward_sums(self, groups: list[Group]) -> list[list[float]]:
        """Σ_t −β·KL_t(behaviour ‖ reference) per response, for a group estimator's rewards.
        Every rank computes all of them, so every rank derives the same advantages."""
        ref = self.reference_logprobs(groups)
        out = []
        for g, rows in zip(groups, ref, strict=True):
            sums = []
            for t, r in zip(g.trajectories, rows, strict=True):
                behav = torch.tensor(t.behav_logprobs, dtype=torch.float32)
                mask = torch.tensor(t.loss_mask, dtype=torch.float32)
                sums.append(float(self.algo.kl_reward(behav, torch.tensor(r), mask).sum()))
            out.append(sums)
        return out

    # provided by TrainerWorker
    @staticmethod
    def _forward(model: Any, mb: PackedMicroBatch) -> torch.Tensor:
        raise NotImplementedError

    def _all_logprobs(self, groups: list[Group], logits_fn: Any) -> Nested:
        raise NotImplementedError
