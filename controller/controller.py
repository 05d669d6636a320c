"""The single controller: admits prompts under the staleness gate, buffers scored groups, trains,
pushes weights. It runs in the Ray driver; every heavy operation is a call to an actor.

    admission (background):  while the gate is open: prompt -> rollout worker -> reward, scored
                             with the prompt's task data -> filter -> buffer or filtered.jsonl
    step loop:               batch <- buffer (oldest first, staleness-feasible)
                             train on all trainer ranks (version v -> v+1) [critic: GAE first]
                             push weights to every rollout worker (interrupting generation)
                             [RPO: update the experience cache from the batch]
                             log; checkpoint and evaluate when due

Where each part lives: admission, gate, buffer and filter in controller/admission.py; the actor
calls, with worker recovery, in controller/actors.py; checkpoint save and restore in
controller/checkpoint.py; the audit and metric records in controller/records.py; the RPO cache in
controller/rpo_cache.py. The admission loop and every group's rollout are tasks of one
`asyncio.TaskGroup` around the step loop: a failing rollout stops the steps at once, a failing
step cancels the rollouts, and the run ends with the failure itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from areal_sys.algorithms import Algorithm
from areal_sys.algorithms.rpo import RpoPlanner
from areal_sys.config import ExperimentConfig
from areal_sys.metrics import JsonlWriter, MetricsLogger, Timeline, read_jsonl
from areal_sys.trajectory import Prompt, Trajectory
from controller import checkpoint, records, rpo_cache
from controller.actors import Events, Reward, RolloutPool, Trainers, bounded
from controller.admission import Admission, Admitted
from controller.evaluation import append_eval_line, evaluate_prompts, step_checker
from controller.progress import eval_line, log_due, progress_bar, step_line
from controller.runtime import join_weight_group
from controller.startup import Startup

__all__ = ["Controller", "Prompt"]


class _StepsDone(Exception):
    """Raised after the last step to end the TaskGroup (cancelling the rollouts still running)."""


class Controller:
    """One run of `algo` (built once, `build_algorithm`): `actors` holds the actor handles
    (`rollout`, `trainers`, `critic`, `reward`, `sync_dir`; controller/runtime.py `Actors`),
    `put` stores a batch once for all trainer ranks (`ray.put`), `resume` is the checkpoint to
    continue from, `startup` gets the first step's end (controller/startup.py)."""

    def __init__(self, cfg: ExperimentConfig, algo: Algorithm, actors: Any, train: list[Prompt],
                 held_out: list[Prompt], *, put: Callable[[Any], Any],
                 resume: Path | None = None, startup: Startup | None = None) -> None:
        self.cfg, self.train, self.held_out, self.startup = cfg, train, held_out, startup
        self.run_dir, self.sync_dir, self.resume = Path(cfg.run_dir), actors.sync_dir, resume
        self.resume_state = checkpoint.load_state(resume) if resume is not None else None
        if self.resume_state is not None:  # drop what was written after the checkpoint
            checkpoint.truncate_files(self.run_dir, self.resume_state["files"])
        self.metrics = MetricsLogger(self.run_dir, cfg.logging, config=cfg.model_dump(mode="json"))
        self.timeline = Timeline(self.run_dir / "timeline.jsonl")  # spans per worker
        self.audit = JsonlWriter(self.run_dir / "staleness.jsonl")
        self.algo = algo
        rpo = (RpoPlanner(cfg.rpo, max_new_tokens=cfg.rollout.max_new_tokens, seed=cfg.seed)
               if cfg.rpo.enabled else None)
        self.admission = Admission(cfg, train, self.algo, rpo,
                                   JsonlWriter(self.run_dir / "filtered.jsonl"))
        self.events = events = Events(self.run_dir / "events.jsonl", lambda: self.admission.version)
        self.rollout = RolloutPool(actors.rollout, weight_sync=cfg.trainer.weight_sync,
                                   events=events, rejoin=self._rejoin,
                                   restart_timeout_s=cfg.controller.restart_timeout_s)
        self.reward = Reward(actors.reward, max_restarts=cfg.controller.max_worker_restarts,
                             events=events)
        self.trainers = Trainers(actors.trainers, actors.critic, put=put, events=events,
                                 kl_in_reward=self.algo.kl_in_reward)
        spread = actors.placement.spread() if actors.placement is not None else None
        if spread is not None:  # a run over several nodes: which actor on which node
            events("placement", **spread)

    @property
    def version(self) -> int:
        return self.admission.version

    async def run(self) -> dict[str, Any]:
        """Restore or evaluate, fill the RPO cache, train alongside the rollouts, evaluate."""
        results: dict[str, Any] = {"algorithm": self.algo.summary}
        first_step, rpo = 0, self.admission.rpo
        if self.resume is not None and self.resume_state is not None:
            first_step = results["resumed_from"] = await checkpoint.restore(
                self.resume, self.resume_state, self.admission, self.trainers, self._push_weights)
        elif self.cfg.eval.before_and_after:
            results["pass_rate_before"] = await self.evaluate("before")
        if self.resume is None and rpo is not None and self.cfg.rpo.cache_fill == "pass":
            results["rpo_cache_fill"] = await rpo_cache.fill(self.cfg, rpo, self.rollout,
                                                             self.train, self.timeline)
        bar = progress_bar(self.cfg, first_step)
        gen_busy = (await self.rollout.stats())["busy_s"]
        try:
            async with asyncio.TaskGroup() as rollouts:
                rollouts.create_task(self._admit(rollouts))
                for step in range(first_step, self.cfg.trainer.total_steps):
                    gen_busy = await self._step(step, bar, gen_busy)
                raise _StepsDone
        except BaseExceptionGroup as group:
            _raise_failure(group)
        finally:
            bar.close()
        if self.cfg.eval.before_and_after:
            results["pass_rate_after"] = await self.evaluate("after")
            if "pass_rate_before" not in results:  # resumed: the first attempt measured it
                results["pass_rate_before"] = _pass_rate_before(self.run_dir)
        results["steps"] = self.cfg.trainer.total_steps
        results["groups_filtered"] = self.admission.filtered_total
        return results

    async def _admit(self, rollouts: asyncio.TaskGroup) -> None:
        """Start a rollout for each group the gate admits, again whenever it may admit more."""
        while True:
            for admitted in self.admission.admit():
                rollouts.create_task(self._rollout(admitted))
            await self.admission.wait_for_change()

    async def _rollout(self, a: Admitted) -> None:
        """Generate the group, score it with its prompt's task data, hand it to admission."""
        r = self.cfg.rollout
        trajs = await self.rollout.generate_group(
            a.prompt, group_id=a.seq, n=r.n_samples, max_new_tokens=r.max_new_tokens,
            temperature=r.temperature, top_p=r.top_p, plan=self.admission.plan(a.prompt))
        self.timeline.trajectories(trajs, "generate", group_id=a.seq)
        await self._score([(a.prompt, t) for t in trajs], group_id=a.seq)
        self.admission.complete(a, trajs)

    async def _score(self, pairs: list[tuple[Prompt, Trajectory]], **span: Any) -> None:
        """Rewards from the reward actor, timed as one `reward` span with fields `span`."""
        with self.timeline.span("reward", "reward", **span):
            await self._bounded(self.reward.score(pairs), f"scoring {len(pairs)} responses",
                                "reward_timeout_s")

    async def _step(self, step: int, bar: Any, gen_busy: float) -> float:
        """Train one batch, push the weights, log; returns the engines' busy seconds so far."""
        t0 = time.time()
        batch = await self.admission.take_batch()
        wait_s = time.time() - t0
        staleness = records.audit(self.audit, step, self.version, batch)
        at_train = asyncio.ensure_future(self.rollout.stats())  # sent as training starts
        async with self.rollout.weights_lock:  # a restarted engine rejoins before or after
            with self.timeline.span("trainer", "train", step=step):
                train = await self._bounded(self.trainers.train(batch, step),
                                            f"training step {step}", "train_timeout_s")
            sync, loads = await self._push_weights(step + 1)
        gen = {k: sum(r.get(k, 0.0) for r in loads) for k in ("tokens_generated", "busy_s")}
        rpo = self.admission.rpo
        if rpo is not None:
            rpo_cache.update(rpo, self.algo, batch, self.cfg.algorithm.success_threshold)
        record = records.step_record(
            step, self.version, batch, staleness=staleness, train=train, sync=sync,
            counts=self.admission.take_counts(), rpo=rpo.metrics() if rpo is not None else {},
            overlap=gen["tokens_generated"] - (await at_train)["tokens_generated"],
            gen_busy_s=gen["busy_s"] - gen_busy, wait_s=wait_s, t0=t0,
            buffered=len(self.admission.buffer), in_flight=self.admission.buffer.in_flight)
        if self.cfg.rollout.episode.multi_turn:
            record |= records.episode_metrics(batch)
        self.metrics.write(record)
        if self.startup is not None:
            self.startup.mark("first_step")
        if self.cfg.trainer.save_every and (step + 1) % self.cfg.trainer.save_every == 0:
            await checkpoint.save(self.run_dir, self.admission, self.trainers,
                                  self.cfg.trainer.keep_last)
        if self.cfg.eval.every and (step + 1) % self.cfg.eval.every == 0:
            await self.evaluate(f"step_{step + 1}")
        bar.update(1)
        bar.set_postfix(reward=f"{record['reward_mean']:.3f}", stale=staleness,
                        tok_s=f"{record['tokens_per_s']:.0f}",
                        sync=f"{record.get('sync_s', 0.0):.2f}")
        if log_due(step, self.cfg.logging.log_every, self.cfg.trainer.total_steps):
            bar.write(step_line(record, self.cfg.trainer.total_steps))
        return gen["busy_s"]

    async def _push_weights(self, version: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Every engine loads `version`; the gate opens for it. Returns the sync figures and each
        engine's answer (load figures and generation counters, workers/rollout.py)."""
        t0 = time.time()
        loads = await self._bounded(self._sync(version), f"weight sync to version {version}",
                                    "weight_sync_timeout_s")
        self.admission.set_version(version)
        self.timeline.add("sync", "sync", t0, time.time(), step=version - 1, version=version)
        return {"sync_s": time.time() - t0,
                "interrupted": float(sum(r.get("interrupted", 0) for r in loads))}, loads

    async def _sync(self, version: int) -> list[dict[str, Any]]:
        if self.cfg.trainer.weight_sync == "collective":  # send and receive at the same time
            live = self.rollout.live()  # a dead engine rejoins once restarted (actors.py)
            sent, loads = await asyncio.gather(self.trainers.broadcast_weights(only=live),
                                               self.rollout.update_weights(None, version, live))
            for worker, error in sent.get("failed", {}).items():  # it rejoins once restarted
                self.events("weight_sync_failed", worker=worker, error=error)
            return loads
        path = f"{self.sync_dir}/weights.safetensors"
        await self.trainers.export_weights(path)
        return await self.rollout.update_weights(path, version)

    async def _rejoin(self, i: int) -> None:
        """Rollout worker `i`, restarted (`collective` sync): a new weight-sync group with trainer
        rank 0 and the current weights sent to it alone. Runs under `weights_lock`, so the
        trainer's weights are those of `self.version`."""
        t0 = time.time()

        async def join() -> None:
            metas = await asyncio.gather(*[t.weight_meta.remote() for t in self.trainers.handles])
            await join_weight_group(self.cfg, self.trainers.handles[0], self.rollout.handles[i],
                                    i, metas[0])
            await asyncio.gather(self.trainers.broadcast_weights(only=[i]),
                                 self.rollout.handles[i].update_weights.remote(None, self.version))

        await self._bounded(join(), f"weight sync of restarted rollout worker {i}",
                            "weight_sync_timeout_s")
        self.events("weight_group_rejoined", worker=i, seconds=round(time.time() - t0, 2))

    def _bounded(self, call: Any, what: str, setting: str) -> Any:
        """`call` under its `controller.SETTING` limit (controller/actors.py `bounded`)."""
        return bounded(call, getattr(self.cfg.controller, setting), what,
                       f"controller.{setting}", self.events)

    async def evaluate(self, tag: str) -> float:
        """Held-out figures (controller/evaluation.py): `eval.k` samples per problem at
        `eval.temperature`, a line in eval.jsonl; returns the pass rate (avg@k)."""
        figures, trajs = await evaluate_prompts(
            self.held_out[: self.cfg.eval.num_problems], k=self.cfg.eval.k, rollout=self.rollout,
            score=lambda pairs: self._score(pairs, version=self.version),
            max_new_tokens=self.cfg.rollout.max_new_tokens,
            temperature=self.cfg.eval.temperature, correct_reward=self.cfg.reward.correct_reward,
            progress=self.cfg.logging.progress_bar, step_errors=step_checker(self.cfg),
            tool_use=self.cfg.rollout.episode.multi_turn)
        self.timeline.trajectories(trajs, "eval", version=self.version)
        append_eval_line(self.run_dir, {"tag": tag, "version": self.version, **figures})
        print(eval_line(tag, figures), flush=True)
        self.metrics.log({f"eval/{k}": v for k, v in figures.items()
                          if k not in ("k", "n") and not isinstance(v, list)}, step=self.version)
        return figures["pass_rate"]

    def close(self) -> None:
        """Finish the metric sinks (W&B's run, TensorBoard's writer) and the timeline; called
        once the run is over and before Ray shuts down, so W&B's run ends with it, not at exit."""
        self.metrics.close()
        self.timeline.close()


def _raise_failure(group: BaseExceptionGroup) -> None:
    """The first failure of the steps or of a rollout, as itself (the CLI tells them apart)."""
    errors = [e for e in group.exceptions if not isinstance(e, _StepsDone)]
    if errors:
        raise errors[0] from None


def _pass_rate_before(run_dir: Path) -> float | None:
    """The 'before' pass rate of the first attempt of a resumed run (eval.jsonl)."""
    path = run_dir / "eval.jsonl"
    rows = [r for r in read_jsonl(path) if r.get("tag") == "before"] if path.exists() else []
    return rows[0]["pass_rate"] if rows else None
