"""Built-in CPU tasks; this module holds `first_decision`, the demo's task (the long-chain tasks
are in `areal_sys.data.chain`, which shares its answer line and split rule).

`first_decision`: multi-step integer addition/subtraction with a written chain of steps.

A problem is a left-to-right chain such as ``3+14-5+8=``; the reference solution writes one line
per operation and ends with a checkable final answer::

    3+14=17
    17-5=12
    12+8=20
    #### 20

The model's response is the solution followed by EOS. Generated problems use single-digit
operands (1..9) and keep every running value in [0, 99], so each step is a small two-digit
addition or subtraction; the difficulty lies in the length of the chain. The number of operands
is long-tailed, ``k = 2 + Geometric(P_STOP)`` capped at ``MAX_OPERANDS``: the median solution has
2 steps (~20 tokens) while the longest have 15 (~130 tokens, within a 150-token budget) -- the
length spread that makes asynchronous rollout worthwhile. Every character belongs to the tiny
tokenizer's vocabulary (`areal_sys.models.tiny.CHARS`); one character is one token.

Train and eval problems are disjoint by construction: a prompt belongs to the eval split iff a
stable hash of its text falls into the eval bucket (`EVAL_BUCKETS`), for every seed and size.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections.abc import Callable, Iterator

TASK_VERSION = 1  # bump when the generator changes: it keys the tiny-model cache
MIN_OPERAND, MAX_OPERAND = 1, 9
MAX_VALUE = 99  # running values stay in [0, MAX_VALUE]
P_STOP = 0.4  # geometric parameter: P(k = 2 + j) = P_STOP * (1 - P_STOP) ** j
MAX_OPERANDS = 16
EVAL_SEED = 1  # the synthetic held-out set is one fixed benchmark, whatever the run's seed
EVAL_BUCKETS = 8  # one prompt in EVAL_BUCKETS (by hash) is held out for evaluation
MAX_SOLUTION_CHARS = 149  # response budget: solution + EOS <= 150 tokens

_ANSWER_RE = re.compile(r" {0,8}(-?[0-9]{1,30})(?![0-9])")
MARKER = "####"
_TERM_RE = re.compile(r"([+-]?)([0-9]+)")
_SPLITS = ("train", "eval")


def is_eval_prompt(prompt: str) -> bool:
    """Stable (process-independent) split assignment of a prompt text."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % EVAL_BUCKETS == 0


def split_stream(rng: random.Random, make: Callable[[random.Random], dict[str, str]],
                 split: str, uid_prefix: str) -> Iterator[dict[str, str]]:
    """Endless problems `make(rng)` of `split` only (by `is_eval_prompt`), with uids
    `{uid_prefix}-{i}`: the long-chain and tool tasks' streams."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    want_eval = split == "eval"
    for i in itertools.count():
        p = make(rng)
        while is_eval_prompt(p["prompt"]) != want_eval:
            p = make(rng)
        yield {"uid": f"{uid_prefix}-{i}", **p}


def _num_operands(rng: random.Random) -> int:
    k = 2
    while k < MAX_OPERANDS and rng.random() >= P_STOP:
        k += 1
    return k


def _render(operands: list[int], ops: list[str]) -> dict[str, str]:
    """Prompt, step-by-step solution and answer of one chain (ops[i] joins operand i and i+1)."""
    tail = "".join(o + str(b) for o, b in zip(ops, operands[1:], strict=True))
    prompt = f"{operands[0]}{tail}="
    solution = solve(prompt)
    return {"prompt": prompt, "solution": solution, "answer": extract_answer(solution) or ""}


def solve(prompt: str) -> str:
    """The reference worked solution of a chain prompt such as ``3+14-5+8=``."""
    terms = _TERM_RE.findall(prompt.rstrip("="))
    if not terms or terms[0][0]:
        raise ValueError(f"not a chain prompt: {prompt[:50]!r}")
    value = int(terms[0][1])
    lines = []
    for op, digits in terms[1:]:
        b = int(digits)
        new = value + b if op == "+" else value - b
        lines.append(f"{value}{op}{b}={new}")
        value = new
    lines.append(f"{MARKER} {value}")
    return "\n".join(lines)


def make_problem(rng: random.Random) -> dict[str, str]:
    """One random problem (prompt, solution, answer) drawn from `rng`.

    Each operator is drawn uniformly among those that keep the running value within
    [0, MAX_VALUE], so every intermediate result is a non-negative number of at most two digits.
    """
    k = _num_operands(rng)
    operands = [rng.randint(MIN_OPERAND, MAX_OPERAND) for _ in range(k)]
    value, ops = operands[0], []
    for b in operands[1:]:
        allowed = [o for o, v in (("+", value + b), ("-", value - b)) if 0 <= v <= MAX_VALUE]
        op = rng.choice(allowed)
        value = value + b if op == "+" else value - b
        ops.append(op)
    return _render(operands, ops)


def make_problems(n: int, seed: int, split: str = "train") -> list[dict[str, str]]:
    """`n` problems of `split` ('train' | 'eval'), deterministic in (`seed`, `split`).

    Rows: ``{"uid", "prompt", "answer", "solution"}``; uids are unique within (seed, split).
    Prompts may repeat within a split (short chains have few distinct values) but never across
    splits.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"areal_sys.synthetic.v{TASK_VERSION}:{seed}:{split}")
    want_eval = split == "eval"
    rows: list[dict[str, str]] = []
    while len(rows) < n:
        p = make_problem(rng)
        if is_eval_prompt(p["prompt"]) != want_eval or len(p["solution"]) > MAX_SOLUTION_CHARS:
            continue
        rows.append({"uid": f"synthetic-{split}-{seed}-{len(rows)}", **p})
    return rows


def extract_answer(text: str) -> str | None:
    """The integer after the last ``####`` marker of `text`, or None.

    Only the last marker counts (a response cannot hedge with several answers); up to 8 spaces
    may follow it, and the integer has at most 30 digits. Linear time and constant extra memory
    on any input: one `rfind`, then a regex over a bounded slice (no backtracking over the text).
    """
    i = text.rfind(MARKER)
    if i < 0:
        return None
    m = _ANSWER_RE.match(text, i + len(MARKER), i + len(MARKER) + 64)
    if m is None:
        return None
    return str(int(m.group(1)))


def is_correct(response: str, answer: str) -> bool:
    """True iff the response's final answer (see `extract_answer`) equals the integer `answer`."""
    pred = extract_answer(response)
    if pred is None:
        return False
    try:
        return int(pred) == int(answer.strip())
    except ValueError:
        return False
