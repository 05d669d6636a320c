"""`areal-sys` command line: run | validate | algorithms | make-tiny-model | reward-serve | bench.

Every user error (configuration, data, model resolution) ends with one line on stderr and exit
code 2, before Ray starts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from areal_sys.config import ConfigError, ExperimentConfig, dump_config, load_config

EXIT_USAGE = 2


class UserError(Exception):
    """Any input problem the user must fix; printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="areal-sys", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train: areal-sys run CONFIG [a.b=c ...]")
    run.add_argument("config")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.total_steps=5")
    run.add_argument("--resume", action="store_true",
                     help="continue from the latest complete checkpoint in run_dir (resume=true)")
    val = sub.add_parser("validate", help="check a config without starting anything")
    val.add_argument("config")
    val.add_argument("overrides", nargs="*")
    ev = sub.add_parser("eval", help="held-out pass@1 / avg@k of a saved policy: "
                        "areal-sys eval CONFIG --checkpoint DIR")
    ev.add_argument("config")
    ev.add_argument("overrides", nargs="*")
    ev.add_argument("--checkpoint", required=True,
                    help="RUN_DIR/checkpoints/step_N (or any Hugging Face model directory)")
    sub.add_parser("algorithms", help="list the algorithm presets and every registered piece")
    rep = sub.add_parser("report", help="PNG figures of a run into RUN_DIR/report/")
    rep.add_argument("run_dir")
    tiny = sub.add_parser("make-tiny-model", help="build (or reuse) the cached tiny CPU model")
    tiny.add_argument("--seed", type=int, default=1)
    tiny.add_argument("--sft-steps", type=int, default=None)
    sub.add_parser("reward-serve", add_help=False,
                        help="HTTP reward service (POST /score, GET /health); --help for options")
    bench = sub.add_parser("bench", help="run benchmarks/NAME.py [its options] (source checkout)")
    bench.add_argument("name", help="a benchmark, e.g. async_vs_sync; 'list' lists them")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["reward-serve"]:  # its own flags: reward_service/cli.py
        from reward_service.cli import main as reward_serve

        return reward_serve(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "validate":
            cfg = load_config(args.config, args.overrides)
            print(f"ok: {args.config} (algorithm {cfg.algorithm.name}, model {cfg.model.path}, "
                  f"eta {cfg.controller.max_staleness}, {cfg.trainer.total_steps} steps)")
            return 0
        if args.command == "algorithms":
            print(_algorithms_listing())
            return 0
        if args.command == "make-tiny-model":
            from areal_sys.models.tiny import ensure_tiny_model

            kwargs: dict[str, Any] = {"seed": args.seed}
            if args.sft_steps is not None:
                kwargs["sft_steps"] = args.sft_steps
            print(ensure_tiny_model(**kwargs))
            return 0
        if args.command == "bench":
            return _bench(args.name, args.args)
        if args.command == "report":
            return _report(args.run_dir)
        if args.command == "eval":
            return _eval(load_config(args.config, args.overrides), args.checkpoint)
        if args.command == "run":
            overrides = [*args.overrides, *(["resume=true"] if args.resume else [])]
            return _run(load_config(args.config, overrides))
    except (ConfigError, UserError) as e:
        print(f"areal-sys: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as e:
        if type(e).__name__ != "TrainerDied":  # controller/recovery.py
            raise
        again = ["areal-sys", *(argv if argv is not None else sys.argv[1:])]
        again += [] if "--resume" in again else ["--resume"]
        print(f"areal-sys: error: {e}; the run stopped. Resume from its last checkpoint with: "
              f"{' '.join(again)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("areal-sys: interrupted", file=sys.stderr)
        return 130
    return 0


BENCH_HELPERS = {"__init__", "common", "table"}  # modules of benchmarks/ that are not benchmarks


def _bench(name: str, args: list[str]) -> int:
    """Run `benchmarks/NAME.py ARGS` with this interpreter; its exit code is ours."""
    import subprocess

    root = Path(__file__).resolve().parent.parent / "benchmarks"
    names = sorted(p.stem for p in root.glob("*.py") if p.stem not in BENCH_HELPERS)
    if name == "list":
        print("\n".join(names))
        return 0
    if name not in names:
        where = f"one of {', '.join(names)}" if names else f"no benchmarks found in {root}"
        raise UserError(f"bench: unknown benchmark {name!r}; {where}")
    return subprocess.run([sys.executable, str(root / f"{name}.py"), *args],
                          cwd=root.parent).returncode


def _report(run_dir: str) -> int:
    """Write the run's figures (areal_sys/report.py); print them and each worker's busy time."""
    from areal_sys.report import ReportError, write_report

    try:
        report = write_report(run_dir)
    except ReportError as e:
        raise UserError(f"report: {e}") from None
    print(f"report: {len(report.figures)} figures in {Path(run_dir) / 'report'}")
    for path in report.figures:
        print(f"  {path.name}")
    for why in report.skipped:
        print(f"  skipped {why}")
    if report.busy:
        print(f"busy fraction per worker (of {report.window_s:.1f} s from first to last span):")
        for worker, frac in report.busy.items():
            print(f"  {worker:<12} {100 * frac:5.1f}%")
    return 0


def _algorithms_listing() -> str:
    """Presets (with the pieces they pick) and each registry's plugins, one line each."""
    from areal_sys.algorithms.presets import PRESETS
    from areal_sys.algorithms.registry import REGISTRIES, plugins

    lines = ["presets (algorithm.name; any piece can be overridden on top):"]
    for name, preset in PRESETS.items():
        lines.append(f"  {name:<15} {preset.description}")
        picks = ", ".join(f"{k}={v}" for k, v in preset.values.items())
        lines.append(f"  {'':<15} {picks}")
        if preset.note:
            lines.append(f"  {'':<15} note: {preset.note}")
    fields = {"estimator": "estimator", "policy_loss": "loss", "aggregation": "aggregation",
              "filter": "filter", "kl": "kl_estimator"}
    for kind in REGISTRIES:
        lines.append(f"{kind} (algorithm.{fields.get(kind, kind)}):")
        for name, plugin in sorted(plugins(kind).items()):
            lines.append(f"  {name:<20} {plugin.description}")
    return "\n".join(lines)


def _load_rows(cfg: ExperimentConfig) -> dict[str, list[Any]]:
    """Read (and so validate) both datasets before anything expensive starts."""
    from areal_sys.data.loading import DataError, load_rows

    d = cfg.data
    rows = {}
    for split, source, size in (("train", d.train, d.synthetic_train_size),
                                ("eval", d.eval, d.synthetic_eval_size)):
        try:
            rows[split] = load_rows(source, prompt_field=d.prompt_field,
                                    answer_field=d.answer_field, uid_field=d.uid_field,
                                    task=d.task, split=split, synthetic_size=size, seed=cfg.seed)
        except DataError as e:
            raise UserError(f"data.{split}: {e}") from None
    return rows


def _encode(cfg: ExperimentConfig, rows: list[Any], split: str, tokenizer: Any) -> list[Any]:
    from areal_sys.data.loading import render_prompt
    from controller.controller import Prompt

    limit = cfg.data.max_prompt_tokens
    prompts = []
    for row in rows:
        ids = render_prompt(cfg.data.prompt_template, row.prompt, tokenizer)
        if len(ids) > limit:
            raise UserError(f"data.{split}: prompt {row.uid!r} has {len(ids)} tokens, more than "
                            f"data.max_prompt_tokens={limit}")
        prompts.append(Prompt(row.uid, ids, row.reference, row.task))
    return prompts


def _eval(cfg: ExperimentConfig, checkpoint_dir: str) -> int:
    """pass@1, avg@k and pass@k of a checkpoint's policy on the held-out set, with the rollout
    workers and the reward service; printed and appended to RUN_DIR/eval.jsonl."""
    import asyncio

    from controller import runtime
    from controller.evaluation import evaluate_prompts, score_trajectories

    ckpt = Path(checkpoint_dir)
    policy = ckpt / "policy" if (ckpt / "policy").is_dir() else ckpt
    if not (policy / "config.json").is_file():
        raise UserError(f"eval: {ckpt} holds no Hugging Face policy (no config.json in {policy})")
    rows = _load_rows(cfg)
    from transformers import AutoTokenizer

    held_out = _encode(cfg, rows["eval"], "eval", AutoTokenizer.from_pretrained(policy))
    held_out = held_out[: cfg.eval.num_problems]
    runtime.start_ray(cfg)
    actors = None
    try:
        actors = runtime.create_eval_actors(cfg, str(policy))

        async def go() -> dict[str, float]:
            await asyncio.gather(*[w.start.remote() for w in actors.rollout])

            async def generate(i: int, method: str, **kw: Any) -> Any:
                return await getattr(actors.rollout[i], method).remote(**kw)

            figures, _ = await evaluate_prompts(
                held_out, k=cfg.eval.k, num_workers=len(actors.rollout), generate=generate,
                score=lambda ts: score_trajectories(actors.reward.score.remote, ts),
                max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.eval.temperature,
                correct_reward=cfg.reward.correct_reward)
            return figures

        figures = asyncio.run(go())
    finally:
        runtime.shutdown(actors)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "eval.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"tag": "checkpoint", "checkpoint": str(ckpt), **figures}) + "\n")
    k = int(figures["k"])
    print(f"eval {ckpt}: {int(figures['n'])} problems x {k} samples: pass@1 "
          f"{100 * figures['pass@1']:.1f}%, avg@{k} {100 * figures[f'avg@{k}']:.1f}%, "
          f"pass@{k} {100 * figures[f'pass@{k}']:.1f}%")
    return 0


def _checkpoint_to_resume(cfg: ExperimentConfig) -> Path | None:
    """The latest complete checkpoint when `resume` is set (an error if there is none)."""
    if not cfg.resume:
        return None
    from controller.checkpoint import latest

    ckpt = latest(cfg.run_dir)
    if ckpt is None:
        raise UserError(f"resume: no complete checkpoint in {Path(cfg.run_dir) / 'checkpoints'}")
    if int(ckpt.name.removeprefix("step_")) >= cfg.trainer.total_steps:
        raise UserError(f"resume: {ckpt} is already at trainer.total_steps "
                        f"({cfg.trainer.total_steps}); raise it to train further")
    return ckpt


def _run(cfg: ExperimentConfig) -> int:
    import asyncio

    from controller import runtime
    from controller.controller import Controller

    t_start = time.time()
    run_dir = Path(cfg.run_dir)
    resume = _checkpoint_to_resume(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    rows = _load_rows(cfg)
    model_path = runtime.resolve_model(cfg, progress=cfg.logging.progress_bar)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train = _encode(cfg, rows["train"], "train", tokenizer)
    held_out = _encode(cfg, rows["eval"], "eval", tokenizer)

    from areal_sys.algorithms import build_algorithm

    algo = build_algorithm(cfg.algorithm, max_new_tokens=cfg.rollout.max_new_tokens, rpo=cfg.rpo)
    print(f"algorithm: {algo.summary}")  # which path is active, before anything starts
    runtime.start_ray(cfg)
    actors = None
    try:
        actors = runtime.create_actors(cfg, model_path)

        async def go() -> dict[str, Any]:
            await runtime.start_actors(cfg, actors)
            controller = Controller(cfg, actors, train, held_out, resume=resume)
            try:
                return await controller.run()
            finally:
                controller.close()  # metric sinks (W&B, TensorBoard) before Ray shuts down

        results = asyncio.run(go())
    finally:
        runtime.shutdown(actors)
    elapsed = time.time() - t_start
    results["wall_time_s"] = elapsed
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if results.get("pass_rate_before") is not None and "pass_rate_after" in results:
        before, after = results["pass_rate_before"], results["pass_rate_after"]
        print(f"held-out pass rate: before {100 * before:.1f}% -> after {100 * after:.1f}% "
              f"({100 * (after - before):+.1f} points)")
    print(f"done: {results['steps']} steps in {elapsed:.0f} s; outputs in {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
