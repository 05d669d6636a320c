"""areal_sys against Hugging Face TRL's GRPOTrainer on the same model, task, batch and steps.

    pip install -e ".[trl]"            # TRL is an optional extra (see pyproject.toml)
    python benchmarks/vs_trl.py [--runs 3] [--steps 40]
    python benchmarks/vs_trl.py --runs 1 --steps 2 --eval-problems 16 --eval-k 2   # smoke run

Both systems train the cached tiny model (`model.tiny_seed`) on the built-in `first_decision`
task with the same reward (areal_sys.data.synthetic.is_correct: `reward.correct_reward` when the
final answer is right, `reward.wrong_reward` otherwise), 16 prompts x 8 samples per step, 160 new
tokens, lr 1e-4 (constant, no warm-up), token-mean loss, no KL term, the same step count. Run i
of each system uses seed i; the two systems alternate (areal_sys run 1, TRL run 1, areal_sys
run 2, ...) so that a slow drift of a shared machine spreads over both.

- areal_sys: `areal-sys run configs/local_tiny.yaml` (vLLM-CPU rollout overlapped with the
  DeepSpeed trainer, packed sequences), its final checkpoint saved at the last step.
- TRL: `GRPOTrainer` in a subprocess of this script (`--trl-worker`), generating with
  transformers' `generate` (TRL's default; its vLLM modes need vLLM on the device, and on CPU
  the earlier hand-made comparison needed a patch to sync weights into vllm-cpu at all), then
  training, in turn, on padded batches; the final policy is saved with `save_model`.

Figures per run: `step_s` = mean seconds per training step (areal_sys: the steps' `step_time_s`;
TRL: wall time between consecutive optimizer steps, generation included), `train_s` = their sum,
`tokens_generated` = generated tokens over the run (areal_sys: those of the trained batches,
so generation still in flight at the last step is not counted; TRL: every scored completion),
and `pass_rate` = the held-out pass rate (avg@k) of the final policy by ONE shared evaluator:
`areal-sys eval configs/local_tiny.yaml --checkpoint DIR` on both systems' saved policies, with
the same problems, k, temperature and sampling seed (the areal_sys run's in-run evaluation is
switched off). Across runs: mean and 95% CI (benchmarks/stats.py) of each, the per-run ratio
TRL step_s / areal_sys step_s, and the paired pass-rate difference (areal_sys − TRL, points).
Every setting that could not be matched is listed in the results (`UNMATCHED`).
Writes benchmarks/results/vs_trl.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, _cli, figure_path, write_results  # noqa: E402
from benchmarks.stats import fmt, paired_difference, scaled, summarize  # noqa: E402

CONFIG = "configs/local_tiny.yaml"
TRL_MISSING = ("vs_trl: TRL is not installed; install the optional extra with "
               "`pip install -e \".[trl]\"` (or `uv pip install trl`) and rerun")

# Settings both systems share, by design (the brief of the comparison).
MATCHED: list[tuple[str, str]] = [
    ("model", "the cached tiny model of `first_decision` (model.tiny_seed), fp32"),
    ("task", "first_decision train rows of seed i (data.synthetic_train_size problems)"),
    ("reward", "synthetic.is_correct: correct_reward / wrong_reward of the config (1 / 0)"),
    ("batch", "16 prompts x 8 samples = 128 sequences per optimizer step"),
    ("generation", "temperature 1.0, no top-p / top-k, 160 new tokens at most"),
    ("optimizer", "AdamW, lr 1e-4 constant, no warm-up, betas (0.9, 0.999), eps 1e-8, "
     "weight decay 0, gradient clip 1.0"),
    ("loss", "token-mean over the step's batch (areal_sys algorithm.aggregation token-mean, TRL "
     "loss_type 'dapo' = normalised by the active tokens of the accumulated batch); no KL "
     "term (TRL beta 0, areal_sys kl_coef 0); one update per batch (TRL num_iterations 1, "
     "areal_sys ppo_minibatches 1)"),
    ("advantage", "group mean and std of the 8 samples (TRL scale_rewards 'group', areal_sys "
     "grpo, unbiased std as TRL)"),
    ("zero-signal groups", "kept: groups whose 8 rewards are equal count in the token mean "
     "with zero advantage (areal_sys algorithm.filter none; TRL has no filter)"),
    ("evaluation", "one evaluator for both: `areal-sys eval` of the saved final policy"),
]

# Settings that could not be matched, and why.
UNMATCHED: list[tuple[str, str, str, str]] = [
    # (setting, areal_sys, TRL, why)
    ("schedule", "generation overlapped with training (max_staleness 1, decoupled PPO "
     "corrects the staleness)", "generate, then train, in turn (on-policy)",
     "the systems' designs: this is what the comparison measures"),
    ("batch layout", "sequences packed into microbatches (max_tokens_per_microbatch 1024)",
     "prompts left-padded and completions right-padded to the longest in the batch",
     "the systems' designs"),
    ("generation engine", "vLLM-CPU, one engine on 1 core", "transformers `generate` on every "
     "core (use_vllm false)", "TRL's vLLM modes: on CPU the earlier comparison needed a "
     "patch to sync weights into vllm-cpu, and TRL 1.16 supports vLLM 0.22-0.31 while the "
     "cpu extra installs vllm-cpu 0.32"),
    ("cores", "rollout 1 core, trainer 1 core (cluster.rollout_cpus / trainer_cpus)",
     "one process, torch on every core for both phases", "TRL has no core split"),
    ("trainer", "DeepSpeed ZeRO-1, one worker", "transformers Trainer (accelerate), one "
     "process, gradient accumulation over microbatches of --trl-micro-batch",
     "each system's own trainer"),
    ("objective", "decoupled PPO (behaviour / proximal / current policy)", "TRL's clipped "
     "GRPO objective with num_iterations 1 (the ratio is 1: plain policy gradient)",
     "same update on fresh data; they differ only on stale samples"),
    ("data order", "areal_sys's loader shuffle (seed i)", "TRL's sampler shuffle (seed i)",
     "each system's own sampler: same rows, other order"),
    ("kl_to_initial", "off (logging.kl_to_initial=false: a metric-only reference forward)",
     "no reference model (beta 0)", "matched in cost: neither runs a reference forward"),
]


def settings_table() -> dict[str, Any]:
    """The settings of the comparison: what both share and what differs (JSON-ready)."""
    return {"matched": [{"setting": s, "value": v} for s, v in MATCHED],
            "unmatched": [{"setting": s, "areal_sys": a, "trl": t, "why": w}
                          for s, a, t, w in UNMATCHED]}


def require_trl() -> str:
    """TRL's version; prints one line and exits with code 2 when TRL is not installed."""
    try:
        import trl
    except ImportError:
        print(TRL_MISSING, file=sys.stderr)
        raise SystemExit(2) from None
    return str(getattr(trl, "__version__", "unknown"))


# --- the two systems ----------------------------------------------------------------------------

def common_overrides(a: argparse.Namespace) -> list[str]:
    """Overrides of configs/local_tiny.yaml both systems read (the TRL worker takes the model,
    data and reward values from the same config)."""
    return [f"model.tiny_seed={a.tiny_seed}", "data.synthetic_task=first_decision",
            f"trainer.total_steps={a.steps}", f"controller.batch_size={a.batch_size}",
            f"rollout.n_samples={a.n_samples}", f"rollout.max_new_tokens={a.max_new_tokens}",
            f"trainer.lr={a.lr}", f"eval.num_problems={a.eval_problems}",
            f"data.synthetic_eval_size={a.eval_problems}", f"eval.k={a.eval_k}",
            "logging.progress_bar=false"]


def run_areal(a: argparse.Namespace, seed: int, run_dir: Path) -> dict[str, Any]:
    """One areal_sys run; its training figures and the final checkpoint's directory."""
    from areal_sys.metrics import read_jsonl

    args = ["run", CONFIG, "--overwrite", f"run_dir={run_dir}", *common_overrides(a),
            "eval.before_and_after=false", "eval.every=0", f"trainer.save_every={a.steps}",
            "logging.kl_to_initial=false", f"seed={seed}"]
    command_s = _cli(args, f"areal_sys run {seed}")
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"),
                   key=lambda p: int(p.name.removeprefix("step_")))
    if not ckpts:
        raise RuntimeError(f"areal_sys run {seed}: no checkpoint in {run_dir / 'checkpoints'}")
    steps = [m["step_time_s"] for m in metrics]
    return {"step_s": sum(steps) / len(steps), "train_s": sum(steps), "steps": len(steps),
            "step_time_s": steps, "tokens_generated": sum(m["tokens_generated"] for m in metrics),
            "command_s": command_s, "policy_dir": str(ckpts[-1])}


def run_trl(a: argparse.Namespace, seed: int, run_dir: Path) -> dict[str, Any]:
    """One TRL run, in a fresh process (`--trl-worker`) as areal_sys's is."""
    import subprocess

    run_dir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, str(Path(__file__).resolve()), "--trl-worker", "--seed", str(seed),
            "--run-dir", str(run_dir), *_shared_flags(a)]
    t0 = time.time()
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"TRL run {seed} failed:\n{res.stderr[-3000:]}")
    out = json.loads((run_dir / "trl_result.json").read_text())
    return {**out, "command_s": time.time() - t0}


def _shared_flags(a: argparse.Namespace) -> list[str]:
    return ["--steps", str(a.steps), "--batch-size", str(a.batch_size), "--n-samples",
            str(a.n_samples), "--max-new-tokens", str(a.max_new_tokens), "--lr", str(a.lr),
            "--tiny-seed", str(a.tiny_seed), "--trl-micro-batch", str(a.trl_micro_batch),
            "--eval-problems", str(a.eval_problems), "--eval-k", str(a.eval_k)]


def trl_config(a: argparse.Namespace, seed: int, run_dir: Path, cuda: bool) -> dict[str, Any]:
    """GRPOConfig's keyword arguments (TRL 1.16) for the shared settings: one optimizer step per
    generation of batch-size x n-samples sequences, made of microbatches of --trl-micro-batch."""
    sequences = a.batch_size * a.n_samples
    if sequences % a.trl_micro_batch:
        raise SystemExit(f"--trl-micro-batch must divide {sequences} (batch x samples)")
    return dict(
        output_dir=str(run_dir / "trl_out"), max_steps=a.steps, learning_rate=a.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        per_device_train_batch_size=a.trl_micro_batch,
        gradient_accumulation_steps=sequences // a.trl_micro_batch,
        num_generations=a.n_samples, max_completion_length=a.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, num_iterations=1, loss_type="dapo",
        scale_rewards="group", use_vllm=False, bf16=False, fp16=False,
        gradient_checkpointing=False, use_cpu=not cuda, model_init_kwargs={"dtype": "float32"},
        logging_steps=1, report_to="none", save_strategy="no", seed=seed, disable_tqdm=True)


def trl_worker(a: argparse.Namespace) -> None:
    """Train with TRL's GRPOTrainer and write RUN_DIR/trl_result.json (figures) and
    RUN_DIR/policy (the final policy, a Hugging Face directory)."""
    require_trl()
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from areal_sys.config import load_config
    from areal_sys.data import synthetic
    from controller.runtime import resolve_model

    run_dir, seed = Path(a.run_dir), a.seed
    cfg = load_config(CONFIG, [*common_overrides(a), f"seed={seed}"])
    model_dir = resolve_model(cfg, progress=False)
    rows = synthetic.make_problems(cfg.data.synthetic_train_size, seed, "train")
    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    right, wrong = cfg.reward.correct_reward, cfg.reward.wrong_reward
    generated: list[int] = []  # tokens of every completion TRL scored (EOS included)

    def correctness(completions: list[str], answer: list[str], completion_ids: list[list[int]],
                    **_: Any) -> list[float]:
        generated.extend(len(ids) for ids in completion_ids)
        return [right if synthetic.is_correct(c, ans) else wrong
                for c, ans in zip(completions, answer, strict=True)]

    class StepClock(TrainerCallback):
        """Wall time of every optimizer step, its generation included."""

        def __init__(self) -> None:
            self.last, self.times = 0.0, []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.last = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            now = time.perf_counter()
            self.times.append(now - self.last)
            self.last = now

    args = GRPOConfig(**trl_config(a, seed, run_dir, cuda=torch.cuda.is_available()))
    clock = StepClock()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = GRPOTrainer(model=model_dir, reward_funcs=correctness, args=args,
                          train_dataset=dataset, processing_class=tokenizer, callbacks=[clock])
    trainer.train()
    trainer.save_model(str(run_dir / "policy"))
    tokenizer.save_pretrained(str(run_dir / "policy"))
    import trl

    out = {"step_s": sum(clock.times) / len(clock.times), "train_s": sum(clock.times),
           "steps": len(clock.times), "step_time_s": clock.times,
           "tokens_generated": sum(generated),
           "policy_dir": str(run_dir / "policy"), "trl_version": trl.__version__,
           "threads": torch.get_num_threads()}
    (run_dir / "trl_result.json").write_text(json.dumps(out) + "\n")


def evaluate(a: argparse.Namespace, policy_dir: str, seed: int, run_dir: Path) -> dict[str, Any]:
    """The shared evaluator: `areal-sys eval CONFIG --checkpoint POLICY` (vLLM-CPU sampling,
    areal_sys's reward service) with the same problems, k and sampling seed for both systems."""
    import shutil

    from areal_sys.metrics import read_jsonl

    shutil.rmtree(run_dir, ignore_errors=True)
    _cli(["eval", CONFIG, "--checkpoint", policy_dir, f"run_dir={run_dir}",
          *common_overrides(a), f"seed={seed}"], f"evaluation of {policy_dir}")
    line = read_jsonl(run_dir / "eval.jsonl")[-1]
    return {"pass_rate": line["pass_rate"], "eval": {k: v for k, v in line.items()
                                                     if k != "checkpoint"}}


# --- figures ------------------------------------------------------------------------------------

SYSTEMS = ("areal_sys", "trl")


def summary(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Per system the mean and 95% CI over its runs of step_s, train_s, tokens_generated and
    pass_rate (points); paired by seed (run i of both): `speedup` = TRL step_s / areal_sys step_s
    per seed, `pass_rate_diff` = areal_sys − TRL (points)."""
    out: dict[str, Any] = {"by_system": {}}
    for name in SYSTEMS:
        rs = runs.get(name, {})
        if not rs:
            out["by_system"][name] = {"n": 0}
            continue
        seeds = sorted(rs)
        fig: dict[str, Any] = {"n": len(seeds)}
        for key in ("step_s", "train_s", "tokens_generated"):
            fig[key] = summarize([rs[s][key] for s in seeds])
        rated = [s for s in seeds if "pass_rate" in rs[s]]
        if rated:
            fig["pass_rate"] = scaled(summarize([rs[s]["pass_rate"] for s in rated]), 100)
        out["by_system"][name] = fig
    ours, theirs = runs.get("areal_sys", {}), runs.get("trl", {})
    paired = sorted(set(ours) & set(theirs))
    out["speedup"] = (summarize([theirs[s]["step_s"] / ours[s]["step_s"] for s in paired])
                      if paired else None)
    rated = [s for s in paired if "pass_rate" in ours[s] and "pass_rate" in theirs[s]]
    out["pass_rate_diff"] = (scaled(paired_difference(
        {s: ours[s]["pass_rate"] for s in rated}, {s: theirs[s]["pass_rate"] for s in rated}), 100)
        if rated else None)
    return out


def console_line(figs: dict[str, Any]) -> str:
    """The result in one line."""
    b = figs["by_system"]
    parts = [f"{n}: {fmt(b[n].get('step_s'), 1, 2, ' s/step')}, pass "
             f"{fmt(b[n].get('pass_rate'), 1, 1, '%')}" for n in SYSTEMS if b[n].get("n")]
    if figs.get("speedup"):
        parts.append(f"TRL/areal_sys step time {fmt(figs['speedup'], 1, 2, 'x')}")
    return "; ".join(parts)


def plot(runs: dict[str, dict[int, dict[str, Any]]], path: Path) -> None:
    """Seconds per step over the steps (mean over runs) for both systems."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in SYSTEMS:
        series = [r["step_time_s"] for r in runs.get(name, {}).values()]
        if not series:
            continue
        n = min(len(s) for s in series)
        ax.plot(range(1, n + 1), [sum(s[i] for s in series) / len(series) for i in range(n)],
                label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("seconds per step (mean over runs)")
    ax.set_title("areal_sys vs TRL GRPOTrainer: same model, task, batch and steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="runs per system (seeds 1..N)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--tiny-seed", type=int, default=1)
    p.add_argument("--trl-micro-batch", type=int, default=32,
                   help="TRL per_device_train_batch_size (gradient accumulation makes up the "
                   "batch of batch-size x n-samples sequences)")
    p.add_argument("--eval-problems", type=int, default=256)
    p.add_argument("--eval-k", type=int, default=4, help="samples per held-out problem")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench_vs_trl"))
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if a.trl_worker:
        trl_worker(a)
        return
    trl_version = require_trl()
    if a.runs < 1:
        raise SystemExit("--runs must be >= 1")
    runs_dir = Path(a.runs_dir)
    runs: dict[str, dict[int, dict[str, Any]]] = {n: {} for n in SYSTEMS}
    failures: list[dict[str, Any]] = []
    train = {"areal_sys": run_areal, "trl": run_trl}
    for seed in range(1, a.runs + 1):
        for name in SYSTEMS:  # alternating: a drift of the machine spreads over both
            try:
                r = train[name](a, seed, runs_dir / name / f"seed{seed}")
                r.update(evaluate(a, r["policy_dir"], seed, runs_dir / "eval" / f"{name}{seed}"))
            except RuntimeError as e:
                failures.append({"system": name, "seed": seed, "error": str(e)[-2000:]})
                print(f"{name} run {seed}: FAILED ({str(e).splitlines()[0][:200]})", flush=True)
                continue
            r["policy_dir"] = Path(r["policy_dir"]).name
            runs[name][seed] = r
            print(f"{name} run {seed}: {r['step_s']:.2f} s/step, {r['tokens_generated']:.0f} "
                  f"tokens, pass {100 * r['pass_rate']:.1f}%", flush=True)
    figs = summary(runs)
    print(console_line(figs))
    settings = {**{k: v for k, v in vars(a).items()
                   if k not in ("trl_worker", "seed", "run_dir", "runs_dir", "out_dir")},
                "config": CONFIG, "trl_version": trl_version, "cpus": len(os.sched_getaffinity(0)),
                **settings_table()}
    record = {**figs, "failures": failures,
              "per_run": {n: {str(s): r for s, r in runs[n].items()} for n in SYSTEMS}}
    out_dir = Path(a.out_dir)
    print(f"wrote {write_results('vs_trl', record, settings, out_dir)}")
    if any(runs.values()):
        plot(runs, figure_path("vs_trl", out_dir))


if __name__ == "__main__":
    main()
