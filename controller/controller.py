"""The single controller: admits prompts under the staleness gate, buffers scored groups, trains,
pushes weights. It runs in the Ray driver; every heavy operation is a call to an actor.

Filtering and dynamic sampling: each scored group goes through `Algorithm.filter`. A dropped group
never reaches the buffer; it leaves the staleness gate's `running` count (`on_reject`), so the gate
admits another prompt in its place and dropped groups never count toward a batch. Refills are
bounded per step: at most `max_oversample_rounds` extra rounds of B admissions, i.e. at most
R·B dropped groups while the trainer is at one version. Past that bound a group the filter would
drop is trained anyway (counted as `groups_filter_bypassed`): the batch is always B groups, no
step ever waits on a filter, and the staleness accounting is unchanged. Every dropped group is
written to `filtered.jsonl`, so every admitted prompt is either in the staleness audit (trained)
or there.

    admission loop (background):  while gate open: pick prompt -> rollout worker -> reward -> buffer
    scored group -> algorithm's filter: kept -> buffer; dropped -> slot freed, filtered.jsonl
    step loop:                    batch <- buffer (oldest first, staleness-feasible)
                                  [critic: values + GAE advantages]
                                  train on all trainer ranks (version v -> v+1) [+ critic update]
                                  push weights to every rollout worker (interrupting generation)
                                  [RPO: update the experience cache from the batch]
                                  open the gate for version v+1, log

RPO (`rpo.enabled`, algorithms/rpo.py): before training, one full response per train prompt fills
the experience cache (`rpo.cache_fill: pass`; `lazy`: a prompt's first visit is a full rollout).
Each admitted group then continues a prefix of its prompt's cached response and generates only the
suffix; after each step every trained group replaces its prompt's entry, ε-greedily.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from areal_sys.algorithms import build_algorithm
from areal_sys.algorithms.rpo import PartialPlan, RpoPlanner
from areal_sys.config import ExperimentConfig
from areal_sys.data.sampler import EpochSampler
from areal_sys.metrics import JsonlWriter, MetricsLogger, Timeline
from areal_sys.trajectory import Group, Trajectory
from controller import checkpoint
from controller.buffer import Buffer
from controller.evaluation import evaluate_prompts, score_trajectories
from controller.progress import log_due, progress_bar, step_line
from controller.recovery import Recovery
from controller.resume import Checkpointing
from controller.staleness import StalenessManager
from workers.batch import shaped_rewards


@dataclass(frozen=True)
class Prompt:
    uid: str
    ids: list[int]
    reference: str
    task: str


class Controller(Checkpointing, Recovery):
    def __init__(self, cfg: ExperimentConfig, actors: Any, train: list[Prompt],
                 held_out: list[Prompt], resume: Path | None = None) -> None:
        self.cfg = cfg
        self._resume = resume
        self._resume_state = checkpoint.load_state(resume) if resume is not None else None
        if self._resume_state is not None:  # drop what was written after the checkpoint
            checkpoint.truncate_files(cfg.run_dir, self._resume_state["files"])
        self.actors = actors
        self.train, self.held_out = train, held_out
        self.run_dir = Path(cfg.run_dir)
        self.sampler = EpochSampler(train, seed=cfg.seed, shuffle=cfg.data.shuffle)
        self.staleness = StalenessManager(cfg.controller.batch_size, cfg.controller.max_staleness)
        self.buffer = Buffer(cfg.controller.batch_size)
        self.metrics = MetricsLogger(self.run_dir, cfg.logging, config=cfg.model_dump(mode="json"))
        self.timeline = Timeline(self.run_dir / "timeline.jsonl")  # spans per worker
        self.audit = JsonlWriter(self.run_dir / "staleness.jsonl")
        self.filtered = JsonlWriter(self.run_dir / "filtered.jsonl")
        self.algo = build_algorithm(cfg.algorithm, max_new_tokens=cfg.rollout.max_new_tokens,
                                    rpo=cfg.rpo)
        self.rpo = (RpoPlanner(cfg.rpo, max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.seed)
                    if cfg.rpo.enabled else None)
        self._refill_budget = self.algo.max_oversample_rounds * cfg.controller.batch_size
        self._refills_left = self._refill_budget  # drops still allowed at this version
        self._counts = {"scored": 0, "filtered": 0, "bypassed": 0}  # since the last step record
        self.filtered_total = 0
        self.version = 0
        self._next_seq = 0
        self._load = [0] * len(actors.rollout)  # groups in flight per rollout worker
        self._inflight: dict[int, tuple[Prompt, int, int]] = {}  # seq: (prompt, admit v, deadline)
        self._init_recovery()
        self._failure: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- the step loop
    async def run(self) -> dict[str, Any]:
        self._failure = asyncio.get_running_loop().create_future()
        results: dict[str, Any] = {"algorithm": self.algo.summary}
        first_step = 0
        if self._resume is not None:
            first_step = results["resumed_from"] = await self.restore()
        elif self.cfg.eval.before_and_after:
            results["pass_rate_before"] = await self.evaluate("before")
        if self._resume is None and self.rpo is not None and self.cfg.rpo.cache_fill == "pass":
            results["rpo_cache_fill"] = await self.fill_cache()
        bar = progress_bar(self.cfg, first_step)
        admission = asyncio.create_task(self._admission_loop())
        gen_busy = (await self._gen_stats())["busy_s"]
        try:
            for step in range(first_step, self.cfg.trainer.total_steps):
                t0 = time.time()
                batch = await self._until_failure(self.buffer.take_batch(self.version))
                wait_s = time.time() - t0
                staleness = self._audit(step, batch)
                gen_before_train = await self._gen_stats()
                train = await self._train(batch, step)
                gen = await self._gen_stats()
                overlap = gen["tokens_generated"] - gen_before_train["tokens_generated"]
                sync = await self._push_weights(step + 1)
                if self.rpo is not None:
                    self._update_cache(batch)
                record = self._step_record(step, batch, staleness, train, sync, overlap, wait_s, t0)
                record["gen_busy_s"] = gen["busy_s"] - gen_busy
                gen_busy = gen["busy_s"]
                self.metrics.write(record)
                if self.cfg.trainer.save_every and (step + 1) % self.cfg.trainer.save_every == 0:
                    await self.save_checkpoint()
                if self.cfg.eval.every and (step + 1) % self.cfg.eval.every == 0:
                    await self.evaluate(f"step_{step + 1}")
                bar.update(1)
                bar.set_postfix(reward=f"{record['reward_mean']:.3f}", stale=staleness,
                                tok_s=f"{record['tokens_per_s']:.0f}")
                if log_due(step, self.cfg.logging.log_every, self.cfg.trainer.total_steps):
                    bar.write(step_line(record, self.cfg.trainer.total_steps))
        finally:
            bar.close()
            admission.cancel()
            await self._drain()
        if self.cfg.eval.before_and_after:
            results["pass_rate_after"] = await self.evaluate("after")
            if "pass_rate_before" not in results:  # resumed: the first attempt measured it
                results["pass_rate_before"] = self._pass_rate_before()
        results["steps"] = self.cfg.trainer.total_steps
        results["groups_filtered"] = self.filtered_total
        return results

    # ---------------------------------------------------------------- admission and rollout
    async def _admission_loop(self) -> None:
        limit = self.cfg.rollout.max_concurrent_groups * len(self.actors.rollout)
        while True:
            while self.staleness.can_admit() and self.staleness.running < limit:
                prompt = self.sampler.next()
                seq, self._next_seq = self._next_seq, self._next_seq + 1
                self._start(seq, prompt, self.staleness.on_admit(), self.staleness.deadline())
            await self.staleness.wait_for_change()

    def _start(self, seq: int, prompt: Prompt, admit_version: int, deadline: int) -> None:
        """Launch the rollout of an admitted group (no await: checkpoints see it atomically)."""
        self.buffer.on_admit(seq, deadline)
        self._inflight[seq] = (prompt, admit_version, deadline)
        task = asyncio.create_task(self._rollout(seq, prompt, admit_version))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _rollout(self, seq: int, prompt: Prompt, admit_version: int) -> None:
        worker = min(range(len(self._load)), key=self._load.__getitem__)
        self._load[worker] += 1
        plan: PartialPlan | None = self.rpo.plan(prompt.uid) if self.rpo is not None else None
        try:
            trajs = await self.call_rollout(
                worker, "generate_group", group_id=seq, prompt_uid=prompt.uid,
                prompt_ids=prompt.ids,
                n=self.cfg.rollout.n_samples,
                max_new_tokens=plan.budget if plan else self.cfg.rollout.max_new_tokens,
                temperature=self.cfg.rollout.temperature, top_p=self.cfg.rollout.top_p,
                task=prompt.task, reference=prompt.reference,
                **(_prefix_args(plan) if plan is not None else {}),
            )
        finally:
            self._load[worker] -= 1
        self.timeline.trajectories(trajs, "generate", group_id=seq)
        await self._score(trajs, group_id=seq)
        group = Group(seq, prompt.uid, trajs, admit_version)
        del self._inflight[seq]  # buffered or filtered: from here on, a checkpoint holds it there
        if self._keep(group):
            self.buffer.put(seq, group)
            self.staleness.on_accept()

    def _keep(self, group: Group) -> bool:
        """The algorithm's filter on a scored group (module doc). A dropped group leaves the
        buffer and the gate (its slot is refilled) and is recorded in filtered.jsonl."""
        self._counts["scored"] += 1
        if self.algo.filter(torch.tensor(group.rewards, dtype=torch.float32)):
            return True
        if self._refills_left <= 0:  # the step's refill bound is reached: train it anyway
            self._counts["bypassed"] += 1
            return True
        self._refills_left -= 1
        self._counts["filtered"] += 1
        self.filtered_total += 1
        self.buffer.drop(group.group_id)
        self.staleness.on_reject()
        self.filtered.write({
            "version": self.version, "prompt_uid": group.prompt_uid, "group_id": group.group_id,
            "admit_version": group.admit_version, "rewards": group.rewards,
        })
        return False

    async def _score(self, trajs: list[Trajectory], **span: Any) -> None:
        """Rewards from the reward service, timed as one `reward` span with fields `span`."""
        with self.timeline.span("reward", "reward", **span):
            await score_trajectories(self.call_reward, trajs)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        if self._failure is not None and not self._failure.done():
            self._failure.set_exception(task.exception())  # type: ignore[arg-type]

    async def _until_failure(self, coro: Any) -> Any:
        """Await `coro`, but raise at once if a rollout task failed meanwhile."""
        assert self._failure is not None
        work = asyncio.ensure_future(coro)
        await asyncio.wait([work, self._failure], return_when=asyncio.FIRST_COMPLETED)
        if self._failure.done():
            work.cancel()
            self._failure.result()
        return work.result()

    async def _drain(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---------------------------------------------------------------- training and weight sync
    async def _train(self, batch: list[Group], step: int) -> dict[str, float]:
        with self.timeline.span("trainer", "train", step=step):
            return await self._update(batch, step)

    async def _update(self, batch: list[Group], step: int) -> dict[str, float]:
        trainers, critic = self.actors.trainers, self.actors.critic
        if critic is None:
            refs = [t.train_step.remote(batch, step) for t in trainers]
            return (await self.call_trainers(asyncio.gather(*refs)))[0]
        # PPO with a critic: values and GAE in the critic (workers/critic.py), then the policy
        # update (on the critic's advantages) and the value update run at the same time.
        ref_logp = None
        if self.algo.kl_in_reward:
            ref_logp = await self.call_trainers(trainers[0].reference_logprobs.remote(batch))
        adv = await self.call_trainers(critic.prepare.remote(batch, ref_logp))
        refs = [t.train_step.remote(batch, step, adv) for t in trainers]
        *policy, value = await self.call_trainers(
            asyncio.gather(*refs, critic.update.remote(step)))
        return {**policy[0], **value}

    async def _push_weights(self, version: int) -> dict[str, float]:
        t0 = time.time()
        trainers, rollout = self.actors.trainers, self.actors.rollout
        if self.cfg.trainer.weight_sync == "collective":  # send and receive at the same time
            sends = [t.broadcast_weights.remote() for t in trainers]
            loads = [w.update_weights.remote(None, version) for w in rollout]
            loads = (await asyncio.gather(*sends, *loads))[len(sends):]
        else:
            path = f"{self.actors.sync_dir}/weights.safetensors"
            await self.call_trainers(asyncio.gather(*[t.export_weights.remote(path)
                                                      for t in trainers]))
            self._weights_file = (path, version)  # what a restarted rollout worker loads
            loads = await asyncio.gather(*[self.call_rollout(i, "update_weights", path, version)
                                           for i in range(len(rollout))])
        self.version = version
        self._refills_left = self._refill_budget
        self.staleness.set_version(version)
        self.timeline.add("sync", "sync", t0, time.time(), step=version - 1, version=version)
        return {"sync_s": time.time() - t0,
                "interrupted": float(sum(r.get("interrupted", 0) for r in loads))}

    async def _gen_stats(self) -> dict[str, float]:
        """Rollout workers' `tokens_generated` and `busy_s` (generation seconds), summed."""
        keys = ("tokens_generated", "busy_s")
        stats = await asyncio.gather(*[w.stats.remote() for w in self.actors.rollout],
                                     return_exceptions=True)
        # a dead (restarting) worker counts 0; a restarted one counts from 0 again
        return {k: sum(s[k] for s in stats if isinstance(s, dict)) for k in keys}

    # ---------------------------------------------------------------- RPO experience cache
    async def fill_cache(self) -> dict[str, float]:
        """One full response per train prompt with the current policy (not filtered for
        correctness), into the experience cache."""
        assert self.rpo is not None
        from tqdm import tqdm

        t0, before = time.time(), await self._gen_stats()
        workers, window = self.actors.rollout, 64 * len(self.actors.rollout)
        bar = tqdm(total=len(self.train), desc="rpo cache fill", unit="prompt",
                   disable=not self.cfg.logging.progress_bar, dynamic_ncols=True)
        for start in range(0, len(self.train), window):
            chunk = self.train[start:start + window]
            groups = await asyncio.gather(*[
                self.call_rollout(
                    i % len(workers), "generate_group", group_id=-1 - start - i,
                    prompt_uid=p.uid, prompt_ids=p.ids, n=1,
                    max_new_tokens=self.cfg.rollout.max_new_tokens,
                    temperature=self.cfg.rollout.temperature, top_p=self.cfg.rollout.top_p,
                    task=p.task, reference=p.reference)
                for i, p in enumerate(chunk)
            ])
            self.timeline.trajectories([t for (t,) in groups], "cache_fill")
            for p, (t,) in zip(chunk, groups, strict=True):
                self.rpo.fill(p.uid, t.response_ids, t.behav_logprobs, t.versions)
            bar.update(len(chunk))
        bar.close()
        after = await self._gen_stats()
        return {"seconds": time.time() - t0, "entries": float(len(self.rpo.cache)),
                "tokens": after["tokens_generated"] - before["tokens_generated"]}

    def _update_cache(self, batch: list[Group]) -> None:
        """ε-greedy cache update from every trained group (on its shaped rewards); checkpoints
        save the cache."""
        assert self.rpo is not None
        for g in batch:
            shaped = shaped_rewards(self.algo, g)
            self.rpo.update(g.prompt_uid,
                            [(t.response_ids, t.behav_logprobs, t.versions)
                             for t in g.trajectories], shaped.tolist())

    def close(self) -> None:
        """Finish the metric sinks (W&B's run, TensorBoard's writer) and the timeline; called
        once the run is over and before Ray shuts down, so W&B's run ends with it, not at exit."""
        self.metrics.close()
        self.timeline.close()

    # ---------------------------------------------------------------- audit, metrics, evaluation
    def _audit(self, step: int, batch: list[Group]) -> int:
        """One staleness line per trained trajectory; returns the batch's max staleness."""
        worst = 0
        for group in batch:
            for t in group.trajectories:
                self.audit.write({
                    "step": step, "prompt_uid": t.prompt_uid, "group_id": group.group_id,
                    "trainer_version": self.version, "admit_version": group.admit_version,
                    "min_token_version": t.min_version, "max_token_version": t.max_version,
                    "num_interrupts": t.num_interrupts, "reward": t.reward,
                    "response_len": len(t.response_ids), "prefix_len": t.prefix_len,
                    "prefix_min_version": min(t.versions[: t.prefix_len], default=None),
                })
                worst = max(worst, self.version - t.min_version)
        return worst

    def _step_record(self, step: int, batch: list[Group], staleness: int, train: dict[str, float],
                     sync: dict[str, float], overlap: int, wait_s: float, t0: float
                     ) -> dict[str, Any]:
        trajs = [t for g in batch for t in g.trajectories]
        step_time = time.time() - t0
        tokens = sum(g.num_tokens_generated for g in batch)
        rpo = self.rpo.metrics() if self.rpo is not None else {}
        counts, self._counts = self._counts, dict.fromkeys(self._counts, 0)
        filtered_frac = counts["filtered"] / max(counts["scored"], 1)
        return {
            "step": step, "version": self.version,
            "reward_mean": sum(t.reward for t in trajs) / len(trajs),
            "reward_fail_frac": sum(not t.reward_ok for t in trajs) / len(trajs),
            "response_len_mean": sum(len(t.response_ids) for t in trajs) / len(trajs),
            "tokens_generated": tokens, "tokens_per_s": tokens / max(step_time, 1e-9),
            "gen_tokens_per_sample": tokens / len(trajs),
            "prefix_len_mean": sum(t.prefix_len for t in trajs) / len(trajs),
            "overlap_tokens": overlap, "staleness_max": staleness,
            "step_time_s": step_time, "wait_s": wait_s,
            "buffered": len(self.buffer), "in_flight": self.buffer.in_flight,
            "groups_scored": counts["scored"], "groups_filtered": counts["filtered"],
            "groups_filter_bypassed": counts["bypassed"], "filtered_frac": filtered_frac,
            "train/filtered_frac": filtered_frac,
            **sync, **rpo, **{f"train/{k}": v for k, v in train.items()},
        }

    async def evaluate(self, tag: str) -> float:
        """Held-out figures (controller/evaluation.py): `eval.k` samples per problem at
        `eval.temperature`, a line in eval.jsonl; returns the pass rate (avg@k)."""
        figures, trajs = await evaluate_prompts(
            self.held_out[: self.cfg.eval.num_problems], k=self.cfg.eval.k,
            num_workers=len(self.actors.rollout), generate=self.call_rollout,
            score=lambda ts: self._score(ts, version=self.version),
            max_new_tokens=self.cfg.rollout.max_new_tokens,
            temperature=self.cfg.eval.temperature, correct_reward=self.cfg.reward.correct_reward,
            progress=self.cfg.logging.progress_bar,
        )
        self.timeline.trajectories(trajs, "eval", version=self.version)
        writer = JsonlWriter(self.run_dir / "eval.jsonl")
        writer.write({"tag": tag, "version": self.version, **figures})
        writer.close()
        self.metrics.log({f"eval/{k}": v for k, v in figures.items() if k not in ("k", "n")},
                         step=self.version)
        return figures["pass_rate"]


def _prefix_args(plan: PartialPlan) -> dict[str, Any]:
    return {"prefix_ids": plan.prefix_ids, "prefix_logprobs": plan.prefix_logprobs,
            "prefix_versions": plan.prefix_versions}
