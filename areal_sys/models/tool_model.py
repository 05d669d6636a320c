"""The tiny model of the tool task (`tool_mul`, areal_sys/data/tool_task.py), warm-started from
the `first_decision` model and cached like it.

The warm start trains on the task's demonstrator episodes (a calculator call on
`tool_task.CALL_PROB` of the problems, a guess otherwise) with the tool's result tokens masked out
of the loss, as RL trains them. It then runs `measure_problems` train problems as real tool
episodes (areal_sys/episode.py: the same loop the rollout workers run, sampling with
transformers at temperature 1) and records the call rate and pass rate in `warm_start.json`, with
the build time. One thread: the same model on any machine.

The directory's `tokenizer_config.json` names the tokenizer class to load (`auto_map`), so that
`AutoTokenizer` (vLLM's too) encodes a tool result's text character by character: transformers
otherwise loads its Qwen2 tokenizer for this model type, whose byte-level pre-tokenizer drops
newlines and spaces.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from areal_sys.data.tool_task import CALL_PROB
from areal_sys.models.tiny import DEFAULT_SFT_STEPS


@dataclass(frozen=True)
class ToolWarmStart:
    """Warm-start settings of the tool model (part of its cache key)."""

    base_sft_steps: int = DEFAULT_SFT_STEPS
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 20
    call_prob: float = CALL_PROB
    measure_problems: int = 128
    max_new_tokens: int = 32


def tool_model_key(seed: int, settings: ToolWarmStart) -> str:
    from areal_sys.data.tool_task import TOOL_TASK_VERSION
    from areal_sys.models.tiny import tiny_model_key

    payload = {"base": tiny_model_key(seed, settings.base_sft_steps), "task": "tool_mul",
               "version": TOOL_TASK_VERSION, "settings": asdict(settings)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def ensure_tool_model(seed: int = 1, cache_dir: str | Path | None = None, progress: bool = True,
                      settings: ToolWarmStart | None = None) -> Path:
    """Path of the warm-started tool model, built on first use and then reused."""
    from areal_sys.models.tiny import _cache_root, build_cached, ensure_tiny_model

    settings = settings or ToolWarmStart()
    base = ensure_tiny_model(seed=seed, sft_steps=settings.base_sft_steps, cache_dir=cache_dir,
                             progress=progress)
    final = _cache_root(cache_dir) / f"tiny-tool_mul-{tool_model_key(seed, settings)}"
    report: dict[str, Any] = {}
    return build_cached(final, lambda: _warm_start(base, seed, settings, progress, report),
                        lambda: {"warm_start.json": json.dumps(report, indent=2) + "\n"},
                        progress=progress)


def _warm_start(base: Path, seed: int, settings: ToolWarmStart, progress: bool,
                report: dict[str, Any]):
    import torch
    from transformers import AutoModelForCausalLM

    from areal_sys.models.tiny import build_tokenizer

    t0 = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        tok = build_tokenizer()
        # saved into tokenizer_config.json: AutoTokenizer loads this class (module docstring)
        tok.init_kwargs["auto_map"] = {"AutoTokenizer": [None, "TokenizersBackend"]}
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        _train(model, tok, seed, settings, progress)
        figures = measure(model, tok, seed, settings)
    finally:
        torch.set_num_threads(threads)
    report.update({"task": "tool_mul", "seed": seed, "base_model": base.name,
                   "settings": asdict(settings), "build_s": round(time.time() - t0, 1),
                   **figures})
    if progress:
        print(f"tool_mul warm start: call rate {figures['call_rate']:.2f}, pass rate "
              f"{figures['pass_rate']:.2f} ({report['build_s']:.0f} s)", flush=True)
    return model, tok


def _train(model, tok, seed: int, settings: ToolWarmStart, progress: bool) -> None:
    """`steps` packed steps on demonstrator episodes; the tool's tokens are not labels."""
    import torch
    from tqdm.auto import tqdm

    from areal_sys.data.tool_task import demonstration, iter_problems

    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / settings.warmup_steps))
    rng = random.Random(seed)
    problems = iter_problems(seed, "train")
    model.train()
    for _ in tqdm(range(settings.steps), desc="tool_mul warm start", disable=not progress):
        ids: list[int] = []
        pos: list[int] = []
        labels: list[int] = []
        for _ in range(settings.batch_size):
            row = next(problems)
            seq = tok.encode(row["prompt"])
            lab = [-100] * len(seq)
            for text, trained in demonstration(row, rng, settings.call_prob):
                part = tok.encode(text)
                seq += part
                lab += part if trained else [-100] * len(part)
            seq.append(tok.eos_token_id)
            lab.append(tok.eos_token_id)
            ids += seq
            pos += range(len(seq))
            labels += lab
        row_of = lambda x: torch.tensor([x], dtype=torch.long)  # noqa: E731
        out = model(input_ids=row_of(ids), position_ids=row_of(pos), labels=row_of(labels),
                    use_cache=False)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()


@dataclass
class _Turn:
    tokens: list[int]
    logprobs: list[float]
    versions: list[int]
    finish_reason: str
    num_interrupts: int = 0
    finish_time: float = 0.0


def measure(model, tok, seed: int, settings: ToolWarmStart) -> dict[str, float]:
    """Call rate and pass rate of `measure_problems` train problems run as tool episodes."""
    import itertools

    import torch

    from areal_sys.data.synthetic import is_correct
    from areal_sys.data.tool_task import iter_problems
    from areal_sys.episode import PROTOCOLS, EpisodeEnv, resolve_call_end, tool_use
    from areal_sys.tools import ToolLimits

    protocol = PROTOCOLS["tiny"]
    encode = lambda s: tok.encode(s)  # noqa: E731 - the built tokenizer: one char, one token
    env = EpisodeEnv(encode, lambda ids: tok.decode(ids), ("calculator",), ToolLimits(), protocol,
                     resolve_call_end(protocol, encode), max_turns=2)

    async def turn(context: list[int], max_tokens: int, stop: list[int]) -> _Turn:
        with torch.no_grad():
            out = model.generate(torch.tensor([context]), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=max_tokens,
                                 eos_token_id=[tok.eos_token_id, *stop],
                                 pad_token_id=tok.pad_token_id)
        new = out[0, len(context):].tolist()
        stopped = bool(new) and new[-1] in (tok.eos_token_id, *stop)
        return _Turn(new, [0.0] * len(new), [0] * len(new), "stop" if stopped else "length")

    torch.manual_seed(seed)
    rows = list(itertools.islice(iter_problems(f"measure-{seed}", "train"),
                                 settings.measure_problems))
    calls = correct = 0
    for row in rows:
        ep = asyncio.run(tool_use(turn, tok.encode(row["prompt"]), settings.max_new_tokens, env))
        calls += ep.tool_calls > 0
        correct += is_correct(tok.decode(ep.response_ids, skip_special_tokens=True),
                              row["answer"])
    return {"call_rate": calls / len(rows), "pass_rate": correct / len(rows)}
