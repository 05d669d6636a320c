"""The composition root of `areal-sys run` and `areal-sys eval`: validate, load the data and the
tokenizer, resolve the model, start Ray and the actors, run the controller, write the results.

Everything a user can get wrong (run_dir, datasets, model, prompt lengths, an unreadable
checkpoint) is checked before Ray starts and raises UserError / ConfigError, which the CLI prints
as one line with exit code 2 (areal_sys/cli.py). `areal_sys` itself never imports this package:
the CLI imports this module inside its command functions only.

Once validation has passed, the console holds our own lines only (areal_sys/console.py): the
driver's third-party output goes to RUN_DIR/logs/driver.log (eval.log for `eval`), each actor's to
its own file there, unless `logging.verbose`. An error leaving the run carries a note naming that
directory, which the CLI prints with it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from areal_sys.config import ExperimentConfig, dump_config
from areal_sys.console import capture, log_dir, own_warnings
from controller import runtime
from controller.preflight import (
    UserError,
    check_episode,
    check_model_dir,
    check_run_dir,
    checkpoint_to_resume,
    encode_prompts,
    load_datasets,
    load_tokenizer,
    make_run_dir,
)
from controller.startup import Startup


def run(cfg: ExperimentConfig, overwrite: bool = False) -> int:
    """Validate everything (run_dir, datasets, model, prompts, algorithm, the checkpoint to
    resume), then write into run_dir and start Ray. A run_dir holding an earlier run needs
    `resume` (continue it) or `overwrite` (delete its outputs, after validation passed); a failed
    validation writes nothing."""
    from areal_sys.algorithms import build_algorithm
    from controller import checkpoint

    startup = Startup()
    t_start = startup.t0
    if overwrite and cfg.resume:
        raise UserError("run: --overwrite and --resume exclude each other")
    earlier = check_run_dir(cfg.run_dir)
    if earlier and not (cfg.resume or overwrite):
        raise UserError(f"run_dir {cfg.run_dir} holds an earlier run "
                        f"({', '.join(p.name for p in earlier[:4])}); continue it with --resume, "
                        f"replace it with --overwrite, or choose another run_dir")
    resume = checkpoint_to_resume(cfg)
    if resume is not None:
        checkpoint.load_state(resume)  # a checkpoint this version cannot read: one line, now
    rows = load_datasets(cfg)
    try:
        model_path = runtime.resolve_model(cfg, progress=cfg.logging.progress_bar)
    except OSError as e:  # e.g. the tiny model's cache directory ($AREAL_SYS_CACHE) not writable
        raise UserError(f"model.path: cannot prepare {cfg.model.path!r}: {e.strerror or e}: "
                        f"{e.filename or ''}") from None
    tokenizer = load_tokenizer(model_path, "model.path")  # resolve_model checked the directory
    check_episode(cfg, tokenizer)
    train = encode_prompts(cfg, rows["train"], "train", tokenizer)
    held_out = encode_prompts(cfg, rows["eval"], "eval", tokenizer)

    algo = build_algorithm(cfg.algorithm, max_new_tokens=cfg.rollout.max_new_tokens, rpo=cfg.rpo)
    run_dir = make_run_dir(cfg.run_dir, earlier if overwrite else [], dump_config(cfg))
    print(f"algorithm: {algo.summary}")  # which path is active, before anything starts
    if warning := cfg.algorithm.reward_warning(cfg.reward.correct_reward, cfg.reward.wrong_reward):
        print(f"warning: {warning}")
    with _console(cfg, "driver"):
        import ray

        from controller.controller import Controller

        startup.mark("validated")
        runtime.start_ray(cfg)
        startup.mark("ray")
        actors = None
        try:
            actors = runtime.create_actors(cfg, model_path, needs_critic=algo.needs_critic)
            startup.mark("placed")

            async def go() -> dict[str, Any]:
                await runtime.start_actors(cfg, actors, startup)
                print(startup.line(), flush=True)
                controller = Controller(cfg, algo, actors, train, held_out, put=ray.put,
                                        resume=resume, startup=startup)
                try:
                    return await controller.run()
                finally:
                    controller.close()  # metric sinks (W&B, TensorBoard) before Ray shuts down

            results = asyncio.run(go())
        finally:
            runtime.shutdown(actors)
    elapsed = time.time() - t_start
    results["wall_time_s"] = elapsed
    results["startup"] = startup.marks  # seconds from the command's start to each phase's end
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for line in [] if cfg.logging.verbose else own_warnings(log_dir(cfg.run_dir), t_start):
        print(line)  # the workers' own warnings, each with the log that has the details
    if results.get("pass_rate_before") is not None and "pass_rate_after" in results:
        before, after = results["pass_rate_before"], results["pass_rate_after"]
        print(f"held-out pass rate: before {100 * before:.1f}% -> after {100 * after:.1f}% "
              f"({100 * (after - before):+.1f} points)")
    logs = "" if cfg.logging.verbose else f", logs in {run_dir / 'logs'}"
    print(f"done: {results['steps']} steps in {elapsed:.0f} s; outputs in {run_dir}{logs}")
    return 0


@contextmanager
def _console(cfg: ExperimentConfig, process: str) -> Iterator[None]:
    """Our own lines on the console, the rest in RUN_DIR/logs/PROCESS.log (verbose: all on the
    console); an exception leaving it carries a note naming the logs."""
    where = log_dir(cfg.run_dir)
    try:
        with capture(None if cfg.logging.verbose else where / f"{process}.log"):
            yield
    except Exception as e:
        if not cfg.logging.verbose:
            e.add_note(f"the processes' logs are in {where}")
        raise


def evaluate_checkpoint(cfg: ExperimentConfig, checkpoint_dir: str) -> int:
    """pass@1, avg@k and pass@k of a checkpoint's policy on the held-out set, with the rollout
    workers and the reward service; printed and appended to RUN_DIR/eval.jsonl."""
    from controller.actors import Events, Reward, RolloutPool
    from controller.evaluation import append_eval_line, evaluate_prompts, step_checker

    ckpt = Path(checkpoint_dir)
    policy = ckpt / "policy" if (ckpt / "policy").is_dir() else ckpt
    if not (policy / "config.json").is_file():
        raise UserError(f"eval: {ckpt} holds no Hugging Face policy (no config.json in {policy})")
    check_model_dir(policy, "eval --checkpoint")
    check_run_dir(cfg.run_dir)  # eval appends to run_dir/eval.jsonl: an earlier run is expected
    rows = load_datasets(cfg)
    tokenizer = load_tokenizer(policy, "eval --checkpoint")
    held_out = encode_prompts(cfg, rows["eval"], "eval", tokenizer)[: cfg.eval.num_problems]

    with _console(cfg, "eval"):
        runtime.start_ray(cfg)
        actors = None
        try:
            actors = runtime.create_eval_actors(cfg, str(policy))

            async def go() -> dict[str, Any]:
                await runtime.start_actors(cfg, actors)
                events = Events(Path(cfg.run_dir) / "events.jsonl", lambda: 0)
                rollout = RolloutPool(actors.rollout, weight_sync="shm_file", events=events)
                reward = Reward(actors.reward, max_restarts=cfg.controller.max_worker_restarts,
                                events=events)
                figures, _ = await evaluate_prompts(
                    held_out, k=cfg.eval.k, rollout=rollout, score=reward.score,
                    max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.eval.temperature,
                    correct_reward=cfg.reward.correct_reward, progress=cfg.logging.progress_bar,
                    step_errors=step_checker(cfg),
                    tool_use=cfg.rollout.episode.multi_turn)
                return figures

            figures = asyncio.run(go())
        finally:
            runtime.shutdown(actors)
    append_eval_line(make_run_dir(cfg.run_dir, []),
                     {"tag": "checkpoint", "checkpoint": str(ckpt), **figures})
    k = int(figures["k"])
    print(f"eval {ckpt}: {int(figures['n'])} problems x {k} samples: pass@1 "
          f"{100 * figures['pass@1']:.1f}%, avg@{k} {100 * figures[f'avg@{k}']:.1f}%, "
          f"pass@{k} {100 * figures[f'pass@{k}']:.1f}%"
          + (f", tool calls in {100 * figures['call_rate']:.1f}% of episodes"
             if "call_rate" in figures else ""))
    return 0
