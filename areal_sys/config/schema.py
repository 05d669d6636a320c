"""The experiment schema: one pydantic section per part of the system, and their cross-checks.

Every model forbids unknown keys, so a typo fails before anything starts.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, Strict, ValidationInfo, field_validator, model_validator

from areal_sys.algorithms.presets import PRESETS
from areal_sys.config.algorithm import AlgorithmConfig, RpoConfig
from areal_sys.config.base import Section
from areal_sys.config.episode import EpisodeConfig
from areal_sys.config.reward import RewardConfig

TINY_MODEL = "tiny"
# A float in [0, 1) given as a YAML number (an int is accepted, a bool or a string is not).
Beta = Annotated[float, Strict(), Field(ge=0.0, lt=1.0)]


class ModelConfig(Section):
    path: str = Field(
        TINY_MODEL, min_length=1,
        description="'tiny' (the built-in CPU model, built and cached on first use), a local "
        "Hugging Face model directory, or a Hugging Face model id (org/name)",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the trainer and the rollout engine"
    )
    tiny_sft_steps: int | None = Field(
        None, ge=0, description="supervised warm-start steps of the tiny model (None: built-in)"
    )
    tiny_seed: int | None = Field(
        None, ge=0, le=2**31 - 1, description="seed of the tiny model's warm start (None: the "
        "run's seed); benchmarks fix it so that their seeds vary only data order, sampling and RL",
    )

    @field_validator("path")
    @classmethod
    def _path_exists(cls, p: str) -> str:
        if p == TINY_MODEL:
            return p
        looks_local = p.startswith((".", "/", "~")) or Path(p).expanduser().exists()
        if looks_local and not Path(p).expanduser().is_dir():
            raise ValueError(f"local model directory {p!r} does not exist")
        if not looks_local and p.count("/") != 1:
            raise ValueError(f"{p!r} is neither a local directory nor a Hugging Face id (org/name)")
        return p


class DataConfig(Section):
    train: str = Field(
        "synthetic", description="'synthetic' (built-in task) or a local .jsonl/.parquet file"
    )
    eval: str = Field("synthetic", description="held-out set: 'synthetic' or a local file")
    task: str = Field(
        "synthetic", min_length=1, description="grader used for rows without a 'task' field: a "
        "built-in or one registered in reward.graders (checked unless reward.url is set)",
    )
    prompt_field: str = Field("prompt", min_length=1, description="column holding the prompt")
    answer_field: str = Field(
        "answer", min_length=1, description="column holding the reference answer (a JSON object "
        "or list, e.g. a code dataset's tests, is passed to the grader as sorted-key JSON)",
    )
    uid_field: str | None = Field(
        None, min_length=1, description="column with a unique id (default: row index)"
    )
    prompt_template: str = Field(
        "{prompt}", description="format string applied to the prompt; 'chat' uses the tokenizer's "
        "chat template"
    )
    synthetic_task: Literal["first_decision", "chain_tail", "chain_uniform", "tool_mul"] = Field(
        "first_decision", description="the built-in task: 'first_decision' (chains of 1-15 steps; "
        "RL learns to write the chain instead of guessing), a long-chain task of 12-16 "
        "fixed-width steps whose demonstrator slips in the last 2 steps ('chain_tail') or at "
        "every step ('chain_uniform'), or 'tool_mul' (two-digit products, right only through the "
        "calculator: rollout.episode.kind=tool_use); each has its own warm-started tiny model",
    )
    synthetic_train_size: int = Field(4096, ge=1, description="problems in the synthetic train set")
    synthetic_eval_size: int = Field(256, ge=1, description="problems in the synthetic eval set")
    shuffle: bool = True
    max_prompt_tokens: int = Field(
        256, ge=1, description="longer prompts are rejected (so are prompts longer than "
        "rollout.max_model_len - rollout.max_new_tokens)",
    )

    @field_validator("prompt_template")
    @classmethod
    def _template_has_prompt(cls, template: str) -> str:
        if template != "chat" and "{prompt}" not in template:
            raise ValueError(f"must contain '{{prompt}}' or be 'chat', got {template!r:.60}")
        return template


class RolloutConfig(Section):
    num_workers: int = Field(1, ge=1, description="RolloutWorker actors (one vLLM engine each)")
    n_samples: int = Field(8, ge=1, description="responses per prompt (group size G)")
    max_new_tokens: int = Field(160, ge=1, description="generation budget per response")
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    update_mode: Literal["abort", "keep", "wait"] = Field(
        "abort", description="what a weight update does to in-flight requests: 'abort' them and "
        "resubmit prompt + partial tokens (re-prefill; AReaL), 'keep' them paused in the engine "
        "and continue on the new weights without re-prefill (the KV of earlier tokens stays from "
        "older weights), or 'wait' until they finish on the old weights (baseline)",
    )
    interruptible: bool | None = Field(
        None, description="deprecated alias of update_mode: true = 'abort', false = 'wait'"
    )
    max_concurrent_groups: int = Field(
        64, ge=1, description="groups a worker generates at once (the gate may admit fewer)"
    )
    kv_cache_gib: float = Field(1.0, gt=0, description="VLLM_CPU_KVCACHE_SPACE on CPU")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1.0)
    max_model_len: int = Field(512, ge=16)
    enforce_eager: bool = True
    episode: EpisodeConfig = Field(default_factory=EpisodeConfig)

    @model_validator(mode="before")
    @classmethod
    def _interruptible_alias(cls, data: Any) -> Any:
        """Map the old `interruptible` flag onto `update_mode`; refuse the two disagreeing."""
        if not isinstance(data, dict) or not isinstance(data.get("interruptible"), bool):
            return data
        mode = "abort" if data["interruptible"] else "wait"
        if data.get("update_mode", mode) != mode:
            raise ValueError(f"interruptible={str(data['interruptible']).lower()} (the old name "
                             f"of update_mode) means update_mode={mode!r}, but update_mode="
                             f"{data['update_mode']!r}: drop one (rollout.interruptible=null)")
        return {**data, "update_mode": mode}


class TrainerConfig(Section):
    num_workers: int = Field(1, ge=1, description="data-parallel TrainerWorker actors")
    total_steps: int = Field(50, ge=1, description="optimiser steps (policy versions) to run")
    lr: float = Field(1e-5, gt=0)
    critic_lr: float = Field(
        1e-5, gt=0, description="learning rate of the value model (critic; PPO with GAE only)"
    )
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: Annotated[tuple[Beta, Beta], Field(strict=False)] = Field(
        (0.9, 0.999), description="Adam (beta1, beta2), each in [0, 1)"
    )
    adam_eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, gt=0)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    ppo_minibatches: int = Field(1, ge=1, description="optimiser updates per step")
    sparse_signal: Literal["off", "skip", "scale"] = Field(
        "off", description="guard for steps where few groups carry a learning signal (a nonzero "
        "advantage): skip: no weight update below min_informative_groups such groups; scale: the "
        "learning rate x the informative fraction of the batch's groups",
    )
    min_informative_groups: int = Field(
        1, ge=1, description="sparse_signal=skip: the fewest informative groups that update",
    )
    max_tokens_per_microbatch: int = Field(8192, ge=16, description="packing budget")
    keep_groups_together: bool = Field(
        False, description="split minibatches at group boundaries (advantages are computed per "
        "group before the split, so the built-in algorithms do not need it)"
    )
    zero_stage: int = Field(1, ge=0, le=3)
    gradient_checkpointing: bool = False
    weight_sync: Literal["shm_file", "collective"] = Field(
        "shm_file",
        description="shm_file: safetensors through /dev/shm (one node); collective: bucketed "
        "broadcast from trainer rank 0 to every rollout engine (gloo on CPU, NCCL on GPU)",
    )
    sync_bucket_mb: int = Field(256, ge=1, description="collective sync: bucket size in MiB")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: off)")
    keep_last: int = Field(2, ge=1, description="complete checkpoints kept on disk")


class ControllerConfig(Section):
    batch_size: int = Field(16, ge=1, description="groups (prompts) per training step, B")
    max_staleness: int = Field(
        1, ge=0, description="eta: admit while accepted+running+1 <= (version+eta+1)*B; 0 = sync"
    )
    max_worker_restarts: int = Field(
        3, ge=0, description="restarts of each rollout / reward actor after it dies (Ray's "
        "max_restarts); its groups are re-sent. A dead trainer stops the run"
    )
    train_timeout_s: float = Field(
        3600.0, gt=0, le=86_400, description="limit for one training step on every trainer rank "
        "(and the critic); past it the run stops with the resume command (a rank, or its node, "
        "vanished inside a collective)"
    )
    weight_sync_timeout_s: float = Field(
        600.0, gt=0, le=86_400, description="limit for one weight sync (export or broadcast, and "
        "every engine's load), also the weight-sync group's own timeout; past it the run stops "
        "with the resume command"
    )
    reward_timeout_s: float = Field(
        600.0, gt=0, le=86_400, description="limit for scoring one group by the reward actor "
        "(its restarts included); past it the run stops with the resume command"
    )
    restart_timeout_s: float = Field(
        600.0, gt=0, le=86_400, description="limit for Ray to bring a dead rollout worker's "
        "actor back (on another node when its own was lost), before its engine starts again; "
        "past it the run stops with the resume command (no node can host it)"
    )


class ClusterConfig(Section):
    address: str | None = Field(
        None, min_length=1, description="Ray address; None starts or joins locally"
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance")
    rollout_cpus: float = Field(1.0, ge=0, description="Ray CPUs of each rollout worker")
    trainer_cpus: float = Field(1.0, ge=0, description="Ray CPUs of each trainer rank")
    reward_cpus: float = Field(0.0, ge=0, description="Ray CPUs of the reward service actor")
    rollout_gpus: float = Field(0.0, ge=0, description="GPUs of each rollout worker")
    trainer_gpus: float = Field(0.0, ge=0, description="GPUs of each trainer rank")
    critic_cpus: float = Field(
        0.0, ge=0, description="Ray CPUs of the critic (PPO only; 0: it shares the trainer's)"
    )
    critic_gpus: float = Field(0.0, ge=0, description="GPUs of the critic (PPO only)")
    pin_cpus: bool = Field(
        True, description="local CPU runs: give each rollout engine and trainer its own cores"
    )
    rollout_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources of each rollout worker's bundle "
        "(e.g. {accelerator_type_x: 1}, or a resource only some nodes advertise)"
    )
    trainer_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources of each trainer rank's bundle"
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement-group strategy for the bundles of each role but the "
        "trainer's (STRICT_SPREAD: each rollout worker on its own node); the trainer ranks are "
        "always packed on one node (STRICT_PACK)"
    )
    placement_timeout_s: float = Field(
        120.0, gt=0, le=86_400,
        description="fail when the cluster cannot place every role within this time (at most a day)"
    )

    @field_validator("rollout_resources", "trainer_resources")
    @classmethod
    def _custom_resources(cls, v: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        for name, amount in v.items():
            if name in ("CPU", "GPU", "memory", "object_store_memory") or not name:
                raise ValueError(f"{name!r} is not a custom resource: set CPUs and GPUs with "
                                 f"cluster.{info.field_name.split('_')[0]}_cpus / _gpus")
            if not amount > 0:
                raise ValueError(f"resource {name!r} must be positive, got {amount:g}")
        return v


class LoggingConfig(Section):
    progress_bar: bool = Field(
        True, description="a live progress line (step/total, ETA, reward, staleness, tokens/s, "
        "sync time) at the bottom of a terminal; never drawn off a terminal",
    )
    log_every: int = Field(
        10, ge=1, description="print one line of a step's metrics every this many steps and "
        "after the last (metrics.jsonl gets every step)",
    )
    verbose: bool = Field(
        False, description="show every process's output on the console (vLLM, Ray, DeepSpeed, "
        "...; `--verbose`); otherwise it goes to run_dir/logs/<process>.log",
    )
    kl_to_initial: bool = Field(
        False, description="log train/kl_to_initial (k3 KL of the policy to the initial one) every "
        "kl_to_initial_every steps: keeps a frozen copy of the initial policy in each trainer rank "
        "(its memory) and runs one more no-gradient forward on those steps (~1/3 of a step's "
        "compute); a KL penalty loads that copy regardless",
    )
    kl_to_initial_every: int = Field(
        10, ge=1, description="with kl_to_initial: measure it on the steps where step % this == 0 "
        "(the key is absent on the other steps)",
    )
    tensorboard: bool = Field(
        False, description="also log per-step metrics as TensorBoard events in run_dir/tensorboard "
        "(needs the tensorboard package)",
    )
    wandb: bool = Field(
        False, description="also log per-step metrics to Weights & Biases, files in run_dir/wandb "
        "(needs the wandb package)",
    )
    wandb_project: str = Field("areal-sys", min_length=1, description="W&B project name")
    wandb_mode: Literal["online", "offline"] | None = Field(
        None, description="W&B mode; offline needs no network (None: WANDB_MODE, else online)"
    )

    @field_validator("tensorboard", "wandb")
    @classmethod
    def _package_installed(cls, enabled: bool, info: ValidationInfo) -> bool:
        """A sink that is on needs its package: say which and how to install it, before Ray."""
        package = str(info.field_name)
        if enabled and importlib.util.find_spec(package) is None:
            raise ValueError(f"needs the {package} package, which is not installed: "
                             f"pip install {package} (or pip install -e '.[observe]')")
        return enabled


class EvalConfig(Section):
    before_and_after: bool = Field(True, description="held-out pass rate before and after training")
    num_problems: int = Field(256, ge=1)
    temperature: float = Field(1.0, gt=0)
    k: int = Field(1, ge=1, description="samples per problem: pass@1, avg@k and pass@k")
    every: int = Field(0, ge=0, description="also evaluate every N steps during training (0: off)")


class ExperimentConfig(Section):
    run_dir: str = Field(
        "runs/default", min_length=1, description="where every output of the run goes; one that "
        "holds an earlier run is refused unless the run resumes it (--resume) or replaces it "
        "(--overwrite)",
    )
    resume: bool = Field(
        False, description="continue from the latest complete checkpoint in run_dir/checkpoints"
    )
    seed: int = Field(1, ge=0, le=2**31 - 1, description="seeds data order, sampling and init")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    trainer: TrainerConfig = TrainerConfig()
    # built on use, not at import: validating an algorithm section imports the plugin registry
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    rpo: RpoConfig = RpoConfig()
    controller: ControllerConfig = ControllerConfig()
    cluster: ClusterConfig = ClusterConfig()
    logging: LoggingConfig = LoggingConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="before")
    @classmethod
    def _preset_rewards(cls, data: Any) -> Any:
        """The preset's reward values (DAPO's +1/-1) as defaults of the reward section: a
        `reward.correct_reward` / `wrong_reward` the config gives explicitly wins."""
        if not isinstance(data, dict):
            return data
        algo = data.get("algorithm", {})
        name = algo.name if isinstance(algo, AlgorithmConfig) else (
            algo.get("name", AlgorithmConfig.model_fields["name"].default)
            if isinstance(algo, dict) else None)
        preset = PRESETS.get(name) if isinstance(name, str) else None
        reward = data.get("reward", {})
        if preset is None or not preset.rewards:
            return data
        if isinstance(reward, RewardConfig):
            reward = reward.model_dump(exclude_unset=True)
        if not isinstance(reward, dict):
            return data  # the reward field's own check reports it
        return {**data, "reward": {**preset.rewards, **reward}}

    @model_validator(mode="after")
    def _cross_checks(self) -> ExperimentConfig:
        if self.rollout.max_new_tokens + 1 >= self.rollout.max_model_len:
            raise ValueError(
                "rollout.max_new_tokens must leave room for the prompt in rollout.max_model_len"
            )
        if self.trainer.max_tokens_per_microbatch < self.rollout.max_model_len:
            raise ValueError(
                "trainer.max_tokens_per_microbatch must hold one full sequence (>= max_model_len)"
            )
        if self.reward.url is None and self.data.task not in self.reward.grader_names():
            raise ValueError(
                f"data.task: unknown grader {self.data.task!r}; registered: "
                f"{', '.join(self.reward.grader_names())} (add plugins in reward.graders)"
            )
        if self.rpo.enabled:
            if self.rollout.episode.kind != "single_turn":
                raise ValueError("rpo: cached prefixes are single responses; "
                                 "rollout.episode.kind must be single_turn")
            if self.algorithm.needs_critic:
                raise ValueError("rpo: needs a group estimator (grpo, dr_grpo, rloo, reinforce, "
                                 "raft); PPO with a critic is not supported")
            if self.rpo.loss_mode == "decoupled" and self.algorithm.loss != "decoupled_ppo":
                raise ValueError("rpo.loss_mode=decoupled needs algorithm.loss=decoupled_ppo")
        return self
