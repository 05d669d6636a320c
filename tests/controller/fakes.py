"""Fake actors that drive the REAL controller (controller/controller.py) without Ray, vLLM or
DeepSpeed: the fast tests in tests/controller/ and benchmarks/controller_throughput.py.

Each fake is a plain object behind `FakeHandle`, which gives it a Ray actor handle's shape:
`handle.method.remote(*args)` starts the method as an asyncio task (the fake ObjectRef, awaitable
any number of times), and an argument that is such a task is awaited first, as Ray resolves
ObjectRef arguments. So the controller's real clients (controller/actors.py) run unchanged.

- `FakeRollout`: generates `response_tokens` tokens per sample, one per turn of the event loop,
  each carrying the loaded weight version; `kill()` makes it die as a Ray actor does (in-flight
  calls fail with ActorDiedError; the restarted actor answers EngineNotStarted until `start()`,
  and with `collective` sync has no weight-sync group until `init_weight_group`).
- `FakeReward`: reward 1 (`correct_reward`) for the response "1", else 0 (`wrong_reward`); records
  every item it graded.
- `FakeTrainer` / `FakeCritic`: record their calls in a shared `calls` log and return at once
  (after `train_ticks` turns of the loop, during which generation may go on).
"""

from __future__ import annotations

import asyncio
import inspect
import random
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from areal_sys.config import ExperimentConfig, load_config
from areal_sys.trajectory import Group, Prompt, Trajectory


class FakeHandle:
    """A Ray actor handle over `obj` (module doc)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.obj, name)

        def remote(*args: Any, **kw: Any) -> asyncio.Future[Any]:
            return asyncio.ensure_future(_resolved_call(method, args, kw))

        return SimpleNamespace(remote=remote)


async def _resolved_call(method: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    args = tuple([await a if isinstance(a, asyncio.Future) else a for a in args])
    kw = {k: await v if isinstance(v, asyncio.Future) else v for k, v in kw.items()}
    out = method(*args, **kw)
    return await out if inspect.isawaitable(out) else out


class Activity:
    """What every fake saw, shared: the ordered call log and the tokens generated so far."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.tokens = 0
        self.killed_on: set[int] = set()  # groups a worker died on (each kills one worker once)


class FakeRollout:
    def __init__(self, worker_id: int, activity: Activity, *, response_tokens: int = 4,
                 varied: bool = False, seed: int = 0) -> None:
        self.worker_id, self.activity = worker_id, activity
        self.response_tokens, self.seed = response_tokens, seed
        self.varied = varied  # response lengths 1..response_tokens by group: any finish order
        self.version, self.tokens, self.busy_s = 0, 0, 0.0
        self.started = True
        self.joined = True  # in its `collective` weight-sync group (made before the run starts)
        self.incarnation = 0
        self.loaded: list[tuple[str | None, int]] = []
        self.requests: list[dict[str, Any]] = []  # every generate_group call's arguments
        self.kill_on_group: int | None = None  # die while generating this group (once, and
        # only the first worker generating it)
        self.error_on_group: int | None = None  # fail this group with an engine error
        self.never_placed = False  # once killed, Ray never places it again (`_placed`)

    def _check(self) -> None:
        if not self.started:
            from ray.exceptions import RayTaskError

            from workers.engine_start import EngineNotStarted

            cause = EngineNotStarted(f"rollout worker {self.worker_id}: call start() first")
            raise RayTaskError("RolloutWorker", "traceback", cause)

    def kill(self) -> None:
        """Die as a Ray actor with restarts left: calls in flight fail, the restarted actor
        has no engine and counts from zero."""
        self.incarnation += 1
        self.started, self.version, self.tokens, self.busy_s = False, 0, 0, 0.0
        self.joined = False
        self.loaded.append(("died", -1))

    async def init_weight_group(self, host: str, port: int, rank: int, world_size: int,
                                **kw: Any) -> bool:
        self._check()
        assert (rank, world_size) == (1, 2)
        self.joined = True
        return True

    async def _placed(self) -> None:
        if self.never_placed and self.incarnation:  # no node can host it again: a call waits
            await asyncio.Event().wait()

    async def start(self) -> None:
        await self._placed()
        self.started = True

    async def generate_group(self, *, group_id: int, prompt_uid: str, prompt_ids: list[int],
                             n: int, max_new_tokens: int, temperature: float = 1.0,
                             top_p: float = 1.0, prefix_ids: list[int] | None = None,
                             prefix_logprobs: list[float] | None = None,
                             prefix_versions: list[int] | None = None) -> list[Trajectory]:
        from ray.exceptions import ActorDiedError

        self._check()
        if self.error_on_group == group_id:
            raise ValueError(f"fake engine error on group {group_id}")
        self.requests.append({"group_id": group_id, "prompt_uid": prompt_uid, "n": n,
                              "max_new_tokens": max_new_tokens, "prefix_ids": prefix_ids})
        mine = self.incarnation
        prefix = list(prefix_ids or [])
        rng = random.Random(self.seed * 1_000_003 + group_id)
        k = min(rng.randint(1, self.response_tokens) if self.varied else self.response_tokens,
                max_new_tokens)
        versions: list[list[int]] = [[] for _ in range(n)]
        for step in range(k):
            await asyncio.sleep(0)  # one token per sample per turn of the loop
            if self.kill_on_group == group_id and step == k // 2 and (
                    group_id not in self.activity.killed_on):
                self.kill_on_group = None
                self.activity.killed_on.add(group_id)
                self.kill()
            if self.incarnation != mine:
                raise ActorDiedError()
            for v in versions:
                v.append(self.version)
            self.tokens += n
            self.activity.tokens += n
        return [Trajectory(
            prompt_uid=prompt_uid, group_id=group_id, prompt_ids=list(prompt_ids),
            response_ids=prefix + [5] * k, behav_logprobs=list(prefix_logprobs or []) + [-0.5] * k,
            versions=list(prefix_versions or []) + versions[i], loss_mask=[1] * (len(prefix) + k),
            prefix_len=len(prefix), response_text=str(rng.randint(0, 1)),
            worker_id=self.worker_id) for i in range(n)]

    async def update_weights(self, path: str | None, version: int) -> dict[str, float]:
        self._check()
        if path is None and not self.joined:  # as the real engine's receive_weights
            raise RuntimeError("receive_weights before init_weight_group")
        self.version = version
        self.loaded.append((path, version))
        return {"version": version, "interrupted": 0, "tokens_generated": float(self.tokens),
                "busy_s": self.busy_s}

    async def stats(self) -> dict[str, float]:
        await self._placed()
        return {"tokens_generated": float(self.tokens), "busy_s": self.busy_s}


class FakeReward:
    def __init__(self, correct_reward: float = 1.0, wrong_reward: float = 0.0) -> None:
        self.items: list[dict[str, str]] = []
        self.correct_reward, self.wrong_reward = correct_reward, wrong_reward

    hang_after: int | None = None  # answer this many calls, then never again (a lost node)

    async def score(self, items: list[dict[str, str]]) -> list[SimpleNamespace]:
        if self.hang_after is not None:
            if self.hang_after == 0:
                await asyncio.Event().wait()
            self.hang_after -= 1
        self.items += items
        return [SimpleNamespace(reward=self.correct_reward if it["response"] == "1"
                                else self.wrong_reward, ok=True, reason="")
                for it in items]


class FakeTrainer:
    def __init__(self, rank: int, activity: Activity, *, train_ticks: int = 0) -> None:
        self.rank, self.activity, self.train_ticks = rank, activity, train_ticks
        self.trained: list[tuple[int, list[int], Any]] = []  # (step, group ids, advantages)
        self.batches: list[list[Group]] = []
        self.die_at_step: int | None = None  # fail as a dead actor at this step
        self.hang_at_step: int | None = None  # never answer this step (a peer lost mid-step)
        self.hang_at_sync: int | None = None  # never finish the weight sync after this step
        self.overlap: list[int] = []  # tokens generated (all engines) while each step trained
        self.peers: list[FakeRollout] = []  # the engines it sends weights to (`collective`)

    async def train_step(self, batch: list[Group], step: int, adv: Any = None) -> dict[str, float]:
        self.activity.calls.append((f"train_step[{self.rank}]", step))
        if self.die_at_step == step:
            from ray.exceptions import ActorDiedError

            raise ActorDiedError()
        if self.hang_at_step == step:
            await asyncio.Event().wait()
        before = self.activity.tokens
        for _ in range(self.train_ticks):
            await asyncio.sleep(0)
        self.overlap.append(self.activity.tokens - before)
        self.trained.append((step, [g.group_id for g in batch], adv))
        self.batches.append(batch)
        return {"loss": 0.0, "n_loss_tokens": float(sum(g.num_tokens_generated for g in batch))}

    async def reference_logprobs(self, batch: list[Group]) -> list[list[list[float]]]:
        self.activity.calls.append(("reference_logprobs", [g.group_id for g in batch]))
        return [[[-1.0] * len(t.response_ids) for t in g.trajectories] for g in batch]

    async def export_weights(self, path: str) -> None:
        self.activity.calls.append((f"export_weights[{self.rank}]", path))
        await self._maybe_hang_in_sync()

    async def broadcast_weights(self, only: list[int] | None = None) -> dict[str, Any]:
        """Sends to the engines in `only` (default: all); one without a group fails, as a
        transfer to a dead engine does."""
        self.activity.calls.append((f"broadcast_weights[{self.rank}]", only))
        await self._maybe_hang_in_sync()
        targets = range(len(self.peers)) if only is None else only
        return {"failed": {i: "fake: connection reset" for i in targets
                           if self.rank == 0 and not self.peers[i].joined}}

    async def weight_meta(self) -> list[Any]:
        return []

    async def weight_sync_endpoint(self) -> tuple[str, int]:
        return "127.0.0.1", 0

    async def init_weight_group(self, worker: int, host: str, port: int, **kw: Any) -> bool:
        self.activity.calls.append((f"init_weight_group[{self.rank}]", worker))
        return True

    async def _maybe_hang_in_sync(self) -> None:
        if self.hang_at_sync is not None and self.trained and (
                self.trained[-1][0] == self.hang_at_sync):
            await asyncio.Event().wait()

    async def save_checkpoint(self, out_dir: str) -> None:
        (Path(out_dir) / f"trainer_{self.rank}.txt").write_text("saved")

    async def load_checkpoint(self, ckpt: str) -> None:
        self.activity.calls.append((f"load_checkpoint[{self.rank}]", ckpt))


class FakeCritic:
    def __init__(self, activity: Activity) -> None:
        self.activity = activity

    async def prepare(self, batch: list[Group], ref_logprobs: Any = None
                      ) -> list[list[list[float]]]:
        """Advantages that name their group: group_id + ref_logprob, one per token."""
        self.activity.calls.append(("critic.prepare", ref_logprobs is not None))
        return [[[g.group_id + (ref_logprobs[i][j][0] if ref_logprobs else 0.0)] *
                 len(t.response_ids) for j, t in enumerate(g.trajectories)]
                for i, g in enumerate(batch)]

    async def update(self, step: int) -> dict[str, float]:
        self.activity.calls.append(("critic.update", step))
        return {"value_loss": 0.25}

    async def save_checkpoint(self, out_dir: str) -> None:
        (Path(out_dir) / "critic.txt").write_text("saved")

    async def load_checkpoint(self, ckpt: str) -> None:
        self.activity.calls.append(("critic.load_checkpoint", ckpt))


@dataclass
class FakeActors:
    """What controller/runtime.py `Actors` holds, over fakes; the fakes themselves for asserts."""

    sync_dir: str
    activity: Activity = field(default_factory=Activity)
    rollouts: list[FakeRollout] = field(default_factory=list)
    trainer_objs: list[FakeTrainer] = field(default_factory=list)
    critic_obj: FakeCritic | None = None
    reward_obj: FakeReward = field(default_factory=FakeReward)
    placement: Any = None  # controller/placement.py Placement (its `spread()`), or none

    @property
    def rollout(self) -> list[FakeHandle]:
        return [FakeHandle(r) for r in self.rollouts]

    @property
    def trainers(self) -> list[FakeHandle]:
        return [FakeHandle(t) for t in self.trainer_objs]

    @property
    def critic(self) -> FakeHandle | None:
        return FakeHandle(self.critic_obj) if self.critic_obj is not None else None

    @property
    def reward(self) -> FakeHandle:
        return FakeHandle(self.reward_obj)


def fake_actors(sync_dir: str | Path, *, workers: int = 1, trainers: int = 1, critic: bool = False,
                response_tokens: int = 4, varied: bool = False, train_ticks: int = 0,
                seed: int = 0) -> FakeActors:
    a = FakeActors(str(sync_dir))
    a.rollouts = [FakeRollout(i, a.activity, response_tokens=response_tokens, varied=varied,
                              seed=seed + i) for i in range(workers)]
    a.trainer_objs = [FakeTrainer(r, a.activity, train_ticks=train_ticks) for r in range(trainers)]
    for t in a.trainer_objs:
        t.peers = a.rollouts
    a.critic_obj = FakeCritic(a.activity) if critic else None
    return a


def config(run_dir: str | Path, *overrides: str) -> ExperimentConfig:
    """A small run in `run_dir`: no evaluation, no progress bar, then `overrides`."""
    return load_config(None, [f"run_dir={run_dir}", "eval.before_and_after=false",
                              "logging.progress_bar=false", *overrides])


def prompts(n: int) -> list[Prompt]:
    """Prompts whose task data names them, so a test can tell whose data graded what."""
    return [Prompt(f"p{i}", [1 + i % 50] * 6, f"ref-p{i}", f"task-p{i % 3}") for i in range(n)]


def controller(cfg: ExperimentConfig, actors: FakeActors, train: list[Prompt],
               held_out: list[Prompt] | None = None, resume: Path | None = None) -> Any:
    """The real Controller over fakes (`put` is the identity: no object store)."""
    from areal_sys.algorithms import build_algorithm
    from controller.controller import Controller

    algo = build_algorithm(cfg.algorithm, max_new_tokens=cfg.rollout.max_new_tokens, rpo=cfg.rpo)
    return Controller(cfg, algo, actors, train, held_out or train[:2], put=lambda x: x,
                      resume=resume)


def run(cfg: ExperimentConfig, actors: FakeActors, train: list[Prompt],
        held_out: list[Prompt] | None = None, resume: Path | None = None) -> dict[str, Any]:
    """`Controller.run()` to the end, metric sinks closed."""
    ctl = controller(cfg, actors, train, held_out, resume)
    try:
        return asyncio.run(ctl.run())
    finally:
        ctl.close()
