"""Shared by every benchmark: the machine description and writing `results/NAME.json` + PNG,
and the one grid runner of the multi-seed learning benchmarks.

Benchmarks print ratios measured in one run (these machines are shared and noisy); they never
assert speed. Each writes `benchmarks/results/NAME.json` with its figures, its settings and the
machine it ran on (`write_results`), and a PNG next to it.

Learning benchmarks (staleness, algorithms, async_vs_sync) run a grid of settings × seeds with
`run_grid`: every setting is an `areal-sys run CONFIG OVERRIDES seed=S` (`pipeline_run`), the model
fixed by `model.tiny_seed` so that a seed varies data order, sampling and RL only; every run
evaluates `eval.k` samples on `eval.num_problems` held-out problems every `eval.every` steps, the
last at the final step (`learning_overrides`), and the before-training evaluation runs once per
seed (`evaluate_initial`), not once per run. `setting_figures` turns a setting's runs into means
and 95% CIs (benchmarks/stats.py), `grid_record` keeps every per-seed value for the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu": platform.processor() or platform.machine(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_results(name: str, figures: dict[str, Any] | list[dict[str, Any]],
                  settings: dict[str, Any], out_dir: Path = RESULTS) -> Path:
    """Write `out_dir/NAME.json` and return its path.

    A dict of figures is written with its keys at the top level plus "settings", "machine" and
    "time". A list (one row per measurement) stays a list; every row gets "machine" and
    "settings" so it stands on its own.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    meta = {"settings": settings, "machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if isinstance(figures, list):
        record: Any = [{**row, **meta} for row in figures]
    else:
        record = {**figures, **meta}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def figure_path(name: str, out_dir: Path = RESULTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir / f"{name}.png"


def run_experiment(config: str, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """`areal-sys run CONFIG run_dir=RUN_DIR OVERRIDES...` in a subprocess (the real pipeline).

    Returns the run's `results.json` plus `metrics` (metrics.jsonl rows) and `wall_s` (the whole
    command, start-up included). Raises with the end of stderr when the run fails.
    """
    import subprocess
    import sys

    from areal_sys.metrics import read_jsonl

    root = Path(__file__).resolve().parent.parent
    args = [sys.executable, "-m", "areal_sys.cli", "run", config, "--overwrite",
            f"run_dir={run_dir}", *overrides]
    t0 = time.time()
    res = subprocess.run(args, cwd=root, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{res.stderr[-3000:]}")
    results = json.loads((Path(run_dir) / "results.json").read_text())
    return {**results, "metrics": read_jsonl(Path(run_dir) / "metrics.jsonl"), "wall_s": wall}


# --- multi-seed learning benchmarks: one grid runner for settings x seeds -----------------------

TASKS = ("first_decision", "chain_tail", "chain_uniform")


@dataclass(frozen=True)
class Setting:
    """One configuration of a learning benchmark: `areal-sys run CONFIG OVERRIDES... seed=S`.
    `meta` is carried into the results (e.g. {"eta": 4, "loss": "ppo_clip"})."""

    name: str
    config: str
    overrides: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Grid:
    """What `run_grid` measured: `runs[setting][seed]` = the run function's figures, `before[seed]`
    = the before-training evaluation's (when asked for); a run that failed is in `failures`
    (setting, seed, the end of its error) and absent from `runs` / `before`."""

    settings: list[Setting]
    seeds: list[int]
    runs: dict[str, dict[int, dict[str, Any]]]
    failures: list[dict[str, Any]]
    before: dict[int, dict[str, Any]] = field(default_factory=dict)

    def per_seed(self, name: str, key: str) -> dict[int, float]:
        """{seed: runs[name][seed][key]} over the seeds that ran."""
        return {seed: float(r[key]) for seed, r in self.runs[name].items()}


RunFn = Callable[[Setting, int, Path], dict[str, Any]]
BeforeFn = Callable[[int, Path], dict[str, Any]]


def run_grid(settings: list[Setting], seeds: list[int], run_fn: RunFn, runs_dir: Path,
             before_fn: BeforeFn | None = None,
             log: Callable[[str], None] = lambda line: print(line, flush=True)) -> Grid:
    """Run every setting with every seed, seed by seed (all settings of seed 1, then of seed 2, ...)
    so that a slow drift of a shared machine spreads over the settings instead of favouring the
    first, and an interrupted sweep holds complete seeds. `run_fn(setting, seed, run_dir)` runs
    one in `runs_dir/NAME/seedS`; `before_fn(seed, run_dir)`, when given, runs once per seed
    first (in `runs_dir/before/seedS`). A RuntimeError (a failed run) is recorded in `failures`
    and the sweep goes on."""
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise ValueError(f"setting names must be unique: {names}")
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"seeds must be distinct and at least one: {seeds}")
    grid = Grid(list(settings), list(seeds), {n: {} for n in names}, [])
    for seed in seeds:
        if before_fn is not None:
            try:
                grid.before[seed] = before_fn(seed, runs_dir / "before" / f"seed{seed}")
                log(f"before training, seed {seed}: {short_line(grid.before[seed])}")
            except RuntimeError as e:
                grid.failures.append({"setting": "before", "seed": seed, "error": str(e)[-2000:]})
                log(f"before training, seed {seed}: FAILED ({str(e).splitlines()[0][:200]})")
        for s in settings:
            t0 = time.time()
            try:
                grid.runs[s.name][seed] = run_fn(s, seed, runs_dir / s.name / f"seed{seed}")
            except RuntimeError as e:
                grid.failures.append({"setting": s.name, "seed": seed, "error": str(e)[-2000:]})
                log(f"{s.name} seed {seed}: FAILED ({str(e).splitlines()[0][:200]})")
                continue
            log(f"{s.name} seed {seed}: {short_line(grid.runs[s.name][seed])} "
                f"({time.time() - t0:.0f} s)")
    return grid


def short_line(r: dict[str, Any]) -> str:
    """The console line of one run's figures."""
    rate = r.get("pass_rate")
    return (f"pass {100 * rate:.1f}%" if rate is not None else "") + \
        (f", train {r['wall_s']:.0f} s" if "wall_s" in r else "")


def seed_args(p: argparse.ArgumentParser, *, steps: int, eval_problems: int = 512,
              eval_k: int = 4, task: bool = True) -> None:
    """The options every multi-seed learning benchmark takes (`--task` unless the benchmark
    fixes its task)."""
    p.add_argument("--seeds", type=int, default=3, help="run seeds 1..K")
    p.add_argument("--seed-list", default=None,
                   help="explicit seeds, e.g. 1,5,9 (wins over --seeds)")
    if task:
        p.add_argument("--task", choices=TASKS, default="first_decision",
                       help="data.synthetic_task of every run")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--eval-problems", type=int, default=eval_problems,
                   help="held-out problems (eval.num_problems = data.synthetic_eval_size)")
    p.add_argument("--eval-k", type=int, default=eval_k, help="samples per held-out problem")
    p.add_argument("--tiny-seed", type=int, default=1, help="model.tiny_seed: the fixed model")
    p.add_argument("--reuse", action="store_true",
                   help="read runs already finished in --runs-dir with the same command")
    p.add_argument("--collect-only", action="store_true",
                   help="run nothing: write the results from the runs (and before-training "
                   "evaluations) already finished in --runs-dir; the others count as failures")
    p.add_argument("--out-dir", default=str(RESULTS), help="where NAME.json and NAME.png go")


def seeds_of(a: argparse.Namespace) -> list[int]:
    if a.seed_list:
        return [int(s) for s in a.seed_list.split(",")]
    if a.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    return list(range(1, a.seeds + 1))


def eval_every(steps: int, points: int) -> int:
    """`eval.every` giving about `points` evaluations, the last one at the final step (the
    smallest divisor of `steps` that is >= steps / points)."""
    return next(d for d in range(max(1, -(-steps // max(points, 1))), steps + 1) if steps % d == 0)


def learning_overrides(a: argparse.Namespace, *, curve_points: int,
                       kl_to_initial: bool = False) -> list[str]:
    """Overrides every run of a multi-seed learning benchmark shares: the fixed model, the task,
    the budget, and the held-out evaluation every `eval_every(steps, curve_points)` steps (the
    last at the final step, which is the final pass rate). The before-training evaluation is not
    repeated in every run: `evaluate_initial` measures it once per seed."""
    out = [f"model.tiny_seed={a.tiny_seed}", f"data.synthetic_task={a.task}",
           f"trainer.total_steps={a.steps}", f"controller.batch_size={a.batch_size}",
           f"rollout.n_samples={a.n_samples}", f"eval.num_problems={a.eval_problems}",
           f"data.synthetic_eval_size={a.eval_problems}", f"eval.k={a.eval_k}",
           "eval.before_and_after=false", f"eval.every={eval_every(a.steps, curve_points)}",
           "logging.progress_bar=false", f"logging.kl_to_initial={str(kl_to_initial).lower()}"]
    return out + ["logging.kl_to_initial_every=1"] if kl_to_initial else out


def _cli(args: list[str], what: str) -> float:
    """`python -m areal_sys.cli ARGS` from the repository root; its wall seconds."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "areal_sys.cli", *args], cwd=root,
                         capture_output=True, text=True)
    if res.returncode != 0:  # the console's lines (stdout) and stderr; the rest is in its logs
        raise RuntimeError(f"{what} failed with exit code {res.returncode}:\n"
                           f"{res.stdout[-2000:]}{res.stderr[-3000:]}")
    return time.time() - t0


def pipeline_run(setting: Setting, seed: int, run_dir: Path, reuse: bool = False,
                 collect_only: bool = False) -> dict[str, Any]:
    """The real run function of `run_grid`: `areal-sys run` of the setting with `seed=S`, then
    `collect_run`. With `reuse`, a run_dir whose finished run had the same command (its run_dir
    aside) is read instead of run again (an interrupted sweep continues where it stopped); with
    `collect_only`, such a run is read and any other is a failure (nothing runs)."""
    args = ["run", setting.config, "--overwrite", f"run_dir={run_dir}", *setting.overrides,
            f"seed={seed}"]
    stamp = run_dir / "bench_command.json"
    if (reuse or collect_only) and (run_dir / "results.json").is_file() and stamp.is_file() \
            and _without_run_dir(json.loads(stamp.read_text())) == _without_run_dir(args):
        return collect_run(run_dir)
    if collect_only:
        raise RuntimeError(f"{setting.name} seed {seed}: no finished run with this command")
    command_s = _cli(args, f"{setting.name} seed {seed}")
    stamp.write_text(json.dumps(args) + "\n")
    return {**collect_run(run_dir), "command_s": command_s}


def _without_run_dir(args: list[str]) -> list[str]:
    """A run's command without its `run_dir=` (the stamp lives in that directory, which may have
    been named relative to another working directory or moved)."""
    return [a for a in args if not a.startswith("run_dir=")]


def collect_run(run_dir: Path) -> dict[str, Any]:
    """One finished run's figures: final `pass_rate` (avg@k of the last evaluation, which must be
    at the final step), the `curve` [(step, pass_rate)], per-step `metrics` rows, `wall_s` (the
    training loop: sum of step_time_s; start-up and evaluations excluded) and `staleness_hist`
    {staleness: trajectories} (trainer version − oldest token version, staleness.jsonl)."""
    from areal_sys.metrics import read_jsonl

    results = json.loads((run_dir / "results.json").read_text())
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    evals = [e for e in read_jsonl(run_dir / "eval.jsonl") if e.get("tag") != "before"]
    if not evals or evals[-1].get("version") != results["steps"]:
        raise RuntimeError(f"{run_dir}: no evaluation at the final step {results['steps']} "
                           f"(eval.jsonl: {[e.get('version') for e in evals]})")
    hist: dict[int, int] = {}
    for a in read_jsonl(run_dir / "staleness.jsonl"):
        s = int(a["trainer_version"] - a["min_token_version"])
        hist[s] = hist.get(s, 0) + 1
    return {"pass_rate": evals[-1]["pass_rate"], "eval_final": evals[-1],
            "curve": [(int(e["version"]), float(e["pass_rate"])) for e in evals],
            "metrics": metrics, "wall_s": sum(m["step_time_s"] for m in metrics),
            "wall_time_s": results.get("wall_time_s"), "staleness_hist": dict(sorted(hist.items())),
            "groups_filtered": int(results.get("groups_filtered", 0))}


def evaluate_initial(config: str, overrides: list[str], seed: int, run_dir: Path,
                     collect_only: bool = False, reuse: bool = False) -> dict[str, Any]:
    """The held-out pass rate before training, for one seed: `areal-sys eval CONFIG --checkpoint
    MODEL` on the initial model (the one every run of the grid starts from: `resolve_model` of the
    same config, so the fixed `model.tiny_seed` and the task's model) with the runs' evaluation
    settings. It only depends on the model, the eval set and the sampling seed, so one per seed
    serves every setting; measured in a run it would cost one evaluation per run. With `reuse`,
    an evaluation an earlier invocation finished in run_dir with the same command is read (as
    `pipeline_run` reads a finished run)."""
    import shutil

    from areal_sys.config import load_config
    from areal_sys.metrics import read_jsonl
    from controller.runtime import resolve_model

    args = [*overrides, f"seed={seed}"]
    path, stamp = run_dir / "eval.jsonl", run_dir / "bench_command.json"
    if collect_only:  # the evaluation an earlier invocation left in run_dir, if any
        if not path.is_file():
            raise RuntimeError(f"evaluation before training, seed {seed}: not run")
        line = _portable(read_jsonl(path)[-1])
        return {"pass_rate": line["pass_rate"], "eval": line}
    if reuse and path.is_file() and stamp.is_file() \
            and json.loads(stamp.read_text()) == [config, *args]:
        line = _portable(read_jsonl(path)[-1])
        return {"pass_rate": line["pass_rate"], "eval": line}
    model_dir = resolve_model(load_config(config, args), progress=False)
    shutil.rmtree(run_dir, ignore_errors=True)
    command_s = _cli(["eval", config, "--checkpoint", model_dir, f"run_dir={run_dir}", *args],
                     f"evaluation before training, seed {seed}")
    stamp.write_text(json.dumps([config, *args]) + "\n")
    line = _portable(read_jsonl(path)[-1])
    return {"pass_rate": line["pass_rate"], "eval": line, "command_s": command_s}


def _portable(line: dict[str, Any]) -> dict[str, Any]:
    """An eval.jsonl line without this machine's paths: the checkpoint by its directory name
    (the results files are committed)."""
    if "checkpoint" in line:
        return {**line, "checkpoint": Path(line["checkpoint"]).name}
    return line


def per_step(runs: dict[int, dict[str, Any]], key: str) -> dict[int, list[float]]:
    """{seed: [metric per step]} (a step without the metric is skipped)."""
    return {seed: [m[key] for m in r["metrics"] if key in m] for seed, r in runs.items()}


def step_mean(runs: dict[int, dict[str, Any]], key: str) -> dict[int, float]:
    """{seed: mean over the steps of a per-step metric} (seeds whose run never logged it are
    left out)."""
    return {seed: sum(v) / len(v) for seed, v in per_step(runs, key).items() if v}


def curve_summary(runs: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The learning curve across seeds: at each evaluated step that every seed has, the
    `stats.summarize` of the seeds' pass rates, plus "step"."""
    from benchmarks.stats import summarize

    curves = [dict(r["curve"]) for r in runs.values()]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return [{"step": s, **summarize([c[s] for c in curves])} for s in steps]


def grid_record(grid: Grid, keep_metrics: tuple[str, ...] = ()) -> dict[str, Any]:
    """The per-seed part of a benchmark's JSON: for each setting its meta and, per seed, the final
    pass rate, curve, wall time, staleness histogram and the per-step metrics named in
    `keep_metrics`; the before-training pass rate per seed; the seeds and the failures."""
    def slim(r: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in r.items() if k not in ("metrics", "eval_final")}
        out.update({k: [m.get(k) for m in r["metrics"]] for k in keep_metrics})
        return out

    return {"seeds": grid.seeds, "failures": grid.failures,
            "pass_rate_before_by_seed": {str(s): b["pass_rate"] for s, b in grid.before.items()},
            "before_by_seed": {str(s): b for s, b in grid.before.items()},
            "per_seed": {s.name: {"meta": s.meta, "overrides": list(s.overrides),
                                  "by_seed": {str(seed): slim(r)
                                              for seed, r in grid.runs[s.name].items()}}
                         for s in grid.settings}}


def setting_figures(runs: dict[int, dict[str, Any]], step_metrics: tuple[str, ...] = (),
                    before: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One setting's figures across its seeds (`stats.summarize` each): `pass_rate` (points, the
    final evaluation), `gain` (points, pass rate − the same seed's before-training pass rate, when
    `before` is given), `wall_s`, the `curve` (points), and for every per-step metric M its mean
    over the steps (`M`) and its mean over the seeds at each step (`M_by_step`)."""
    from benchmarks.stats import scaled, summarize

    seeds = sorted(runs)
    if not seeds:
        return {"n": 0}
    rates = {s: runs[s]["pass_rate"] for s in seeds}
    out: dict[str, Any] = {
        "n": len(seeds), "pass_rate": scaled(summarize([rates[s] for s in seeds]), 100),
        "wall_s": summarize([runs[s]["wall_s"] for s in seeds]),
        "curve": [scaled(c, 100) for c in curve_summary(runs)],
    }
    if before:
        paired = [s for s in seeds if s in before]
        if paired:
            gains = [rates[s] - before[s]["pass_rate"] for s in paired]
            out["gain"] = scaled(summarize(gains), 100)
    for key in step_metrics:
        means = step_mean(runs, key)
        if not means:
            continue
        out[key] = summarize([means[s] for s in sorted(means)])
        series = [v for v in per_step(runs, key).values() if v]
        length = min(len(v) for v in series)
        out[f"{key}_by_step"] = [sum(v[i] for v in series) / len(series) for i in range(length)]
    return out


def pooled_hist(runs: dict[int, dict[str, Any]]) -> dict[str, int]:
    """The staleness histogram of every seed's trained trajectories together (JSON keys)."""
    total: dict[int, int] = {}
    for r in runs.values():
        for s, n in r["staleness_hist"].items():
            total[int(s)] = total.get(int(s), 0) + n
    return {str(s): total[s] for s in sorted(total)}
