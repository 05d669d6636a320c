"""The tiny model of a long-chain task (`areal_sys.data.chain`), warm-started from the
`first_decision` model and cached like it.

The warm start continues supervised training on the task's sloppy demonstrator (it always
writes the chain and slips with the task's per-step probabilities) in chunks of
`ChainWarmStart.chunk_steps`, and after each chunk samples the model on `gate_problems` train
problems at temperature 1 and counts its error per step position (from the end of the chain).
It stops once every position's error is about the demonstrator's rate there
(`gate_passed`: at most `tolerance` x the injected rate + `slack` for the sampling noise of the
measurement), or after `max_chunks`. The model directory holds `warm_start.json`: the build
time, the chunks trained, the measured errors by position, the sampled pass rate and whether the
gate passed. It runs on one thread, so it is deterministic in `seed` on any machine.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from areal_sys.models.tiny import DEFAULT_SFT_STEPS


@dataclass(frozen=True)
class ChainWarmStart:
    """Warm-start settings of the long-chain models (part of their cache key)."""

    base_sft_steps: int = DEFAULT_SFT_STEPS  # steps of the first_decision model it starts from
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 20
    chunk_steps: int = 100
    max_chunks: int = 12
    final_lr_frac: float = 0.1  # cosine decay to lr x this at max_chunks x chunk_steps
    gate_problems: int = 128
    tolerance: float = 1.5
    slack: float = 0.02
    max_new_tokens: int = 150


def gate_passed(measured: Sequence[float], injected: Sequence[float], tolerance: float,
                slack: float) -> bool:
    """True when the model's error at every position is at most `tolerance` x the
    demonstrator's rate there + `slack` (both lists by the same positions)."""
    if len(measured) != len(injected) or not measured:
        raise ValueError("measured and injected errors must be non-empty and by the same positions")
    return all(m <= tolerance * p + slack for m, p in zip(measured, injected, strict=True))


def lr_factor(step: int, settings: ChainWarmStart) -> float:
    """The warm start's learning-rate multiplier: linear warm-up, then cosine decay from 1 to
    `final_lr_frac` at the last possible step (a constant rate left the sampled slip rate
    oscillating around 1.6x the demonstrator's at the tail of `chain_tail`)."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    horizon = max(1, settings.max_chunks * settings.chunk_steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / horizon)
    floor = settings.final_lr_frac
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def injected_from_end(task: str, positions: int) -> list[float]:
    """The demonstrator's slip rate by position from the end of the chain (index 0 = last)."""
    from areal_sys.data.chain import MIN_STEPS, slip_probabilities

    return slip_probabilities(task, MIN_STEPS)[::-1][:positions]


def chain_model_key(task: str, seed: int, settings: ChainWarmStart) -> str:
    from areal_sys.data.chain import CHAIN_VERSION
    from areal_sys.models.tiny import tiny_model_key

    payload = {"base": tiny_model_key(seed, settings.base_sft_steps), "task": task,
               "chain_version": CHAIN_VERSION, "settings": asdict(settings)}
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def ensure_task_model(task: str = "first_decision", seed: int = 1, sft_steps: int | None = None,
                      cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The tiny model of the built-in `task`: `first_decision`'s (`tiny.ensure_tiny_model`, with
    `sft_steps` supervised steps, None: its default) or a long-chain task's, warm-started from
    that one."""
    from areal_sys.models.tiny import ensure_tiny_model

    steps = DEFAULT_SFT_STEPS if sft_steps is None else sft_steps
    if task == "first_decision":
        return ensure_tiny_model(seed=seed, sft_steps=steps, cache_dir=cache_dir,
                                 progress=progress)
    if task == "tool_mul":
        from areal_sys.models.tool_model import ToolWarmStart, ensure_tool_model

        return ensure_tool_model(seed=seed, cache_dir=cache_dir, progress=progress,
                                 settings=ToolWarmStart(base_sft_steps=steps))
    return ensure_chain_model(task, seed=seed, cache_dir=cache_dir, progress=progress,
                              settings=ChainWarmStart(base_sft_steps=steps))


def ensure_chain_model(task: str, seed: int = 1, cache_dir: str | Path | None = None,
                       progress: bool = True, settings: ChainWarmStart | None = None) -> Path:
    """Path of `task`'s warm-started tiny model, built on first use (the base model too, if it
    is not cached yet) and then reused from the cache."""
    from areal_sys.data.chain import MIN_STEPS, slip_probabilities
    from areal_sys.models.tiny import _cache_root, build_cached, ensure_tiny_model

    slip_probabilities(task, MIN_STEPS)  # validates the name before any build
    settings = settings or ChainWarmStart()
    base = ensure_tiny_model(seed=seed, sft_steps=settings.base_sft_steps, cache_dir=cache_dir,
                             progress=progress)
    final = _cache_root(cache_dir) / f"tiny-{task}-{chain_model_key(task, seed, settings)}"
    report: dict[str, Any] = {}
    return build_cached(final, lambda: _warm_start(base, task, seed, settings, progress, report),
                        lambda: {"warm_start.json": json.dumps(report, indent=2) + "\n"},
                        progress=progress)


def measure(model, tok, task: str, seed: int, settings: ChainWarmStart) -> dict[str, Any]:
    """The model's sampled error by position and pass rate on `gate_problems` train problems."""
    from areal_sys.data.chain import error_by_position, iter_problems, step_errors
    from areal_sys.data.synthetic import is_correct
    from areal_sys.models.tiny import generate

    rows = list(itertools.islice(iter_problems(f"gate-{seed}", "train", task),
                                 settings.gate_problems))
    texts = generate(model, tok, [r["prompt"] for r in rows], temperature=1.0,
                     max_new_tokens=settings.max_new_tokens, seed=seed)
    errors = [step_errors(r["prompt"], t) for r, t in zip(rows, texts, strict=True)]
    correct = sum(is_correct(t, r["answer"]) for r, t in zip(rows, texts, strict=True))
    return {**error_by_position(errors), "pass_rate": correct / len(rows)}


def _warm_start(base: Path, task: str, seed: int, settings: ChainWarmStart, progress: bool,
                report: dict[str, Any]):
    """Continue the base model's training on `task`'s demonstrator until `gate_passed`, on one
    thread."""
    import torch

    t0 = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same model on any machine; no thread stalls on shared cores
    try:
        return _train_until_gate(base, task, seed, settings, progress, report, t0)
    finally:
        torch.set_num_threads(threads)


def _train_until_gate(base: Path, task: str, seed: int, settings: ChainWarmStart,
                      progress: bool, report: dict[str, Any], t0: float):
    import torch
    from transformers import AutoModelForCausalLM

    from areal_sys.data.chain import MIN_STEPS, demonstration, iter_problems
    from areal_sys.models.tiny import build_tokenizer, sft_loop

    torch.manual_seed(seed)
    # built, not loaded: AutoTokenizer on the model directory gives transformers' Qwen2
    # tokenizer (config.json's model type), whose byte-level pre-tokenizer drops the newlines
    # and spaces of the responses; the saved tokenizer.json itself is right (vLLM decodes it)
    tok = build_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, settings))
    noise = random.Random(seed)
    examples = ((r["prompt"], demonstration(r, task, noise))
                for r in iter_problems(seed, "train", task))
    injected = injected_from_end(task, MIN_STEPS)
    history = []
    for chunk in range(1, settings.max_chunks + 1):
        sft_loop(model, tok, opt, sched, examples, settings.chunk_steps, settings.batch_size,
                 f"{task} warm start {chunk}", progress, packed=False)
        rng_state = torch.get_rng_state()
        figures = measure(model, tok, task, seed, settings)
        torch.set_rng_state(rng_state)
        history.append({"chunk": chunk, **figures})
        passed = gate_passed(figures["step_error_from_end"], injected, settings.tolerance,
                             settings.slack)
        if progress:
            tail = ", ".join(f"{e:.2f}" for e in figures["step_error_from_end"][:4])
            print(f"{task} warm start {chunk}: sampled pass rate {figures['pass_rate']:.2f}, "
                  f"error by step from the end {tail}, ...; gate "
                  f"{'passed' if passed else 'not yet'}", flush=True)
        if passed:
            break
    report.update({
        "task": task, "seed": seed, "base_model": base.name, "settings": asdict(settings),
        "steps": chunk * settings.chunk_steps, "build_s": round(time.time() - t0, 1),
        "gate_passed": passed, "injected_from_end": injected, **history[-1], "history": history,
    })
    return model, tok
