"""`areal-sys` command line: run, validate, eval, report, algorithms, reward-serve and more.

Every user error (usage, configuration, data, model, run directory) ends with one line on stderr,
`areal-sys: error: ...`, and exit code 2, before Ray starts and before anything is written.

At default verbosity the console shows our own lines only; the third-party output of `run` and
`eval` goes to RUN_DIR/logs/ (areal_sys/console.py), that of `report` to RUN_DIR/logs/report.log,
and `reward-serve` logs third-party loggers at WARNING and above. `--verbose` shows everything
(and AREAL_SYS_VERBOSE=1, which `bench --verbose` sets, does so for the commands it starts).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from areal_sys.config import ConfigError, ExperimentConfig, load_config
from areal_sys.console import OWN_LOGGERS, VERBOSE_ENV, verbose_from_env
from controller.preflight import (  # light: the run's checks import their tools when they run
    RUN_OUTPUTS,
    UserError,
    check_episode,
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


def version() -> str:
    """The installed package's version (pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("areal-sys")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


CONFIG_HELP = "a YAML config file, e.g. configs/local_tiny.yaml"
OVERRIDES_HELP = "dotted overrides, e.g. trainer.total_steps=5"


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="areal-sys", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true",
                         help="show every process's output (vLLM, Ray, DeepSpeed, ...) on the "
                         f"console instead of RUN_DIR/logs/ (or {VERBOSE_ENV}=1)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help: str, verbose_flag: bool = False, **kw: Any) -> Any:
        return sub.add_parser(name, help=help, description=help,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                              parents=[verbose] if verbose_flag else [], **kw)

    run = command("run", "train: areal-sys run CONFIG [a.b=c ...]", verbose_flag=True)
    run.add_argument("config", help=CONFIG_HELP)
    run.add_argument("overrides", nargs="*", default=[], help=OVERRIDES_HELP)
    run.add_argument("--resume", action="store_true",
                     help="continue from the latest complete checkpoint in run_dir (resume=true)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an earlier run in run_dir: its outputs (" + ", ".join(
                         RUN_OUTPUTS) + ") are deleted once the new run has passed validation")
    val = command("validate", "check a config, its datasets, model and prompts without "
                  "starting anything")
    val.add_argument("config", help=CONFIG_HELP)
    val.add_argument("overrides", nargs="*", default=[], help=OVERRIDES_HELP)
    ev = command("eval", "held-out pass@1 / avg@k of a saved policy: areal-sys eval CONFIG "
                 "--checkpoint DIR", verbose_flag=True)
    ev.add_argument("config", help=CONFIG_HELP)
    ev.add_argument("overrides", nargs="*", default=[], help=OVERRIDES_HELP)
    ev.add_argument("--checkpoint", required=True,
                    help="RUN_DIR/checkpoints/step_N (or any Hugging Face model directory)")
    command("algorithms", "list the algorithm presets and every registered piece")
    cfg = command("config", "inspect a configuration: areal-sys config show CONFIG [a.b=c ...]")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    show = cfg_sub.add_parser("show", help="print the resolved config as YAML, each field's "
                              "description as a comment above it",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    show.add_argument("config", nargs="?", default=None,
                      help=CONFIG_HELP + "; none: the built-in defaults")
    show.add_argument("overrides", nargs="*", default=[], help=OVERRIDES_HELP)
    rep = command("report", "PNG figures of a run into RUN_DIR/report/", verbose_flag=True)
    rep.add_argument("run_dir", help="the run's directory (its metrics.jsonl, eval.jsonl, ...)")
    tiny = command("make-tiny-model", "build (or reuse) the cached tiny CPU model")
    tiny.add_argument("--seed", type=_count, default=1, help="the model's initialisation seed")
    tiny.add_argument("--sft-steps", type=_count, default=None,
                      help="supervised warm-start steps (None: the task's default)")
    tiny.add_argument("--task", choices=("first_decision", "chain_tail", "chain_uniform",
                                         "tool_mul"),
                      default="first_decision", help="the built-in task it is warm-started for")
    sub.add_parser("reward-serve", add_help=False,
                   help="HTTP reward service (POST /score, GET /health); --help for options, "
                   "-v/--verbose for third-party INFO logs")
    bench = command("bench", "run benchmarks/NAME.py [its options] (source checkout)",
                    verbose_flag=True)
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
        return _reward_serve(argv[1:])
    args = _parse(argv)
    verbose = getattr(args, "verbose", False) or verbose_from_env()
    try:
        if args.command == "config":
            print(show_config(load_config(args.config, args.overrides)))
            return 0
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
            return _bench(args.name, args.args, verbose)
        if args.command == "report":
            return _report(args.run_dir, verbose)
        loud = ["logging.verbose=true"] if verbose else []
        if args.command == "eval":
            return _eval(load_config(args.config, [*args.overrides, *loud]), args.checkpoint)
        if args.command == "run":
            overrides = [*args.overrides, *(["resume=true"] if args.resume else []), *loud]
            return _run(load_config(args.config, overrides), overwrite=args.overwrite)
    except (ConfigError, UserError) as e:
        _error(str(e))
        return EXIT_USAGE
    except RuntimeError as e:
        if type(e).__name__ == "EngineStartError":  # workers/engine_start.py: one line
            _error(str(e) + _notes(e))
            return 1
        if type(e).__name__ not in ("TrainerDied", "PeerTimedOut"):  # controller/actors.py
            raise
        again = ["areal-sys", *(argv if argv is not None else sys.argv[1:])]
        again += [] if "--resume" in again else ["--resume"]
        print(f"areal-sys: error: {e}; the run stopped{_notes(e)}. Resume from its last "
              f"checkpoint with: {' '.join(again)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("areal-sys: interrupted", file=sys.stderr)
        return 130
    return 0


def _notes(e: BaseException) -> str:
    """The notes an exception carries (e.g. where the run's logs are), as `; NOTE` text."""
    return "".join(f"; {note}" for note in getattr(e, "__notes__", []))


def _reward_serve(argv: list[str]) -> int:
    """`reward-serve` with its own flags (reward_service/cli.py); without -v/--verbose only our
    own loggers log below WARNING (its logging.basicConfig finds the handler set here)."""
    import logging

    from reward_service.cli import main as reward_serve

    verbose = bool({"-v", "--verbose"} & set(argv)) or verbose_from_env()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(_own_or_warning)
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    return reward_serve([a for a in argv if a not in ("-v", "--verbose")])


def _own_or_warning(record: Any) -> bool:
    """A logging filter: records of our own packages, and anyone's from WARNING up."""
    return record.levelno >= 30 or record.name.split(".")[0] in OWN_LOGGERS


def show_config(cfg: Any, indent: str = "") -> str:
    """`cfg` (a pydantic model) as YAML that loads back to it, each field's description (and
    each section's docstring) as `#` comments above it."""
    import yaml
    from pydantic import BaseModel

    lines: list[str] = []
    width = 98 - len(indent)
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        doc = field.description or (isinstance(value, BaseModel)
                                    and type(value).__dict__.get("__doc__")) or ""
        lines += [f"{indent}# {ln}" for ln in textwrap.wrap(" ".join(doc.split()), width)]
        if isinstance(value, BaseModel):
            lines.append(f"{indent}{name}:")
            lines.append(show_config(value, indent + "  "))
            continue
        plain = cfg.model_dump(mode="json", include={name})[name]
        text = yaml.safe_dump({name: plain}, sort_keys=False, width=10**6)
        lines += [indent + ln for ln in text.rstrip("\n").splitlines()]
    return "\n".join(lines)


# modules of benchmarks/ that are not benchmarks
BENCH_HELPERS = {"__init__", "common", "stats", "table"}


def _bench(name: str, args: list[str], verbose: bool = False) -> int:
    """Run `benchmarks/NAME.py ARGS` with this interpreter; its exit code is ours. With
    `verbose`, the areal-sys commands it starts are verbose too (AREAL_SYS_VERBOSE=1)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent / "benchmarks"
    names = sorted(p.stem for p in root.glob("*.py") if p.stem not in BENCH_HELPERS)
    if name == "list":
        print("\n".join(names))
        return 0
    if name not in names:
        where = f"one of {', '.join(names)}" if names else f"no benchmarks found in {root}"
        raise UserError(f"bench: unknown benchmark {name!r}; {where}")
    env = {**os.environ, **({VERBOSE_ENV: "1"} if verbose else {})}
    return subprocess.run([sys.executable, str(root / f"{name}.py"), *args],
                          cwd=root.parent, env=env).returncode


def _report(run_dir: str, verbose: bool = False) -> int:
    """Write the run's figures (areal_sys/report.py); print them and each worker's busy time.
    matplotlib's and the others' output goes to RUN_DIR/logs/report.log unless `verbose`."""
    from areal_sys.console import capture, log_dir
    from areal_sys.report import ReportError, write_report

    quiet = not verbose and Path(run_dir).is_dir()  # a missing run_dir: ReportError says so
    try:
        with capture(log_dir(run_dir) / "report.log" if quiet else None):
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
        check_episode(cfg, tokenizer)
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
