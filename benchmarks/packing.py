"""Packed vs padded training throughput on a long-tail length distribution.

    python benchmarks/packing.py [--num-seqs 256] [--max-len 1024] [--budget 4096] [--device cpu]

Both modes train the same model on the same sequences in the same order with the same loss (the
token-mean policy-gradient surrogate on `response_logprobs`, one AdamW step per pass over the
batch), so the only difference is the layout:

- packed: the trainer's planner (`plan_microbatches`, first-fit-decreasing into micro-batches of at
  most `--budget` tokens), padding-free rows (`pack_micro_batch`: position ids restart per
  sequence) and the trainer's varlen attention (areal_sys/attention.py);
- padded: the usual fixed micro-batch of `budget // max_len` sequences (sized for the worst case,
  as a padded trainer must be), right-padded to the longest sequence in it, with an attention mask.

Lengths: prompts of the built-in synthetic task (tiny tokenizer) followed by responses whose
lengths follow a long tail (log-normal, median `--median-response`, capped at `--max-len`), the
shape of reasoning traces. Figures: tokens/s of real tokens for each mode, their `ratio`, and
`padding_waste` under packing = padding tokens / all tokens the trainer processes (the padded
baseline's own waste is reported as `padding_waste_padded`). A third timing,
`tokens_per_s_packed_blockmask`, runs the packed rows with plain sdpa (a block-diagonal T x T mask)
to show what the varlen attention buys. Writes benchmarks/results/packing.json
and packing.png. On a GPU machine, pass `--device cuda` (the device is recorded in the JSON).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from areal_sys.packing import pack_micro_batch, plan_microbatches, response_logprobs  # noqa: E402
from benchmarks.common import figure_path, write_results  # noqa: E402


def make_sequences(n: int, max_len: int, median_response: int, seed: int
                   ) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) pairs: synthetic-task prompts, long-tail response lengths."""
    from areal_sys.data.synthetic import make_problems
    from areal_sys.models.tiny import build_tokenizer

    tok = build_tokenizer()
    rng = random.Random(seed)
    out = []
    for p in make_problems(n, seed=seed):
        prompt = tok(p["prompt"])["input_ids"]
        cap = max_len - len(prompt)
        length = min(cap, max(1, int(rng.lognormvariate(math.log(median_response), 1.0))))
        out.append((prompt, [rng.randrange(3, len(tok)) for _ in range(length)]))
    return out


def packed_batches(seqs: list[tuple[list[int], list[int]]], budget: int) -> list[dict[str, Any]]:
    lengths = [len(p) + len(r) for p, r in seqs]
    (bins,) = plan_microbatches(lengths, budget, world_size=1)
    batches = []
    for b in bins:
        mb = pack_micro_batch([seqs[i][0] for i in b], [seqs[i][1] for i in b], b)
        batches.append({
            "inputs": {"input_ids": mb.input_ids, "position_ids": mb.position_ids},
            "select": (torch.zeros_like(mb.logit_index), mb.logit_index),
            "targets": mb.target_ids,
            "processed": mb.num_tokens,
        })
    return batches


def padded_batches(seqs: list[tuple[list[int], list[int]]], per_batch: int,
                   pad_id: int) -> list[dict[str, Any]]:
    batches = []
    for start in range(0, len(seqs), per_batch):
        chunk = seqs[start : start + per_batch]
        width = max(len(p) + len(r) for p, r in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        rows, cols, targets = [], [], []
        for s, (p, r) in enumerate(chunk):
            ids[s, : len(p) + len(r)] = torch.tensor(p + r)
            mask[s, : len(p) + len(r)] = 1
            rows += [s] * len(r)
            cols += range(len(p) - 1, len(p) - 1 + len(r))
            targets += r
        batches.append({
            "inputs": {"input_ids": ids, "attention_mask": mask},
            "select": (torch.tensor(rows), torch.tensor(cols)),
            "targets": torch.tensor(targets),
            "processed": ids.numel(),
        })
    return batches


def train_pass(model: Any, optimizer: Any, batches: list[dict[str, Any]], n_loss_tokens: int,
               device: str) -> float:
    """One optimiser step over all micro-batches; returns seconds."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches:
        inputs = {k: v.to(device) for k, v in b["inputs"].items()}
        hidden = model.model(**inputs, use_cache=False).last_hidden_state
        rows, cols = (t.to(device) for t in b["select"])
        logits = model.lm_head(hidden[rows, cols])
        logp = response_logprobs(logits, b["targets"].to(device))
        (-logp.sum() / n_loss_tokens).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-seqs", type=int, default=256)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--median-response", type=int, default=120)
    ap.add_argument("--budget", type=int, default=4096, help="max_tokens_per_microbatch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default=None, help="HF model dir (default: a random tiny model)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="results directory")
    args = ap.parse_args(argv)

    from transformers import AutoModelForCausalLM

    model_dir = args.model
    if model_dir is None:
        import tempfile

        from areal_sys.models.tiny import build_tokenizer, save_random_tiny_model

        model_dir = str(save_random_tiny_model(Path(tempfile.mkdtemp()) / "tiny", seed=0))
        pad_id = build_tokenizer().pad_token_id
    else:
        from transformers import AutoTokenizer

        pad_id = AutoTokenizer.from_pretrained(model_dir).pad_token_id or 0
    from areal_sys.attention import attention_implementation

    device_type = torch.device(args.device).type
    attn = {"packed": attention_implementation(device_type), "padded": "sdpa",
            "packed_blockmask": "sdpa"}
    models = {
        m: AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation=attn[m]
        ).to(args.device).train()
        for m in attn
    }
    optimizers = {m: torch.optim.AdamW(models[m].parameters(), lr=1e-6) for m in models}

    seqs = make_sequences(args.num_seqs, args.max_len, args.median_response, args.seed)
    real = sum(len(p) + len(r) for p, r in seqs)
    n_loss = sum(len(r) for _, r in seqs)
    per_batch = max(1, args.budget // args.max_len)
    modes = {"packed": packed_batches(seqs, args.budget),
             "padded": padded_batches(seqs, per_batch, pad_id)}
    modes["packed_blockmask"] = modes["packed"]  # same rows, plain sdpa: a T x T block mask
    times: dict[str, list[float]] = {m: [] for m in modes}
    for m, batches in modes.items():  # warm-up
        train_pass(models[m], optimizers[m], batches, n_loss, args.device)
    for _ in range(args.repeats):  # alternate, so drift on a shared machine hits both alike
        for m, batches in modes.items():
            times[m].append(train_pass(models[m], optimizers[m], batches, n_loss, args.device))

    processed = {m: sum(b["processed"] for b in batches) for m, batches in modes.items()}
    tps = {m: real / statistics.median(t) for m, t in times.items()}
    lengths = sorted(len(p) + len(r) for p, r in seqs)
    figures = {
        "padding_waste": 1 - real / processed["packed"],
        "padding_waste_padded": 1 - real / processed["padded"],
        "tokens_per_s_packed": tps["packed"],
        "tokens_per_s_padded": tps["padded"],
        "ratio": tps["packed"] / tps["padded"],
        "tokens_per_s_packed_blockmask": tps["packed_blockmask"],
        "micro_batches_packed": len(modes["packed"]),
        "micro_batches_padded": len(modes["padded"]),
        "device": args.device if device_type == "cpu" else torch.cuda.get_device_name(0),
        "attention": attn,
        "seconds": times,
    }
    settings = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "padded_seqs_per_microbatch": per_batch, "real_tokens": real,
                "length_p50": lengths[len(lengths) // 2],
                "length_p99": lengths[int(0.99 * (len(lengths) - 1))], "length_max": lengths[-1]}
    out_dir = args.out or Path(__file__).resolve().parent / "results"
    path = write_results("packing", figures, settings, out_dir)
    _plot(figures, lengths, figure_path("packing", out_dir))
    print(f"packed {tps['packed']:.0f} tok/s vs padded {tps['padded']:.0f} tok/s "
          f"(packed with a block mask: {tps['packed_blockmask']:.0f}): "
          f"ratio {figures['ratio']:.2f}x; padding waste packed {figures['padding_waste']:.2%}, "
          f"padded {figures['padding_waste_padded']:.2%} ({args.device}); wrote {path}")
    return figures


def _plot(figures: dict[str, Any], lengths: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.hist(lengths, bins=40)
    a.set(title="sequence lengths (tokens)", xlabel="tokens", ylabel="sequences", yscale="log")
    b.bar(["packed\n(varlen attention)", "padded", "packed\n(block mask)"],
          [figures["tokens_per_s_packed"], figures["tokens_per_s_padded"],
           figures["tokens_per_s_packed_blockmask"]])
    b.set(title=f"training tokens/s ({figures['device']}): {figures['ratio']:.2f}x",
          ylabel="real tokens / s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
