"""`areal-sys` command line: run, validate, eval, report, algorithms, reward-serve and more.

Every user error (usage, configuration, data, model, run directory) ends with one line on stderr,
`areal-sys: error: ...`, and exit code 2, before Ray starts and before anything is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from areal_sys.config import ConfigError, ExperimentConfig, load_config
from controller.preflight import (  # light: the run's checks import their tools when they run
    RUN_OUTPUTS,
    UserError,
    check_run_dir,
    checkpoint_to_resume,
    encode_prompts,
    load_datasets,
    local_tokenizer,
)

EXIT_USAGE = 2


def _error(text: str) -> None:
    """Print `areal-sys: error: TEXT` as one line: control characters a path or value may hold
    (newlines, escapes, undecodable bytes) are written as escapes."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    print(f"areal-sys: error: {text}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (`areal-sys: error: ...`, exit 2), no usage."""

    def error(self, message: str) -> Any:
        command = self.prog.removeprefix("areal-sys").strip()
        _error(" ".join(f"{command + ': ' if command else ''}{message}".split()))
        raise SystemExit(EXIT_USAGE)


def _count(text: str) -> int:
    """An argparse type: a whole number in [0, 2**31 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r:.40}") from None
    if not 0 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"expected a whole number in [0, 2**31), got {text:.40}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="areal-sys", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train: areal-sys run CONFIG [a.b=c ...]")
    run.add_argument("config")
    run.add_argument("overrides", nargs="*", default=[],
                     help="dotted overrides, e.g. trainer.total_steps=5")
    run.add_argument("--resume", action="store_true",
                     help="continue from the latest complete checkpoint in run_dir (resume=true)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an earlier run in run_dir: its outputs (" + ", ".join(
                         RUN_OUTPUTS) + ") are deleted once the new run has passed validation")
    val = sub.add_parser("validate", help="check a config, its datasets, model and prompts "
                         "without starting anything")
    val.add_argument("config")
    val.add_argument("overrides", nargs="*", default=[])
    ev = sub.add_parser("eval", help="held-out pass@1 / avg@k of a saved policy: "
                        "areal-sys eval CONFIG --checkpoint DIR")
    ev.add_argument("config")
    ev.add_argument("overrides", nargs="*", default=[])
    ev.add_argument("--checkpoint", required=True,
                    help="RUN_DIR/checkpoints/step_N (or any Hugging Face model directory)")
    sub.add_parser("algorithms", help="list the algorithm presets and every registered piece")
    rep = sub.add_parser("report", help="PNG figures of a run into RUN_DIR/report/")
    rep.add_argument("run_dir")
    tiny = sub.add_parser("make-tiny-model", help="build (or reuse) the cached tiny CPU model")
    tiny.add_argument("--seed", type=_count, default=1)
    tiny.add_argument("--sft-steps", type=_count, default=None)
    tiny.add_argument("--task", choices=("first_decision", "chain_tail", "chain_uniform"),
                      default="first_decision", help="the built-in task it is warm-started for")
    sub.add_parser("reward-serve", add_help=False,
                        help="HTTP reward service (POST /score, GET /health); --help for options")
    bench = sub.add_parser("bench", help="run benchmarks/NAME.py [its options] (source checkout)")
    bench.add_argument("name", help="a benchmark, e.g. async_vs_sync; 'list' lists them")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    return p


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse `argv`; dotted overrides may come before or after the flags (`run C --resume a=b`)."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    flags = [x for x in extra if x.startswith("-")]
    if hasattr(args, "overrides") and not flags:
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["reward-serve"]:  # its own flags: reward_service/cli.py
        from reward_service.cli import main as reward_serve

        return reward_serve(argv[1:])
    args = _parse(argv)
    try:
        if args.command == "validate":
            return _validate(load_config(args.config, args.overrides), args.config)
        if args.command == "algorithms":
            print(_algorithms_listing())
            return 0
        if args.command == "make-tiny-model":
            from areal_sys.models.chain_model import ensure_task_model

            print(ensure_task_model(args.task, seed=args.seed, sft_steps=args.sft_steps))
            return 0
        if args.command == "bench":
            return _bench(args.name, args.args)
        if args.command == "report":
            return _report(args.run_dir)
        if args.command == "eval":
            return _eval(load_config(args.config, args.overrides), args.checkpoint)
        if args.command == "run":
            overrides = [*args.overrides, *(["resume=true"] if args.resume else [])]
            return _run(load_config(args.config, overrides), overwrite=args.overwrite)
    except (ConfigError, UserError) as e:
        _error(str(e))
        return EXIT_USAGE
    except RuntimeError as e:
        if type(e).__name__ == "EngineStartError":  # workers/engine_start.py: one line
            _error(str(e))
            return 1
        if type(e).__name__ != "TrainerDied":  # controller/actors.py
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


# modules of benchmarks/ that are not benchmarks
BENCH_HELPERS = {"__init__", "common", "stats", "table"}


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


def _validate(cfg: ExperimentConfig, config: str) -> int:
    """Everything checkable without Ray: config, datasets, model directory, prompt lengths,
    run_dir. Writes nothing."""
    earlier = check_run_dir(cfg.run_dir)
    checkpoint_to_resume(cfg)
    rows = load_datasets(cfg)
    tokenizer, note = local_tokenizer(cfg)
    if tokenizer is not None:
        for split in ("train", "eval"):
            encode_prompts(cfg, rows[split], split, tokenizer)
    print(f"ok: {config} (algorithm {cfg.algorithm.name}, model {cfg.model.path}, "
          f"eta {cfg.controller.max_staleness}, {cfg.trainer.total_steps} steps; "
          f"{len(rows['train'])} train and {len(rows['eval'])} eval prompts)")
    if note:
        print(f"note: {note}")
    if warning := cfg.algorithm.reward_warning(cfg.reward.correct_reward, cfg.reward.wrong_reward):
        print(f"warning: {warning}")
    if earlier and not cfg.resume:
        print(f"note: run_dir {cfg.run_dir} holds an earlier run; `areal-sys run` needs "
              f"--resume or --overwrite")
    return 0


def _eval(cfg: ExperimentConfig, checkpoint_dir: str) -> int:
    """pass@1, avg@k and pass@k of a saved policy on the held-out set (controller/launch.py)."""
    from controller.launch import evaluate_checkpoint

    return evaluate_checkpoint(cfg, checkpoint_dir)


def _run(cfg: ExperimentConfig, overwrite: bool = False) -> int:
    """Validate, then train (controller/launch.py, the run's composition root): a failed
    validation writes nothing and starts nothing."""
    from controller.launch import run

    return run(cfg, overwrite=overwrite)


if __name__ == "__main__":
    raise SystemExit(main())
