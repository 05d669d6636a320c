"""TrainerWorker: one data-parallel rank of the policy trainer (DeepSpeed ZeRO engine).

A plain class; the controller wraps it with `ray.remote`. One `train_step(groups, step)`:

1. the batch's view (workers/batch.py): shaped rewards, loss masks (overlong filtering, RAFT
   weights) and advantages, from a group estimator or, for GAE, from the critic (the controller
   passes the critic's per-token advantages; workers/critic.py says where GAE runs);
2. the batch is split into `ppo_minibatches` minibatches (balanced tokens), each minibatch over
   the data-parallel ranks (balanced tokens), and each rank's share packed padding-free into
   micro-batches of at most `max_tokens_per_microbatch` tokens, the same count on every rank;
3. π_prox (decoupled PPO's proximal policy: the weights before this step) for every sequence.
   The first minibatch's update is the first optimiser step, so all its micro-batches run at the
   proximal weights: their π_prox is the training forward's own log-probs, detached (exact, no
   extra pass). Only later minibatches (`ppo_minibatches` > 1) need a no-gradient proximal
   forward, before the first step. The policy entropy and the approximate KL to the behaviour
   policy, mean(logπ_b − logπ_prox), are measured on π_prox wherever it comes from; the reference
   log-probs (KL in the loss, and the `kl_to_initial` metric on its schedule) in a no-gradient
   reference forward before the first step. The train–inference mismatch metrics (`mismatch/*`:
   the engine's logπ_b against π_prox on the tokens generated at this version) are measured there
   too, with no pass of their own (areal_sys/algorithms/mismatch.py);
4. one optimiser update per minibatch, accumulating gradients over its micro-batches. Every
   micro-batch loss is normalised by denominators of the whole minibatch (all ranks), so the
   micro-batch losses sum to the minibatch loss. With `kl_in_loss`, β·KL_t to the reference is
   added to the per-token loss before the aggregation.

The trainer never reads an algorithm's name: it calls the `Algorithm`'s pieces and branches only
on its facts (`needs_reference`, `kl_in_loss`, `kl_in_reward`, token-level or group estimator).

Composed of parts it holds, not mixins: `self.algo` (built once, from `cfg.algorithm`),
`self.reference` (workers/reference.py: a frozen copy of the initial policy, or None), loaded when
the algorithm needs it (KL on) or `logging.kl_to_initial` asks for the metric `kl_to_initial` =
mean over loss tokens of k3(π_prox ‖ π_init), measured every `logging.kl_to_initial_every` steps
at the cost of one more no-gradient forward over the rank's sequences on those steps, and the
model's memory; and `self.weights`
(workers/trainer_weights.py: weight export, broadcast and checkpoint files over the engine). The
actor's remote methods below are one-line calls into these parts.

Reusing the training forward as π_prox is exact where a no-gradient forward of the same packed
micro-batch gives the same logits, which holds when the model has no active dropout (the training
forward runs in train mode, the proximal pass in eval mode): with dropout > 0 `setup()` logs it
and every minibatch gets the proximal pass. tests/workers/test_proximal_reuse.py proves the
losses, gradients, weights and metrics bit-identical to the proximal pass over every minibatch.

Log-probs are log_softmax(logits / temperature) at the response positions, in float32. Only
response tokens with loss_mask 1 train. Every rank receives the whole batch and derives the same
plan, so planning needs no communication.

Process-group and engine set-up (gloo on CPU, the DeepSpeed CPU traps): workers/deepspeed_engine.py.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from areal_sys.algorithms import LossDenominators, build_algorithm
from areal_sys.algorithms.mismatch import SUM_KEYS, mismatch_metrics
from areal_sys.algorithms.rpo import on_policy_prefix
from areal_sys.attention import attention_implementation
from areal_sys.config import ExperimentConfig, TrainerConfig
from areal_sys.packing import (
    PackedMicroBatch,
    from_sequences,
    pack_micro_batch,
    packing_stats,
    plan_minibatches,
    response_logprobs,
    to_padded,
)
from areal_sys.trajectory import Group
from workers.batch import Nested, Proximal, TrainBatch, lr_at_step, prepare_batch, signal_lr_factor
from workers.deepspeed_engine import (
    build_engine,
    join_process_group,
    reduce_over_ranks,
    release_engine,
)
from workers.reference import ReferencePolicy, has_dropout, nested_logprobs, packed_logits
from workers.trainer_weights import WeightsOut
from workers.weight_sync import TensorMeta

__all__ = ["TrainerWorker"]

log = logging.getLogger(__name__)

MASTER_ADDR = "127.0.0.1"  # the ranks' rendezvous (one node)

_SUMS = ("loss", "entropy", "kl_behav", "kl_initial", "kl_loss", "clipped", "behav_weight",
         "capped", "mis_masked", "tis_truncated", "n_loss_tokens", "n_seqs_trained",
         "response_tokens", *SUM_KEYS)


class TrainerWorker:
    """One data-parallel trainer rank. Construct cheaply, then `setup()` (joins the process group
    and builds the engine), `train_step(...)` per policy version, `export_weights(...)` or
    `broadcast_weights()` for weight sync, `save_checkpoint(...)` for checkpoints, `shutdown()`
    at the end. Reads the sections `trainer`, `algorithm`, `rpo`, `model.dtype`, `seed`,
    `rollout.temperature` / `max_new_tokens` and `logging.kl_to_initial` / `kl_to_initial_every`
    of `cfg`.
    """

    def __init__(
        self, model_path: str, cfg: ExperimentConfig, *, rank: int, world_size: int,
        master_port: int,
    ) -> None:
        self.model_path = model_path
        self.train_cfg: TrainerConfig = cfg.trainer
        self.algo = build_algorithm(
            cfg.algorithm, max_new_tokens=cfg.rollout.max_new_tokens, rpo=cfg.rpo
        )
        log_cfg = cfg.logging  # the kl_to_initial metric's period in steps (None: off)
        self.kl_metric_every = log_cfg.kl_to_initial_every if log_cfg.kl_to_initial else None
        self.use_reference = self.algo.needs_reference or self.kl_metric_every is not None
        self.rank, self.world_size, self.master_port = rank, world_size, master_port
        self.dtype, self.seed, self.temperature = cfg.model.dtype, cfg.seed, cfg.rollout.temperature
        self.collective_timeout_s = cfg.controller.train_timeout_s
        self.engine: Any = None
        self.reference: ReferencePolicy | None = None
        self._weights: WeightsOut | None = None
        self._reuse_train_logp = True  # π_prox of the first minibatch from its training forward

    # ----------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Join the process group (gloo on CPU, nccl on GPU) and build the ZeRO engine."""
        from transformers import AutoModelForCausalLM

        on_gpu = join_process_group(self.rank, self.world_size, MASTER_ADDR, self.master_port,
                                    timeout_s=self.collective_timeout_s)
        torch.manual_seed(self.seed)
        model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=torch.float32,
            attn_implementation=attention_implementation("cuda" if on_gpu else "cpu"),
        )
        if self.use_reference:
            self.reference = ReferencePolicy(
                model, temperature=self.temperature,
                max_tokens=self.train_cfg.max_tokens_per_microbatch,
            )
        self._reuse_train_logp = not has_dropout(model)
        cfg = self.train_cfg
        self.engine = build_engine(model, cfg, lr=cfg.lr, dtype=self.dtype)
        self._weights = WeightsOut(
            self.engine, rank=self.rank, world_size=self.world_size, zero_stage=cfg.zero_stage,
            dtype=self.dtype, model_path=self.model_path,
        )
        if self.rank == 0:
            log.info(
                "TrainerWorker: world_size=%d zero_stage=%d dtype=%s backend=%s; %s; π_prox %s",
                self.world_size, cfg.zero_stage, self.dtype,
                "nccl" if on_gpu else "gloo", self.algo.summary,
                "of the first minibatch from its training forward" if self._reuse_train_logp
                else "from a proximal pass over every minibatch (the model has dropout)",
            )

    @property
    def weights(self) -> WeightsOut:
        """The weights-out part (exists after `setup()`)."""
        if self._weights is None:
            raise RuntimeError("call setup() first")
        return self._weights

    # ------------------------------------------------------------------------------ train step
    def train_step(
        self, groups: list[Group], step: int, advantages: Nested | None = None
    ) -> dict[str, float]:
        """One policy update (version `step` → `step + 1`) on the whole batch; returns metrics.

        `advantages`: per-token advantages nested like `groups`, required for a token-level
        estimator (the critic's GAE; workers/critic.py), ignored otherwise.
        """
        if self.engine is None:
            raise RuntimeError("call setup() before train_step()")
        bonus = None
        if self.algo.kl_in_reward and self.algo.estimator is not None:
            bonus = self._reference().kl_reward_sums(groups, self.algo, self.engine.device)
        batch = prepare_batch(groups, self.algo, reward_bonus=bonus,
                              advantages=advantages if self.algo.estimator is None else None)
        if not batch.prompts:
            raise ValueError("train_step got no response tokens to train on")
        cfg = self.train_cfg
        lengths, budget = batch.lengths, cfg.max_tokens_per_microbatch
        plans = plan_minibatches(
            lengths, cfg.ppo_minibatches, budget, self.world_size, batch.names,
            groups=batch.group_ids if cfg.keep_groups_together else None,
        )
        my_mbs = [[self._pack(batch, idx) for idx in plan[self.rank]] for plan in plans]
        whole = [[mb for plan in plans for mb in plan[r]] for r in range(self.world_size)]
        pstats = packing_stats(whole, lengths, budget)

        # no optimiser step before the first minibatch: its micro-batches run at π_prox's weights
        n_reused = len(my_mbs[0]) if self._reuse_train_logp else 0
        kl_metric = self.kl_metric_every is not None and step % self.kl_metric_every == 0
        px = Proximal(batch, [mb for mbs in my_mbs for mb in mbs], kl_metric, version=step)
        t0 = time.perf_counter()
        ref_s = self._reference_pass(px) if kl_metric or self.algo.kl_in_loss else 0.0
        prox_s = self._proximal_pass(px, first=n_reused)
        t1 = time.perf_counter()
        signal = signal_lr_factor(cfg.sparse_signal, batch.informative, batch.num_groups,
                                  cfg.min_informative_groups)
        lr = signal * lr_at_step(step, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                                 total_steps=cfg.total_steps, schedule=cfg.lr_schedule)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        grad_norms, j = [], 0
        sums = dict.fromkeys(_SUMS, 0.0) | {"behav_weight_max": 0.0}
        for plan, mbs in zip(plans, my_mbs, strict=True):
            members = [i for bins in plan for mb in bins for i in mb]  # all ranks' sequences
            denom = LossDenominators.from_masks(batch.mask[i] for i in members)
            for mb in mbs:
                self._train_micro_batch(px, mb, denom, sums, measure=j if j < n_reused else None)
                j += 1
            pre_step_norm = self._plain_grad_norm()
            self.engine.step()
            norm = self.engine.get_global_grad_norm()
            grad_norms.append(float(norm) if norm is not None else pre_step_norm)
        t2 = time.perf_counter()

        for part in px.parts:  # summed in plan order, whichever pass measured them
            for key, value in part.items():
                sums[key] = max(sums[key], value) if key.endswith("_max") else sums[key] + value
        s = reduce_over_ranks(sums, self.world_size, self.engine.device)
        n_tok = max(s["n_loss_tokens"], 1.0)
        metrics = {
            "loss": s["loss"] / len(plans),
            "entropy": s["entropy"] / n_tok,
            "approx_kl_behav": s["kl_behav"] / n_tok,
            "clip_frac": s["clipped"] / n_tok,
            "behav_weight_mean": s["behav_weight"] / n_tok,
            "behav_weight_max": s["behav_weight_max"],
            "behav_capped_frac": s["capped"] / n_tok,
            "mismatch/mis_masked_frac": s["mis_masked"] / n_tok,
            "mismatch/tis_truncated_frac": s["tis_truncated"] / n_tok,
            **mismatch_metrics(s, s["response_tokens"]),
            "response_len_mean": s["response_tokens"] / len(lengths),
            "trained_seq_frac": s["n_seqs_trained"] / len(lengths),
            "reward_shaped_mean": sum(batch.rewards) / len(batch.rewards),
            "grad_norm": sum(grad_norms) / len(grad_norms),
            "lr": float(lr),
            "signal_lr_factor": signal,
            "n_tokens": float(sum(lengths)),
            "n_loss_tokens": s["n_loss_tokens"],
            "n_seqs": float(len(lengths)),
            "padding_waste": pstats.padding_waste,
            "rank_imbalance": pstats.rank_imbalance,
            "num_microbatches": float(pstats.num_microbatches),
            "num_minibatches": float(len(plans)),
            "proximal_time_s": prox_s,
            "reference_time_s": ref_s,
            "train_time_s": t2 - t1,
            "tokens_per_s": sum(lengths) / max(t2 - t0, 1e-9),
        }
        if kl_metric:
            metrics["kl_to_initial"] = s["kl_initial"] / n_tok
        if self.algo.kl_in_loss:
            metrics["kl_loss"] = s["kl_loss"] / max(len(plans), 1)
        return metrics

    @torch.no_grad()
    def compute_logprobs(self, groups: list[Group]) -> Nested:
        """Log-probs (at `temperature`) of every response token under the current weights, packed,
        without gradient, nested like `groups` (what the tests compare with a plain forward).
        ZeRO-3 forwards are collective: call it on every rank."""
        self.engine.eval()
        out = nested_logprobs(
            groups, self._logits, max_tokens=self.train_cfg.max_tokens_per_microbatch,
            temperature=self.temperature, device=self.engine.device,
        )
        self.engine.train()
        return out

    def reference_logprobs(self, groups: list[Group]) -> Nested:
        """Log-probs of every response token under the frozen initial weights, nested like
        `groups` (for a KL in the reward under a critic; any single rank may answer)."""
        return self._reference().logprobs(groups, self.engine.device)

    def _reference(self) -> ReferencePolicy:
        if self.reference is None:
            raise RuntimeError("no reference model (KL off and kl_to_initial false)")
        return self.reference

    def _pack(self, batch: TrainBatch, idx: list[int]) -> PackedMicroBatch:
        if not idx:  # rank has fewer sequences than micro-batches: a zero-loss dummy pass
            mb = pack_micro_batch([[0]], [[0]], seq_indices=[])
        else:
            mb = pack_micro_batch(
                [batch.prompts[i] for i in idx], [batch.responses[i] for i in idx], idx
            )
        return mb.to(self.engine.device)

    def _logits(self, mb: PackedMicroBatch) -> torch.Tensor:
        """Logits [N, V] at the positions predicting the micro-batch's response tokens."""
        return packed_logits(self.engine, mb)

    def _rows(self, values: list[torch.Tensor], mb: PackedMicroBatch) -> torch.Tensor:
        return from_sequences([values[i] for i in mb.seq_indices]).to(self.engine.device)

    @torch.no_grad()
    def _reference_pass(self, px: Proximal) -> float:
        """π_ref of every sequence of this rank (the frozen initial weights); returns seconds."""
        t0 = time.perf_counter()
        reference = self._reference()
        for mb in px.mbs:
            if mb.seq_indices:
                rows = to_padded(
                    response_logprobs(reference.logits(mb), mb.target_ids, self.temperature), mb
                )
                for s, i in enumerate(mb.seq_indices):
                    px.ref[i] = rows[s, : len(px.batch.responses[i])].cpu()
        return time.perf_counter() - t0

    @torch.no_grad()
    def _proximal_pass(self, px: Proximal, first: int) -> float:
        """π_prox by a no-gradient forward (the weights before the update) of the micro-batches
        `px.mbs[first:]`, with their metric numerators; returns seconds (0.0: none to run)."""
        if first >= len(px.mbs):
            return 0.0
        t0 = time.perf_counter()
        self.engine.eval()
        for j in range(first, len(px.mbs)):
            mb = px.mbs[j]
            logits = self._logits(mb)  # also for a dummy: ZeRO-3 forwards are collective
            if mb.seq_indices:
                logp = to_padded(response_logprobs(logits, mb.target_ids, self.temperature), mb)
                px.measure(j, logits, logp, self.temperature)
        self.engine.train()
        return time.perf_counter() - t0

    def _train_micro_batch(
        self, px: Proximal, mb: PackedMicroBatch, denom: LossDenominators,
        sums: dict[str, float], measure: int | None,
    ) -> None:
        """Forward, loss and backward of one micro-batch. `measure`: its index in `px.mbs` when
        the weights are still π_prox's, so this forward, detached, is π_prox (measured here)."""
        logits = self._logits(mb)
        logp = response_logprobs(logits, mb.target_ids, self.temperature)
        if not mb.seq_indices:
            self.engine.backward(logp.sum() * 0.0)
            return
        batch = px.batch
        mask = self._rows(batch.mask, mb)
        logp_rows = to_padded(logp, mb)
        if measure is not None:
            px.measure(measure, logits.detach(), logp_rows.detach(), self.temperature)
        behav = [batch.behav[i] for i in mb.seq_indices]
        if self.algo.prefix_loss == "faithful":  # RPO: cached prefixes count as on-policy
            behav = [on_policy_prefix(b, px.prox[i], batch.prefix_lens[i])
                     for b, i in zip(behav, mb.seq_indices, strict=True)]
        token_loss, stats = self.algo.policy_loss(
            logp_rows, self._rows(px.prox, mb), from_sequences(behav).to(self.engine.device),
            self._rows(batch.adv, mb), mask,
        )
        if self.algo.kl_in_loss:
            kl_term = self.algo.kl_loss(logp_rows, self._rows(px.ref, mb), mask)
            token_loss = token_loss + kl_term
            sums["kl_loss"] += float(self.algo.aggregate(kl_term.detach(), mask, denom))
        loss = self.algo.aggregate(token_loss, mask, denom)
        # DeepSpeed averages gradients over data-parallel ranks; the global loss is their sum.
        self.engine.backward(loss * self.world_size)
        keep = mask.bool()
        sums["loss"] += float(loss.detach())
        for key in ("clipped", "behav_weight", "capped", "mis_masked", "tis_truncated"):
            sums[key] += float(stats[key][keep].sum()) if key in stats else 0.0
        if keep.any():
            sums["behav_weight_max"] = max(
                sums["behav_weight_max"], float(stats["behav_weight"][keep].max())
            )

    def _plain_grad_norm(self) -> float:
        """Gradient 2-norm before the step, for the one engine that does not report it (ZeRO
        stage 0 in fp32). That engine all-reduces in step(), so with several ranks this is the
        local norm. NaN for the other engines (they report the global norm after the step)."""
        if self.train_cfg.zero_stage != 0 or self.dtype != "float32":
            return float("nan")
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        if not grads:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])))

    # --------------------------------------------------------- weights out (trainer_weights.py)
    def export_weights(self, path: str) -> dict[str, float]:
        """`shm_file` sync: rank 0 writes the full weights to `path` (every rank calls it)."""
        return self.weights.export(path)

    def weight_sync_endpoint(self) -> tuple[str, int]:
        """Where rank 0 hosts the `collective` group's store: (this node's address, a free port)."""
        return WeightsOut.endpoint()

    def weight_meta(self) -> list[TensorMeta] | None:
        """(name, shape, dtype) of every exported weight on rank 0 (collective under ZeRO-3)."""
        return self.weights.meta()

    def init_weight_group(
        self, worker: int, host: str, port: int, meta: list[TensorMeta],
        bucket_bytes: int, backend: str, timeout_s: float = 1800.0,
    ) -> bool:
        """Rank 0 makes its `collective` weight-sync group with rollout engine `worker`."""
        self.weights.join_group(worker, host, port, meta, bucket_bytes, backend, timeout_s)
        return True

    def broadcast_weights(self, only: list[int] | None = None) -> dict[str, Any]:
        """`collective` sync: gather and broadcast the full weights to every engine, or to
        those in `only` (every rank calls it); `failed` names the engines it could not reach."""
        return self.weights.broadcast(only)

    def save_hf(self, out_dir: str) -> None:
        """HF-format model + tokenizer in `out_dir` (rank 0 writes; every rank calls it)."""
        self.weights.save_hf(out_dir)

    def save_checkpoint(self, out_dir: str) -> None:
        """DeepSpeed state in `out_dir/trainer/`, HF policy in `out_dir/policy/` (every rank)."""
        self.weights.save_checkpoint(out_dir)

    def load_checkpoint(self, ckpt_dir: str) -> None:
        """Restore weights and optimiser state (every rank). The reference policy stays the
        initial one; the learning rate is a function of the step."""
        self.weights.load_checkpoint(ckpt_dir)

    def shutdown(self) -> None:
        """Release the engine and leave the process group (a later setup() may join anew)."""
        if self.engine is not None:
            release_engine(self.engine)
            self.engine = None
            self._weights = None
