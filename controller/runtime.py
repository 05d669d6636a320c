"""Process management for a run: resolve the model, start Ray, create and stop the actors.

Kept apart from `controller.py` so that the step loop reads top to bottom. Ray is imported here,
never by `areal_sys`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from areal_sys.config import TINY_MODEL, ConfigError, ExperimentConfig
from areal_sys.console import LOG_FILE_ENV, log_dir, logged
from areal_sys.ports import free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def resolve_model(cfg: ExperimentConfig, progress: bool = True) -> str:
    """Local directory of the policy: the cached tiny model, a local dir, or a hub download;
    checked by `check_model` before anything starts."""
    path = cfg.model.path
    if path == TINY_MODEL:
        from areal_sys.models.chain_model import ensure_task_model

        seed = cfg.seed if cfg.model.tiny_seed is None else cfg.model.tiny_seed
        local = str(ensure_task_model(cfg.data.synthetic_task, seed=seed,
                                      sft_steps=cfg.model.tiny_sft_steps, progress=progress))
    elif Path(path).expanduser().is_dir():
        local = str(Path(path).expanduser().resolve())
    else:
        try:
            from huggingface_hub import snapshot_download

            local = snapshot_download(repo_id=path, allow_patterns=[
                "*.json", "*.safetensors", "*.txt", "*.model", "*.py"])
        except Exception as e:  # noqa: BLE001 - any hub failure is a configuration problem here
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(
                f"model.path: cannot resolve Hugging Face model {path!r}: {reason}"
            ) from None
    check_model(cfg, local)
    return local


def check_model(cfg: ExperimentConfig, model_dir: str) -> None:
    """Pre-flight, before Ray starts: `model_dir` holds a Hugging Face config.json and, when the
    rollout engines run on CPU (no `cluster.rollout_gpus`), an attention head size that vLLM's
    CPU attention supports (workers/engine_start.py). A ConfigError of one line otherwise: the
    model's head size and the supported ones, not an engine dying in the middle of a run."""
    from workers.engine_start import cpu_attention_problem, read_model_config

    config = read_model_config(model_dir)
    if config is None:
        raise ConfigError(f"model.path: {model_dir} is not a Hugging Face model directory (no "
                          "readable config.json holding a JSON object)")
    if cfg.cluster.rollout_gpus == 0:
        problem = cpu_attention_problem(config, model_dir)
        if problem:
            raise ConfigError(f"model.path: {problem}; choose another model, or give the "
                              "rollout workers GPUs (cluster.rollout_gpus)")


def start_ray(cfg: ExperimentConfig) -> None:
    """Join the cluster of a Ray job / `cluster.address`, else start a local instance.

    Ray streams its workers' output to the driver only with `logging.verbose`: otherwise each
    actor writes into its own RUN_DIR/logs file (`_env`, areal_sys/console.py)."""
    import ray

    if ray.is_initialized():
        return
    to_driver = cfg.logging.verbose
    in_job = "RAY_JOB_ID" in os.environ or os.environ.get("RAY_ADDRESS")
    if cfg.cluster.address or in_job:
        ray.init(address=cfg.cluster.address or None, log_to_driver=to_driver)
        return
    ray.init(
        # "local": a new instance even when a cluster started with `ray start` runs on this
        # machine (no address would join the latest one, and then refuse num_cpus)
        address="local",
        num_cpus=cfg.cluster.num_cpus or os.cpu_count(),
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=to_driver,
        runtime_env={"env_vars": {"PYTHONPATH": str(PROJECT_ROOT)}},
    )


def cpu_placement(cfg: ExperimentConfig) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Environment pinning each rollout engine and trainer rank to its own cores (local CPU runs).

    Cores are handed out in order, rollout workers first, `cluster.rollout_cpus` /
    `cluster.trainer_cpus` each (at least one), wrapping around when the machine has fewer: on
    2 cores the engine gets core 0 and the trainer core 1, so neither one's OpenMP threads spin on
    the other's core. Empty dicts on GPU, with `cluster.address`, or on a cluster of several
    nodes, where Ray places the actors and this machine's core ids mean nothing (a Ray job on a
    one-node cluster, such as tests/test_ray_job.py, is pinned like a local run).
    """
    import ray

    c = cfg.cluster
    n_roll, n_train = cfg.rollout.num_workers, cfg.trainer.num_workers
    multi_node = sum(1 for n in ray.nodes() if n.get("Alive")) > 1
    if c.address or multi_node or c.rollout_gpus or c.trainer_gpus or not c.pin_cpus:
        return [{} for _ in range(n_roll)], [{} for _ in range(n_train)]
    cores = sorted(os.sched_getaffinity(0))
    nxt = 0

    def take(k: float) -> str:
        nonlocal nxt
        ids = [cores[(nxt + j) % len(cores)] for j in range(max(1, int(k)))]
        nxt += len(ids)
        return ",".join(map(str, sorted(set(ids))))

    rollout = [{"VLLM_CPU_OMP_THREADS_BIND": take(c.rollout_cpus),
                "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"} for _ in range(n_roll)]
    trainer = [{"AREAL_SYS_CPU_CORES": take(c.trainer_cpus)} for _ in range(n_train)]
    return rollout, trainer


@dataclass
class Actors:
    rollout: list[Any]
    trainers: list[Any]
    reward: Any
    sync_dir: str
    critic: Any = None  # the value model (workers/critic.py), only when the algorithm needs one
    handles: list[Any] = field(default_factory=list)
    placement: Any = None  # controller.placement.Placement: the run's placement groups


def create_actors(cfg: ExperimentConfig, model_path: str, *, needs_critic: bool) -> Actors:
    """The run's actors, on the placement groups reserved for them: rollout workers, trainer
    ranks, the critic when the algorithm has a value model (`needs_critic`), the reward actor."""
    import ray

    from controller.placement import reserve
    from workers.trainer import TrainerWorker

    rollout_pins, trainer_pins = cpu_placement(cfg)
    placement = reserve(cfg, needs_critic)  # fails fast (ConfigError) when the cluster is short

    rollout = rollout_actors(cfg, model_path, placement, rollout_pins)
    port = free_port()
    trainer_cls = ray.remote(logged(TrainerWorker))
    trainers = [
        trainer_cls.options(
            num_cpus=cfg.cluster.trainer_cpus, num_gpus=cfg.cluster.trainer_gpus,
            runtime_env=_env(trainer_pins[r], _log(cfg, f"trainer-{r}")),
            scheduling_strategy=placement.strategy("trainer", r),
        ).remote(model_path, cfg, rank=r, world_size=cfg.trainer.num_workers, master_port=port)
        for r in range(cfg.trainer.num_workers)
    ]
    critic = None
    if needs_critic:
        from workers.critic import CriticWorker

        # one rank of its own process group; on local CPU it shares trainer rank 0's cores
        critic = ray.remote(logged(CriticWorker)).options(
            num_cpus=cfg.cluster.critic_cpus, num_gpus=cfg.cluster.critic_gpus,
            runtime_env=_env(trainer_pins[0], _log(cfg, "critic")),
            scheduling_strategy=placement.strategy("critic"),
        ).remote(model_path, cfg, master_port=free_port())
    reward = reward_actor(cfg, placement)
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    sync_dir = tempfile.mkdtemp(prefix="areal_sys-", dir=shm)
    return Actors(rollout, trainers, reward, sync_dir, critic=critic, placement=placement)


def _env(*extra: dict[str, str]) -> dict[str, Any]:
    env: dict[str, str] = {"PYTHONPATH": str(PROJECT_ROOT)}
    for more in extra:
        env.update(more)
    return {"env_vars": env}


def _log(cfg: ExperimentConfig, process: str) -> dict[str, str]:
    """The environment that sends an actor's output to RUN_DIR/logs/PROCESS.log (a `logged`
    class reads it in its constructor); none with `logging.verbose`."""
    if cfg.logging.verbose:
        return {}
    return {LOG_FILE_ENV: str(log_dir(cfg.run_dir) / f"{process}.log")}


def rollout_actors(cfg: ExperimentConfig, model_path: str, placement: Any,
                   pins: list[dict[str, str]]) -> list[Any]:
    """The RolloutWorker actors (engines not started), restarted by Ray when they die."""
    import ray

    from workers.rollout import RolloutWorker

    rollout_cls = ray.remote(logged(RolloutWorker))
    return [
        rollout_cls.options(
            num_cpus=cfg.cluster.rollout_cpus, num_gpus=cfg.cluster.rollout_gpus,
            runtime_env=_env(pins[i], _log(cfg, f"rollout-{i}")), max_concurrency=1000,
            max_restarts=cfg.controller.max_worker_restarts,  # controller/actors.py
            scheduling_strategy=placement.strategy("rollout", i),
        ).remote(
            model_path, worker_id=i, seed=cfg.seed + i, dtype=cfg.model.dtype,
            max_model_len=cfg.rollout.max_model_len, kv_cache_gib=cfg.rollout.kv_cache_gib,
            update_mode=cfg.rollout.update_mode, enforce_eager=cfg.rollout.enforce_eager,
            gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
            episode=cfg.rollout.episode.model_dump(),
        )
        for i in range(cfg.rollout.num_workers)
    ]


def reward_actor(cfg: ExperimentConfig, placement: Any) -> Any:
    """The reward actor, built from the `reward` section: one RewardService (with
    `reward.num_procs` grader processes), or a client of `reward.url`."""
    import ray

    if cfg.reward.url:  # a remote HTTP reward server: the same score() behind the same actor API
        from reward_service.client import HttpRewardClient

        token = cfg.reward.resolve_token()  # read here: the actor's node may lack the file/env
        print(f"reward: HTTP server {cfg.reward.url}", flush=True)
        return ray.remote(logged(HttpRewardClient)).options(
            num_cpus=0, runtime_env=_env(_log(cfg, "reward")), max_concurrency=1000,
        ).remote(cfg.reward.url, timeout_s=cfg.reward.timeout_s,
                 wrong_reward=cfg.reward.wrong_reward, token=token)
    from reward_service.service import RewardService

    return ray.remote(logged(RewardService)).options(
        num_cpus=cfg.cluster.reward_cpus, runtime_env=_env(_log(cfg, "reward")),
        max_concurrency=1000,
        max_restarts=cfg.controller.max_worker_restarts,
        scheduling_strategy=placement.strategy("reward"),
    ).remote(cfg.reward)


def create_eval_actors(cfg: ExperimentConfig, model_path: str) -> Actors:
    """Rollout workers on `model_path` and the reward actor only (`areal-sys eval`)."""
    from controller.placement import Placement

    pins, _ = cpu_placement(cfg)
    placement = Placement()
    return Actors(rollout_actors(cfg, model_path, placement, pins), [],
                  reward_actor(cfg, placement), sync_dir="", placement=placement)


async def start_actors(cfg: ExperimentConfig, actors: Actors, startup: Any = None) -> None:
    """Start the engines and the trainer ranks (if any) in parallel, then connect the weight sync;
    `startup` (controller/startup.py) gets the time each role was ready.

    A rollout worker whose engine did not start raises EngineStartError with that worker's one
    line (workers/engine_start.py), not Ray's wrapping of it with the actor's traceback."""

    async def role(name: str, calls: list[Any]) -> list[Any]:
        done = await asyncio.gather(*calls, return_exceptions=True)
        if startup is not None and calls:
            startup.mark(name)
        return done

    engines, trainers = await asyncio.gather(
        role("engines", [w.start.remote() for w in actors.rollout]),
        role("trainers", [t.setup.remote() for t in actors.trainers]
             + ([actors.critic.setup.remote()] if actors.critic is not None else [])),
    )
    results = [*engines, *trainers]
    for i, result in enumerate(results[: len(actors.rollout)]):
        if isinstance(result, BaseException):
            raise engine_start_error(i, result) from None
    for result in results:
        if isinstance(result, BaseException):
            raise result
    if actors.trainers:  # `areal-sys eval` starts rollout workers only
        await init_weight_sync(cfg, actors)
        if startup is not None:
            startup.mark("weight_group")


def engine_start_error(worker: int, exc: BaseException) -> Exception:
    """One line for rollout worker `worker`'s failed `start()`: its own EngineStartError (which
    Ray wraps in a RayTaskError whose text adds the actor's traceback), or the first line of
    anything else, e.g. the actor's process dying."""
    from workers.engine_start import EngineStartError

    cause = getattr(exc, "cause", None)  # RayTaskError: the exception raised in the actor
    if isinstance(cause, EngineStartError):
        return EngineStartError(str(cause))
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return EngineStartError(f"rollout worker {worker}: the vLLM engine did not start: "
                            f"{type(exc).__name__}{': ' + first if first else ''}")


async def init_weight_sync(cfg: ExperimentConfig, actors: Actors) -> None:
    """`collective` backend: trainer rank 0 makes a two-rank group with each rollout engine
    (workers/weight_sync.py); the weights' names, shapes and dtypes travel once, here. No-op for
    `shm_file`."""
    if cfg.trainer.weight_sync != "collective":
        return
    metas = await asyncio.gather(*[t.weight_meta.remote() for t in actors.trainers])
    for i, worker in enumerate(actors.rollout):  # rank 0 hosts one group at a time
        await join_weight_group(cfg, actors.trainers[0], worker, i, metas[0])


async def join_weight_group(cfg: ExperimentConfig, trainer0: Any, worker: Any, i: int,
                            meta: list[Any]) -> None:
    """Trainer rank 0 and rollout engine `i` make their group (a new one replaces the old: a
    restarted engine joins again, controller/actors.py)."""
    host, port = await trainer0.weight_sync_endpoint.remote()
    on_gpu = cfg.cluster.trainer_gpus > 0 and cfg.cluster.rollout_gpus > 0
    common = {"meta": meta, "bucket_bytes": cfg.trainer.sync_bucket_mb << 20,
              "backend": "nccl" if on_gpu else "gloo",
              "timeout_s": cfg.controller.weight_sync_timeout_s}
    await asyncio.gather(trainer0.init_weight_group.remote(i, host, port, **common),
                         worker.init_weight_group.remote(host, port, 1, 2, **common))


def shutdown(actors: Actors | None) -> None:
    import ray

    if actors is not None:
        calls = [w.shutdown.remote() for w in actors.rollout]
        calls += [t.shutdown.remote() for t in actors.trainers]
        if actors.critic is not None:
            calls.append(actors.critic.shutdown.remote())
        calls.append(actors.reward.shutdown.remote())
        try:
            ray.get(calls, timeout=60)
        except Exception:  # noqa: BLE001 - best effort: the actors may already be gone
            pass
        if actors.sync_dir:
            shutil.rmtree(actors.sync_dir, ignore_errors=True)
        if actors.placement is not None:
            actors.placement.release()
    ray.shutdown()
