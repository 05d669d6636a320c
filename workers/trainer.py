"""TrainerWorker: one data-parallel rank of the policy trainer (DeepSpeed ZeRO engine).

A plain class; the controller wraps it with `ray.remote`. One `train_step(groups, step)`:

1. advantages per group with the configured estimator, broadcast to every response token;
2. the batch is split into `ppo_minibatches` minibatches (balanced tokens), each minibatch over
   the data-parallel ranks (balanced tokens), and each rank's share packed padding-free into
   micro-batches of at most `max_tokens_per_microbatch` tokens, the same count on every rank;
3. proximal log-probs are recomputed ONCE for every sequence, without gradient, with the weights
   before this step (π_prox of decoupled PPO); the policy entropy and the approximate KL to the
   behaviour policy, mean(logπ_b − logπ_prox), are measured on the same pass;
4. one optimiser update per minibatch, accumulating gradients over its micro-batches. Every
   micro-batch loss is normalised by denominators of the whole minibatch (all ranks), so the
   micro-batch losses sum to the minibatch loss.

Log-probs are log_softmax(logits / temperature) at the response positions, in float32. Only
response tokens with loss_mask 1 train. Every rank receives the whole batch and derives the same
plan, so planning needs no communication.

CPU facts (ENVIRONMENT.md): gloo backend; DeepSpeed builds a shared-memory comm op on CPU at
process-group start (~23 s compile on first use) that only `inference_all_reduce` (tensor-parallel
inference) uses, never training, so it is switched off here at every world size.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from areal_sys.algorithms import LossDenominators, broadcast_to_tokens, build_algorithm
from areal_sys.attention import attention_implementation
from areal_sys.packing import (
    PackedMicroBatch,
    ffd_pack,
    from_sequences,
    pack_micro_batch,
    packing_stats,
    plan_minibatches,
    response_entropy,
    response_logprobs,
    to_padded,
)
from areal_sys.trajectory import Group
from workers.weight_sync import SyncGroup, TensorMeta, tensor_meta, write_safetensors

log = logging.getLogger(__name__)

CPU_CORES_ENV = "AREAL_SYS_CPU_CORES"  # comma-separated core ids this rank may use (CPU only)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


@dataclass
class TrainBatch:
    """The training view of a list of groups: one entry per trained sequence (batch order)."""

    prompts: list[list[int]]
    responses: list[list[int]]
    behav: list[torch.Tensor]  # [R_i] engine log-probs
    mask: list[torch.Tensor]  # [R_i] float 0/1
    adv: list[torch.Tensor]  # [R_i]
    names: list[str]
    group_ids: list[int]

    @property
    def lengths(self) -> list[int]:
        return [len(p) + len(r) for p, r in zip(self.prompts, self.responses, strict=True)]


def prepare_batch(groups: list[Group], estimator: Any) -> TrainBatch:
    """Advantages per group (over all its members), then one entry per non-empty response."""
    b = TrainBatch([], [], [], [], [], [], [])
    for g in groups:
        adv = estimator(torch.tensor(g.rewards, dtype=torch.float32))
        per_token = broadcast_to_tokens(adv, [len(t.response_ids) for t in g.trajectories])
        for k, (t, a) in enumerate(zip(g.trajectories, per_token, strict=True)):
            if not t.response_ids:
                continue
            b.prompts.append(list(t.prompt_ids))
            b.responses.append(list(t.response_ids))
            b.behav.append(torch.tensor(t.behav_logprobs, dtype=torch.float32))
            b.mask.append(torch.tensor(t.loss_mask, dtype=torch.float32))
            b.adv.append(a)
            b.names.append(f"{t.prompt_uid}/group{g.group_id}/sample{k}")
            b.group_ids.append(g.group_id)
    return b


class TrainerWorker:
    """One data-parallel trainer rank. Construct cheaply, then `setup()` (joins the process group
    and builds the engine), `train_step(...)` per policy version, `export_weights(...)` for weight
    sync, `save_hf(...)` for checkpoints, `shutdown()` at the end.
    """

    def __init__(
        self,
        model_path: str,
        *,
        trainer_cfg: dict,
        algo_cfg: dict,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str = "127.0.0.1",
        master_port: int = 29500,
        dtype: str = "float32",
        seed: int = 0,
        temperature: float = 1.0,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        self.model_path = model_path
        self.cfg = dict(trainer_cfg)
        self.algo = build_algorithm(algo_cfg)
        self.rank, self.world_size = rank, world_size
        self.master_addr, self.master_port = master_addr, master_port
        self.dtype, self.seed, self.temperature = dtype, seed, temperature
        self.engine: Any = None
        self._weight_group: SyncGroup | None = None

    # ----------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Join the process group (gloo on CPU, nccl on GPU) and build the ZeRO engine."""
        import deepspeed
        from transformers import AutoModelForCausalLM

        on_gpu = torch.cuda.is_available()
        local_rank = self.rank % torch.cuda.device_count() if on_gpu else 0
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK=str(local_rank),
            MASTER_ADDR=self.master_addr,
            MASTER_PORT=str(self.master_port),
        )
        if on_gpu:
            torch.cuda.set_device(local_rank)
        elif cores := os.environ.get(CPU_CORES_ENV):  # pinned by the controller (local CPU runs)
            ids = [int(c) for c in cores.split(",")]
            os.sched_setaffinity(0, ids)
            torch.set_num_threads(len(ids))
        if not on_gpu:  # the shm op serves only inference_all_reduce: skip its compile (module doc)
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.utils.logger.setLevel(logging.WARNING)
        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
        torch.manual_seed(self.seed)

        model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=torch.float32,
            attn_implementation=attention_implementation("cuda" if on_gpu else "cpu"),
        )
        if self.cfg["gradient_checkpointing"]:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=self.cfg["lr"],
            betas=tuple(self.cfg["adam_betas"]),
            weight_decay=self.cfg["weight_decay"],
            eps=self.cfg["adam_eps"],
        )
        ds_config = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            # the number of micro-batches varies per step: step() is the accumulation boundary
            "managed_gradient_accumulation": False,
            "gradient_clipping": self.cfg["grad_clip"],
            "zero_optimization": {"stage": self.cfg["zero_stage"]},
            "bf16": {"enabled": self.dtype == "bfloat16"},
            "fp16": {"enabled": self.dtype == "float16"},
            "steps_per_print": 2**31 - 1,
        }
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_config, dist_init_required=False
        )
        if self.rank == 0:
            log.info(
                "TrainerWorker: world_size=%d zero_stage=%d dtype=%s backend=%s; %s",
                self.world_size, self.cfg["zero_stage"], self.dtype,
                "nccl" if on_gpu else "gloo", self.algo.summary,
            )

    # ------------------------------------------------------------------------------ train step
    def train_step(self, groups: list[Group], step: int) -> dict[str, float]:
        """One policy update (version `step` → `step + 1`) on the whole batch; returns metrics."""
        if self.engine is None:
            raise RuntimeError("call setup() before train_step()")
        batch = prepare_batch(groups, self.algo.estimator)
        if not batch.prompts:
            raise ValueError("train_step got no response tokens to train on")
        lengths, budget = batch.lengths, self.cfg["max_tokens_per_microbatch"]
        plans = plan_minibatches(
            lengths, self.cfg["ppo_minibatches"], budget, self.world_size, batch.names,
            groups=batch.group_ids if self.cfg["keep_groups_together"] else None,
        )
        my_mbs = [[self._pack(batch, idx) for idx in plan[self.rank]] for plan in plans]
        whole = [[mb for plan in plans for mb in plan[r]] for r in range(self.world_size)]
        pstats = packing_stats(whole, lengths, budget)

        t0 = time.perf_counter()
        prox, sums = self._proximal_pass(batch, [mb for mbs in my_mbs for mb in mbs])
        t1 = time.perf_counter()
        lr = lr_at_step(
            step, lr=self.cfg["lr"], warmup_steps=self.cfg["warmup_steps"],
            total_steps=self.cfg["total_steps"], schedule=self.cfg["lr_schedule"],
        )
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        grad_norms = []
        for plan, mbs in zip(plans, my_mbs, strict=True):
            members = [i for bins in plan for mb in bins for i in mb]  # all ranks' sequences
            denom = LossDenominators.from_masks(batch.mask[i] for i in members)
            for mb in mbs:
                self._train_micro_batch(batch, mb, prox, denom, sums)
            pre_step_norm = self._plain_grad_norm()
            self.engine.step()
            norm = self.engine.get_global_grad_norm()
            grad_norms.append(float(norm) if norm is not None else pre_step_norm)
        t2 = time.perf_counter()

        s = self._all_reduce(sums)
        n_tok = max(s["n_loss_tokens"], 1.0)
        return {
            "loss": s["loss"] / len(plans),
            "entropy": s["entropy"] / n_tok,
            "approx_kl_behav": s["kl_behav"] / n_tok,
            "clip_frac": s["clipped"] / n_tok,
            "behav_weight_mean": s["behav_weight"] / n_tok,
            "behav_weight_max": s["behav_weight_max"],
            "behav_capped_frac": s["capped"] / n_tok,
            "grad_norm": sum(grad_norms) / len(grad_norms),
            "lr": float(lr),
            "n_tokens": float(sum(lengths)),
            "n_loss_tokens": s["n_loss_tokens"],
            "n_seqs": float(len(lengths)),
            "padding_waste": pstats.padding_waste,
            "rank_imbalance": pstats.rank_imbalance,
            "num_microbatches": float(pstats.num_microbatches),
            "num_minibatches": float(len(plans)),
            "proximal_time_s": t1 - t0,
            "train_time_s": t2 - t1,
            "tokens_per_s": sum(lengths) / max(t2 - t0, 1e-9),
        }

    @torch.no_grad()
    def compute_logprobs(self, groups: list[Group]) -> list[list[list[float]]]:
        """Log-probs (at `temperature`) of every response token under the current weights, packed,
        without gradient: one list per trajectory, nested like `groups`. Every rank computes all
        of them (ZeRO-3 forwards are collective: call it on every rank)."""
        trajs = [t for g in groups for t in g.trajectories]
        out: list[list[float]] = [[] for _ in trajs]
        live = [i for i, t in enumerate(trajs) if t.response_ids]
        self.engine.eval()
        budget = self.cfg["max_tokens_per_microbatch"]
        for bin_ in ffd_pack([trajs[i].length for i in live], budget):
            idx = [live[j] for j in bin_]
            mb = pack_micro_batch(
                [trajs[i].prompt_ids for i in idx], [trajs[i].response_ids for i in idx], idx
            ).to(self.engine.device)
            logp = response_logprobs(self._logits(mb), mb.target_ids, self.temperature)
            rows = to_padded(logp, mb).cpu()
            for s, i in enumerate(idx):
                out[i] = rows[s, : len(trajs[i].response_ids)].tolist()
        self.engine.train()
        flat = iter(out)
        return [[next(flat) for _ in g.trajectories] for g in groups]

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
        out = self.engine(
            input_ids=mb.input_ids,
            position_ids=mb.position_ids,
            attention_mask=None,  # with use_cache=False: block-diagonal mask from position_ids
            use_cache=False,
            logits_to_keep=mb.logit_index,
        )
        return out.logits[0]

    def _rows(self, values: list[torch.Tensor], mb: PackedMicroBatch) -> torch.Tensor:
        return from_sequences([values[i] for i in mb.seq_indices]).to(self.engine.device)

    @torch.no_grad()
    def _proximal_pass(
        self, batch: TrainBatch, mbs: list[PackedMicroBatch]
    ) -> tuple[list[torch.Tensor], dict[str, float]]:
        """π_prox for every sequence of this rank (weights before the update; other ranks'
        sequences stay empty), plus the entropy and KL numerators."""
        self.engine.eval()
        prox = [torch.zeros(0) for _ in batch.prompts]
        sums = dict.fromkeys(
            ("loss", "entropy", "kl_behav", "clipped", "behav_weight", "capped", "n_loss_tokens"),
            0.0,
        )
        sums["behav_weight_max"] = 0.0
        for mb in mbs:
            logits = self._logits(mb)
            if not mb.seq_indices:
                continue
            logp_rows = to_padded(response_logprobs(logits, mb.target_ids, self.temperature), mb)
            ent_rows = to_padded(response_entropy(logits, self.temperature), mb)
            for s, i in enumerate(mb.seq_indices):
                prox[i] = logp_rows[s, : len(batch.responses[i])].cpu()
            keep = self._rows(batch.mask, mb).bool()
            sums["entropy"] += float(ent_rows[keep].sum())
            sums["kl_behav"] += float((self._rows(batch.behav, mb) - logp_rows)[keep].sum())
            sums["n_loss_tokens"] += float(keep.sum())
        self.engine.train()
        return prox, sums

    def _train_micro_batch(
        self,
        batch: TrainBatch,
        mb: PackedMicroBatch,
        prox: list[torch.Tensor],
        denom: LossDenominators,
        sums: dict[str, float],
    ) -> None:
        logp = response_logprobs(self._logits(mb), mb.target_ids, self.temperature)
        if not mb.seq_indices:
            self.engine.backward(logp.sum() * 0.0)
            return
        mask = self._rows(batch.mask, mb)
        token_loss, stats = self.algo.policy_loss(
            to_padded(logp, mb),
            self._rows(prox, mb),
            self._rows(batch.behav, mb),
            self._rows(batch.adv, mb),
            mask,
        )
        loss = self.algo.aggregate(token_loss, mask, denom)
        # DeepSpeed averages gradients over data-parallel ranks; the global loss is their sum.
        self.engine.backward(loss * self.world_size)
        keep = mask.bool()
        sums["loss"] += float(loss.detach())
        for key in ("clipped", "behav_weight", "capped"):
            sums[key] += float(stats[key][keep].sum())
        if keep.any():
            sums["behav_weight_max"] = max(
                sums["behav_weight_max"], float(stats["behav_weight"][keep].max())
            )

    def _plain_grad_norm(self) -> float:
        """Gradient 2-norm before the step, for the one engine that does not report it (ZeRO
        stage 0 in fp32). That engine all-reduces in step(), so with several ranks this is the
        local norm. NaN for the other engines (they report the global norm after the step)."""
        if self.cfg["zero_stage"] != 0 or self.dtype != "float32":
            return float("nan")
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        if not grads:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])))

    def _all_reduce(self, sums: dict[str, float]) -> dict[str, float]:
        """Sum (max for `*_max`) the metric numerators over ranks; no-op for one rank."""
        if self.world_size == 1:
            return sums
        import torch.distributed as dist

        keys = sorted(sums)
        device = self.engine.device
        total = torch.tensor([0.0 if k.endswith("_max") else sums[k] for k in keys], device=device)
        peak = torch.tensor([sums[k] if k.endswith("_max") else 0.0 for k in keys], device=device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        return {k: float(peak[j] if k.endswith("_max") else total[j]) for j, k in enumerate(keys)}

    # --------------------------------------------------------------------------- weights out
    def _full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """HF-named full weights on rank 0 (None elsewhere), tied duplicates dropped (as HF saves
        them). Collective under ZeRO-3: every rank must call it."""
        if self.cfg["zero_stage"] == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            sd = self.engine.module.state_dict() if self.rank == 0 else None
        if sd is None:
            return None
        out: dict[str, torch.Tensor] = {}
        seen: set[tuple[int, tuple[int, ...]]] = set()
        for name, t in sd.items():
            key = (t.data_ptr(), tuple(t.shape))
            if key in seen:  # a tied weight (lm_head.weight = embed_tokens.weight)
                continue
            seen.add(key)
            out[name] = t.detach().to("cpu").contiguous()
        return out

    def export_weights(self, path: str) -> dict[str, float]:
        """`shm_file` sync: rank 0 writes the full HF-named weights as one safetensors file,
        atomically, so a reader never sees a partial file."""
        t0 = time.perf_counter()
        sd = self._full_state_dict()
        num_bytes = write_safetensors(sd, path) if sd is not None else 0
        self._barrier()
        return {"export_s": time.perf_counter() - t0, "num_bytes": float(num_bytes)}

    def weight_sync_endpoint(self) -> tuple[str, int]:
        """Where rank 0 hosts the `collective` group's store: this node's address, a free port."""
        import socket

        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def weight_meta(self) -> list[TensorMeta] | None:
        """(name, shape, dtype) of every exported weight on rank 0 (collective under ZeRO-3)."""
        sd = self._full_state_dict()
        return tensor_meta(sd) if sd is not None else None

    def init_weight_group(
        self, host: str, port: int, world_size: int, meta: list[TensorMeta],
        bucket_bytes: int, backend: str, timeout_s: float = 1800.0,
    ) -> bool:
        """Rank 0 joins the `collective` group as its rank 0, together with every rollout engine
        (they call `RolloutWorker.init_weight_group` at the same time). Other ranks do nothing."""
        if self.rank == 0:
            self._weight_group = SyncGroup(
                host, port, 0, world_size, meta,
                bucket_bytes=bucket_bytes, backend=backend, timeout_s=timeout_s,
            )
        return True

    def broadcast_weights(self) -> dict[str, float]:
        """`collective` sync: gather the full weights (every rank calls it) and broadcast them
        from rank 0 while the rollout engines receive (`RolloutWorker.update_weights(None, v)`)."""
        t0 = time.perf_counter()
        sd = self._full_state_dict()
        num_bytes = 0
        if sd is not None:
            if self._weight_group is None:
                raise RuntimeError("broadcast_weights before init_weight_group")
            num_bytes = self._weight_group.send(sd)
        self._barrier()
        return {"export_s": time.perf_counter() - t0, "num_bytes": float(num_bytes)}

    def save_hf(self, out_dir: str) -> None:
        """HF-format model + tokenizer in `out_dir` (rank 0), loadable by transformers and vLLM."""
        from transformers import AutoTokenizer

        sd = self._full_state_dict()
        if sd is not None:
            module = self.engine.module
            module.config.dtype = _DTYPES[self.dtype]
            module.save_pretrained(out_dir, state_dict=sd)
            AutoTokenizer.from_pretrained(self.model_path).save_pretrained(out_dir)
        self._barrier()

    def _barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def shutdown(self) -> None:
        """Release the engine and leave the process group. Goes through deepspeed.comm (not
        torch.distributed) so DeepSpeed drops its cached groups and a later setup() in the same
        process can join a new group."""
        if self.engine is None:
            return
        import deepspeed.comm as ds_dist

        self.engine.destroy()
        self.engine = None
        if ds_dist.is_initialized():
            ds_dist.destroy_process_group()
