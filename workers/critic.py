"""CriticWorker: the value model of PPO with GAE (a DeepSpeed engine of its own, one rank).

Created by `controller/runtime.py` only when the algorithm `needs_critic`. The model is the
policy's checkpoint loaded as `AutoModelForTokenClassification` with one label: the policy's
backbone plus a scalar value head (zero-initialised, so the first values are 0), no dropout. It
has its own AdamW optimiser and learning rate (`trainer.critic_lr`).

Where GAE runs: here, in the critic, because everything GAE needs except the rewards lives here
(values V and, after GAE, the returns the critic trains on). One step, called by the controller:

1. `prepare(groups, ref_logprobs)`: V_t for every response token of the batch (one packed forward,
   no gradient, with the critic weights before this step); per-token rewards = the shaped outcome
   reward on the last loss token (+ −β·KL_t when the KL sits in the reward, from the rollout's
   log-probs and the trainer's reference log-probs); (A, returns) = GAE(r, V); A whitened over the
   whole batch's loss tokens. Returns A per response token, nested like `groups`, which the
   controller passes to every policy trainer rank (`TrainerWorker.train_step(..., advantages)`).
2. `update(step)`: one optimiser update of the value model on the stored batch with the clipped
   value loss 0.5·max((V − R)², (V_clip − R)²) around the values of step 1, aggregated like the
   policy loss over the whole batch (micro-batches of `max_tokens_per_microbatch` tokens). The
   controller runs it concurrently with the policy update.

Value positions are those of the policy's logits: the hidden state that predicts response token t
gives V_t (the value of the state before token t).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from areal_sys.algorithms import LossDenominators, build_algorithm
from areal_sys.algorithms.critic import masked_whiten, outcome_token_rewards
from areal_sys.attention import attention_implementation
from areal_sys.config import ExperimentConfig, TrainerConfig
from areal_sys.packing import (
    PackedMicroBatch,
    ffd_pack,
    from_sequences,
    pack_micro_batch,
    to_padded,
)
from areal_sys.trajectory import Group
from workers.batch import Nested, TrainBatch, lr_at_step, nest, prepare_batch
from workers.deepspeed_engine import (
    build_engine,
    join_process_group,
    load_engine_state,
    release_engine,
    save_engine_state,
)

log = logging.getLogger(__name__)

MASTER_ADDR = "127.0.0.1"  # a one-rank process group of its own


class CriticWorker:
    """The value model: `setup()`, then per step `prepare(groups)` and `update(step)`. Reads the
    sections `trainer` (critic_lr, schedule, packing, ZeRO), `algorithm`, `rpo`, `model.dtype`,
    `seed` and `rollout.max_new_tokens` of `cfg`."""

    def __init__(self, model_path: str, cfg: ExperimentConfig, *, master_port: int) -> None:
        self.model_path = model_path
        self.train_cfg: TrainerConfig = cfg.trainer
        self.algo = build_algorithm(
            cfg.algorithm, max_new_tokens=cfg.rollout.max_new_tokens, rpo=cfg.rpo
        )
        if self.algo.value_loss is None:
            raise ValueError("CriticWorker needs an algorithm with a critic (estimator gae)")
        self.master_port = master_port
        self.dtype, self.seed = cfg.model.dtype, cfg.seed
        self.engine: Any = None
        self._batch: TrainBatch | None = None
        self._old_values: list[torch.Tensor] = []
        self._returns: list[torch.Tensor] = []
        self._stats: dict[str, float] = {}

    def setup(self) -> None:
        """Join a one-rank process group and build the value model's ZeRO engine."""
        from transformers import AutoModelForTokenClassification

        on_gpu = join_process_group(0, 1, MASTER_ADDR, self.master_port)
        torch.manual_seed(self.seed)
        model = AutoModelForTokenClassification.from_pretrained(
            self.model_path, num_labels=1, dtype=torch.float32,
            attn_implementation=attention_implementation("cuda" if on_gpu else "cpu"),
        )
        model.dropout = torch.nn.Identity()  # values must be deterministic
        torch.nn.init.zeros_(model.score.weight)
        if model.score.bias is not None:
            torch.nn.init.zeros_(model.score.bias)
        cfg = self.train_cfg
        self.engine = build_engine(model, cfg, lr=cfg.critic_lr, dtype=self.dtype)
        log.info("CriticWorker: lr=%g zero_stage=%d; %s", cfg.critic_lr, cfg.zero_stage,
                 self.algo.summary)

    # ------------------------------------------------------------------------------ one step
    def _micro_batches(self, batch: TrainBatch) -> list[PackedMicroBatch]:
        return [
            pack_micro_batch([batch.prompts[i] for i in b], [batch.responses[i] for i in b], b)
            .to(self.engine.device)
            for b in ffd_pack(batch.lengths, self.train_cfg.max_tokens_per_microbatch, batch.names)
        ]

    def _values(self, mb: PackedMicroBatch) -> torch.Tensor:
        """V [S, L] of the micro-batch's response tokens (differentiable in training mode)."""
        out = self.engine(input_ids=mb.input_ids, position_ids=mb.position_ids,
                          attention_mask=None, use_cache=False)
        return to_padded(out.logits[0, mb.logit_index, 0].float(), mb)

    def _rows(self, values: list[torch.Tensor], idx: list[int]) -> torch.Tensor:
        return from_sequences([values[i] for i in idx]).to(self.engine.device)

    @torch.no_grad()
    def prepare(self, groups: list[Group], ref_logprobs: Nested | None = None) -> Nested:
        """Values, GAE and whitening for the batch (module doc, step 1); returns A per token."""
        if self.engine is None:
            raise RuntimeError("call setup() before prepare()")
        zeros = [[[0.0] * len(t.response_ids) for t in g.trajectories] for g in groups]
        batch = prepare_batch(groups, self.algo, advantages=zeros)
        if not batch.prompts:
            raise ValueError("critic got no response tokens")
        self.engine.eval()
        values = [torch.zeros(0) for _ in batch.prompts]
        for mb in self._micro_batches(batch):
            rows = self._values(mb).cpu()
            for s, i in enumerate(mb.seq_indices):
                values[i] = rows[s, : len(batch.responses[i])]
        self.engine.train()
        idx = list(range(len(batch.prompts)))
        mask = from_sequences(batch.mask)
        v = from_sequences(values)
        token_rewards = outcome_token_rewards(torch.tensor(batch.rewards), mask)
        if self.algo.kl_in_reward:
            if ref_logprobs is None:
                raise ValueError("KL in the reward needs the reference log-probs")
            ref = [torch.tensor(ref_logprobs[gi][k]) for gi, k in batch.positions]
            token_rewards = token_rewards + self.algo.kl_reward(
                from_sequences(batch.behav), from_sequences(ref), mask
            )
        assert self.algo.token_estimator is not None
        adv, returns = self.algo.token_estimator(token_rewards, v, mask)
        if self.algo.whiten_advantages:
            adv = masked_whiten(adv, mask)
        n = [len(r) for r in batch.responses]
        self._batch = batch
        self._old_values = values
        self._returns = [returns[i, : n[i]] for i in idx]
        keep = mask.bool()
        self._stats = {
            "value_mean": float(v[keep].mean()) if keep.any() else 0.0,
            "return_mean": float(returns[keep].mean()) if keep.any() else 0.0,
        }
        return nest([adv[i, : n[i]].tolist() for i in idx], batch, groups)

    def save_checkpoint(self, out_dir: str) -> None:
        """The value model's weights and optimiser state into `out_dir/critic`."""
        save_engine_state(self.engine, f"{out_dir}/critic")

    def load_checkpoint(self, ckpt_dir: str) -> None:
        load_engine_state(self.engine, f"{ckpt_dir}/critic")

    def update(self, step: int) -> dict[str, float]:
        """One value-model update on the batch of the last `prepare` (module doc, step 2)."""
        batch = self._batch
        if batch is None:
            raise RuntimeError("call prepare() before update()")
        assert self.algo.value_loss is not None
        t0 = time.perf_counter()
        cfg = self.train_cfg
        lr = lr_at_step(step, lr=cfg.critic_lr, warmup_steps=cfg.warmup_steps,
                        total_steps=cfg.total_steps, schedule=cfg.lr_schedule)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        denom = LossDenominators.from_masks(batch.mask)
        loss_sum = clipped = 0.0
        for mb in self._micro_batches(batch):
            idx = list(mb.seq_indices)
            mask = self._rows(batch.mask, idx)
            token_loss, stats = self.algo.value_loss(
                self._values(mb), self._rows(self._old_values, idx),
                self._rows(self._returns, idx), mask,
            )
            loss = self.algo.aggregate(token_loss, mask, denom)
            self.engine.backward(loss)
            loss_sum += float(loss.detach())
            clipped += float(stats["vf_clipped"][mask.bool()].sum())
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        self._batch = None
        return {
            "value_loss": loss_sum,
            "vf_clip_frac": clipped / max(denom.n_tokens, 1.0),
            "critic_grad_norm": float(norm) if norm is not None else float("nan"),
            "critic_lr": lr,
            "critic_time_s": time.perf_counter() - t0,
            **self._stats,
        }

    def shutdown(self) -> None:
        if self.engine is not None:
            release_engine(self.engine)
            self.engine = None
