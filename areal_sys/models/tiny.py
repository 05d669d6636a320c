"""The built-in CPU model: a small Qwen2-architecture causal LM with a character-level tokenizer.

`save_random_tiny_model` writes an untrained model directory that both transformers and vLLM load.
`ensure_tiny_model` builds (once, then reuses from a cache) the same architecture warm-started by
a short supervised phase (~85 s on 2 cores) on the synthetic arithmetic task
(`areal_sys.data.synthetic`).

The warm start imitates a sloppy demonstrator: on `guess_prob` of the problems it writes no
working, only ``#### <guess>`` with a guess near the answer (right ~1 time in 11); otherwise the
full reference chain. The resulting policy chains on ~40% of samples (~70% correct) and guesses on
the rest (~9% correct): its sampled pass rate at temperature 1 is ~30%. Reward alone can raise it
to ~65% within a few dozen GRPO steps by learning to always work the chain out -- a fast,
visible learning signal for the CPU demo (response length grows as accuracy does, the way
reasoning RL lengthens chains of thought). Measured numbers: the `ensure_tiny_model` docstring.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SPECIALS = ["<pad>", "<eos>", "<unk>"]
CHARS = list("0123456789+-*=#\n ") + ["(", ")"]
CACHE_ENV = "AREAL_SYS_CACHE"


def build_tokenizer():
    """Character-level fast tokenizer (saved as tokenizer.json, loadable by vLLM)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


def tiny_qwen2_config(vocab_size: int, eos_id: int, pad_id: int):
    """The tiny architecture: ~1M parameters, 4 layers, tied embeddings, fp32."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,  # head_dim 32: supported by vLLM's CPU attention
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        bos_token_id=eos_id,
        pad_token_id=pad_id,
        rope_theta=10000.0,
        torch_dtype="float32",
    )


def save_random_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write an untrained tiny model + tokenizer to `out_dir` (deterministic in `seed`)."""
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    torch.manual_seed(seed)
    cfg = tiny_qwen2_config(len(tok), tok.eos_token_id, tok.pad_token_id)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@dataclass(frozen=True)
class SFTSettings:
    """Supervised warm-start hyper-parameters (part of the cache key).

    `lr` is the AdamW peak learning rate, reached linearly after `warmup_steps` and decayed
    linearly to `final_lr_frac * lr` at the last step; `batch_size` counts sequences per step.
    `guess_prob` is the fraction of demonstrations that skip the working and write
    ``#### <answer + U{-guess_radius..guess_radius}>`` (clamped at 0).
    """

    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 20
    final_lr_frac: float = 0.1
    weight_decay: float = 0.0
    guess_prob: float = 0.6
    guess_radius: int = 5


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "areal_sys"


def tiny_model_key(seed: int, sft_steps: int, sft: SFTSettings | None = None) -> str:
    """Cache key: a hash of (architecture, tokenizer, task version, seed, SFT settings)."""
    from areal_sys.data.synthetic import TASK_VERSION

    tok = build_tokenizer()
    cfg = tiny_qwen2_config(len(tok), tok.eos_token_id, tok.pad_token_id).to_dict()
    cfg.pop("transformers_version", None)
    payload: dict[str, Any] = {
        "arch": cfg,
        "vocab": SPECIALS + CHARS,
        "task_version": TASK_VERSION,
        "seed": seed,
        "sft_steps": sft_steps,
        "sft": asdict(sft or SFTSettings()),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _is_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "tokenizer.json").is_file() and any(
        path.glob("*.safetensors")
    )


DEFAULT_SFT_STEPS = 1000


def ensure_tiny_model(
    seed: int = 1,
    sft_steps: int = DEFAULT_SFT_STEPS,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    sft: SFTSettings | None = None,
) -> Path:
    """Path of the warm-started tiny model, built on first use and then reused from the cache.

    This is the `first_decision` task's model; the long-chain tasks' are warm-started from it
    (`areal_sys.models.chain_model.ensure_task_model` serves all three by name).

    Built with plain PyTorch on CPU in fp32, deterministic in `seed` for a given thread count
    (float reductions differ across thread counts). Measured on 2 cores (seed 1, 1000 steps):
    build ~85 s; held-out pass rate at temperature 1 ~0.30 (greedy ~0.13: it guesses).
    Location: `cache_dir`, else `$AREAL_SYS_CACHE`, else `~/.cache/areal_sys`, in a subdirectory
    named by `tiny_model_key`; written atomically (`build_cached`).
    """
    final = _cache_root(cache_dir) / f"tiny-qwen2-{tiny_model_key(seed, sft_steps, sft)}"
    return build_cached(final, lambda: _train_sft(seed, sft_steps, sft or SFTSettings(), progress),
                        progress=progress)


def build_cached(final: Path, build: Callable[[], tuple[Any, Any]],
                 extra_files: Callable[[], dict[str, str]] | None = None,
                 progress: bool = True) -> Path:
    """`final` if a complete model is there; else `build()` -> (model, tokenizer), saved to a
    temporary sibling directory (with `extra_files()` name -> text) and renamed into place, so a
    crash never leaves a half-written model and concurrent builders race harmlessly (the first
    rename wins, the others discard their copy). Without `progress`, transformers' own progress
    bars (its "Writing model shards") stay off too."""
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=final.parent))
    try:
        model, tok = build()
        with _hf_progress(progress):
            model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        for name, text in (extra_files() if extra_files else {}).items():
            (tmp / name).write_text(text)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_complete(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextmanager
def _hf_progress(on: bool) -> Iterator[None]:
    """transformers' progress bars on or off for the duration, then as they were."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if on else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def _pack(seqs: list[list[int]], prompt_lens: list[int]):
    """One padding-free row: concatenated sequences, restarting position ids, prompt-masked labels.

    transformers detects the packing from the position ids when attention_mask is None and
    use_cache is False, and then attends within each sequence only.
    """
    import torch

    ids, pos, labels = [], [], []
    for s, p in zip(seqs, prompt_lens, strict=True):
        ids += s
        pos += range(len(s))
        labels += [-100] * p + s[p:]
    as_row = lambda x: torch.tensor([x], dtype=torch.long)  # noqa: E731
    return as_row(ids), as_row(pos), as_row(labels)


def _pad(seqs: list[list[int]], prompt_lens: list[int], pad_id: int):
    """A right-padded batch: ids, attention mask, labels (prompt and padding masked with -100)."""
    import torch

    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (s, p) in enumerate(zip(seqs, prompt_lens, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, p : len(s)] = torch.tensor(s[p:])
    return ids, mask, labels


def _demonstration(row: dict[str, str], rng: random.Random, sft: SFTSettings) -> str:
    """The sloppy demonstrator's response: a bare guess (`guess_prob`) or the reference chain."""
    if rng.random() < sft.guess_prob:
        guess = int(row["answer"]) + rng.randint(-sft.guess_radius, sft.guess_radius)
        return f"#### {max(0, guess)}"
    return row["solution"]


def _train_sft(seed: int, steps: int, sft: SFTSettings, progress: bool):
    """Supervised warm start on synthetic train problems: fp32, CPU, deterministic in `seed`."""
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    from areal_sys.data.synthetic import make_problems

    tok = build_tokenizer()
    torch.manual_seed(seed)
    cfg = tiny_qwen2_config(len(tok), tok.eos_token_id, tok.pad_token_id)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=sft.lr, weight_decay=sft.weight_decay, betas=(0.9, 0.98)
    )

    def lr_factor(step: int) -> float:
        if step < sft.warmup_steps:
            return (step + 1) / sft.warmup_steps
        frac = (step - sft.warmup_steps) / max(1, steps - sft.warmup_steps)
        return 1.0 - (1.0 - sft.final_lr_frac) * frac

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    rows = make_problems(steps * sft.batch_size, seed=seed, split="train")
    noise = random.Random(seed)
    examples = ((r["prompt"], _demonstration(r, noise, sft)) for r in rows)
    sft_loop(model, tok, opt, sched, examples, steps, sft.batch_size, "tiny model SFT", progress)
    return model, tok


def sft_loop(model, tok, opt, sched, examples: Iterator[tuple[str, str]], steps: int,
             batch_size: int, desc: str, progress: bool, packed: bool = True) -> None:
    """`steps` supervised steps of `batch_size` (prompt, response) pairs from `examples`: the
    response tokens (and EOS) are the labels. `packed`: the sequences in one padding-free row
    (short, uneven sequences; attention over the row costs its length squared on CPU), else a
    right-padded batch (long sequences of similar length)."""
    import torch
    from tqdm.auto import tqdm

    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress, unit="step")
    for step in bar:
        batch = [next(examples) for _ in range(batch_size)]
        prompts = [tok.encode(p) for p, _ in batch]
        seqs = [p + tok.encode(r) + [tok.eos_token_id]
                for p, (_, r) in zip(prompts, batch, strict=True)]
        if packed:
            ids, pos, labels = _pack(seqs, [len(p) for p in prompts])
            out = model(input_ids=ids, position_ids=pos, labels=labels, use_cache=False)
        else:
            ids, mask, labels = _pad(seqs, [len(p) for p in prompts], tok.pad_token_id)
            out = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{out.loss.item():.3f}")
    model.eval()


def sampled_pass_rate(
    model_dir: str | Path,
    problems: list[dict[str, str]],
    temperature: float = 1.0,
    max_new_tokens: int = 160,
    seed: int = 0,
    batch_size: int = 128,
) -> float:
    """Fraction of `problems` whose sampled response (one per problem) has the right answer.

    Uses transformers sampling (pure temperature sampling: no top-k/top-p), left-padded batches.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from areal_sys.data.synthetic import is_correct

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts = generate(model, tok, [p["prompt"] for p in problems], temperature, max_new_tokens,
                     seed, batch_size)
    ok = sum(is_correct(t, p["answer"]) for t, p in zip(texts, problems, strict=True))
    return ok / max(1, len(problems))


def generate(
    model,
    tok,
    prompts: list[str],
    temperature: float = 1.0,
    max_new_tokens: int = 160,
    seed: int = 0,
    batch_size: int = 128,
) -> list[str]:
    """Sample one response per prompt with transformers (temperature 0 means greedy)."""
    import torch

    torch.manual_seed(seed)
    tok.padding_side = "left"
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i : i + batch_size], return_tensors="pt", padding=True)
        sample = temperature > 0
        with torch.no_grad():
            gen = model.generate(
                **enc,
                do_sample=sample,
                temperature=temperature if sample else None,
                top_k=0 if sample else None,
                top_p=1.0 if sample else None,
                max_new_tokens=max_new_tokens,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        out += tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out
