"""The long-chain CPU tasks: 12-16 fixed-width steps whose skill lives along the whole response.

A problem is a chain of operations ``±b`` (b in 1..9) on two-digit values modulo 100, starting
from a two-digit value; the worked solution writes one fixed-width line per step, then the
answer::

    prompt   37+8-5+9-2...=
    response 37+8=45
             45-5=40
             40+9=49
             ...
             #### 47

Every correct line is ``vv±b=rr`` (7 characters and a newline), so a response of n steps has
8n + 7 characters + EOS: 104-136 tokens for n = 12..16 (one character is one token of the tiny
tokenizer). The answer line is graded like the `first_decision` task's (`synthetic.is_correct`).

The warm start imitates a demonstrator that always writes the chain and sometimes *slips*: it
writes a wrong result (the true tens digit, a different units digit drawn uniformly) and carries
the wrong value on, so one slip anywhere makes the answer wrong. The slip lives in one token, the
units digit: a tiny model that learns that token's distribution slips at the demonstrator's rate.
(Version 1 added an offset in -9..9, which changes the tens digit in about half the slips: the
decision was spread over two tokens, and the warm-started models matched the tens digit, 0.89
against 0.875, but wrote the correct units digit after a correct tens digit with probability 0.63
instead of 0.86: they slipped at about twice the demonstrator's rate, 0.39-0.48 at the tail of
`chain_tail` against 0.25, and never passed the warm-start gate.) Per-step slip probabilities:

- `chain_tail`: `TAIL_SLIP` = 0.25 in the last `TAIL_STEPS` = 2 steps, `EARLY_SLIP` = 0.003
  before them (pass rate ~0.75^2 * 0.997^12 ~ 54%): the skill RL can improve sits in the tail,
  where a partial rollout regenerates (RPO's premise);
- `chain_uniform`: `UNIFORM_SLIP` = 0.045 at every step (~0.955^14 ~ 52%): the skill is spread
  over the whole response.

`step_errors` reads a response line by line against the prompt, so an evaluation can report
the error rate per position, from the start and from the end of the chain.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator

from areal_sys.data.synthetic import MARKER, split_stream

CHAIN_TASKS = ("chain_tail", "chain_uniform")
CHAIN_VERSION = 2  # bump when the generator or the demonstrator changes: it keys the model cache
MIN_STEPS, MAX_STEPS = 12, 16
MODULUS = 100
TAIL_STEPS = 2
TAIL_SLIP, EARLY_SLIP, UNIFORM_SLIP = 0.25, 0.003, 0.045

_OP_RE = re.compile(r"([+-])([1-9])")
_LINE_RE = re.compile(r"[0-9]{2}[+-][1-9]=[0-9]{2}")
_PROMPT_RE = re.compile(r"([0-9]{2})((?:[+-][1-9]){1,64})=")


def _apply(value: int, op: str, b: int) -> int:
    return (value + b if op == "+" else value - b) % MODULUS


def _line(value: int, op: str, b: int, result: int) -> str:
    return f"{value:02d}{op}{b}={result:02d}"


def parse_prompt(prompt: str) -> tuple[int, list[tuple[str, int]]]:
    """(start value, [(op, b), ...]) of a chain prompt such as ``37+8-5=``."""
    m = _PROMPT_RE.fullmatch(prompt)
    if m is None:
        raise ValueError(f"not a long-chain prompt: {prompt[:60]!r}")
    return int(m.group(1)), [(op, int(b)) for op, b in _OP_RE.findall(m.group(2))]


def solve(prompt: str) -> str:
    """The correct worked solution (every line right) of a chain prompt."""
    value, ops = parse_prompt(prompt)
    return demonstrate(value, ops, slips=[False] * len(ops), rng=random.Random(0))


def demonstrate(value: int, ops: list[tuple[str, int]], slips: list[bool],
                rng: random.Random) -> str:
    """The demonstrator's solution: step i writes a wrong result where `slips[i]` (the true tens
    digit and another units digit) and the chain carries what was written."""
    lines = []
    for (op, b), slip in zip(ops, slips, strict=True):
        result = _apply(value, op, b)
        if slip:
            result = result - result % 10 + rng.choice([u for u in range(10) if u != result % 10])
        lines.append(_line(value, op, b, result))
        value = result
    lines.append(f"{MARKER} {value:02d}")
    return "\n".join(lines)


def slip_probabilities(task: str, n_steps: int) -> list[float]:
    """The demonstrator's per-step slip probability of `task` for a chain of `n_steps`."""
    if task == "chain_tail":
        return [TAIL_SLIP if i >= n_steps - TAIL_STEPS else EARLY_SLIP for i in range(n_steps)]
    if task == "chain_uniform":
        return [UNIFORM_SLIP] * n_steps
    raise ValueError(f"not a long-chain task: {task!r} (one of {', '.join(CHAIN_TASKS)})")


def make_problem(rng: random.Random) -> dict[str, str]:
    """One random chain (prompt, correct solution, answer) drawn from `rng`."""
    n = rng.randint(MIN_STEPS, MAX_STEPS)
    start = rng.randrange(MODULUS)
    ops = [(rng.choice("+-"), rng.randint(1, 9)) for _ in range(n)]
    prompt = f"{start:02d}" + "".join(f"{op}{b}" for op, b in ops) + "="
    solution = solve(prompt)
    value = start
    for op, b in ops:
        value = _apply(value, op, b)
    return {"prompt": prompt, "solution": solution, "answer": str(value)}


def iter_problems(seed: int | str, split: str, task: str) -> Iterator[dict[str, str]]:
    """Endless problems of `split` for `task`, deterministic in (`seed`, `split`, `task`); rows as
    `synthetic.make_problems`. Train and eval prompts are disjoint (`synthetic.is_eval_prompt`)."""
    slip_probabilities(task, MIN_STEPS)  # validates the name
    rng = random.Random(f"areal_sys.chain.v{CHAIN_VERSION}:{task}:{seed}:{split}")
    return split_stream(rng, make_problem, split, f"{task}-{split}-{seed}")


def make_problems(n: int, seed: int, split: str, task: str) -> list[dict[str, str]]:
    """The first `n` of `iter_problems(seed, split, task)`."""
    return list(itertools.islice(iter_problems(seed, split, task), n))


def demonstration(row: dict[str, str], task: str, rng: random.Random) -> str:
    """The sloppy demonstrator's response to a problem row of `task` (slips drawn from `rng`)."""
    value, ops = parse_prompt(row["prompt"])
    slips = [rng.random() < p for p in slip_probabilities(task, len(ops))]
    return demonstrate(value, ops, slips, rng)


def step_errors(prompt: str, response: str) -> list[bool]:
    """Per step of the chain, whether the response got that step wrong.

    Step i is right when line i is exactly ``vv±b=rr`` with vv the value carried from the line
    before (the start value for i = 0), ``±b`` the prompt's i-th operation and rr the correct
    result of that; a slip is one error, and the chain carrying it on is not counted again.
    A wrong line of the right shape carries its written result on; a missing or malformed line
    is an error, and so is every step after it (nothing is carried).
    """
    value, ops = parse_prompt(prompt)
    lines = response.split("\n")
    errors: list[bool] = []
    carried: int | None = value
    for i, (op, b) in enumerate(ops):
        line = lines[i] if i < len(lines) else ""
        if carried is None:
            errors.append(True)
            continue
        expected = _line(carried, op, b, _apply(carried, op, b))
        errors.append(line != expected)
        carried = int(line[-2:]) if _LINE_RE.fullmatch(line) else None
    return errors


def error_by_position(errors: list[list[bool]], positions: int = MIN_STEPS
                      ) -> dict[str, list[float]]:
    """Mean error per position over responses (`step_errors` lists), counted from the start
    (index 0 = first step) and from the end (index 0 = last step), for the first `positions`
    positions (every chain has at least MIN_STEPS steps)."""
    if not errors:
        raise ValueError("no responses to count errors over")
    n = len(errors)
    return {
        "step_error_from_start": [sum(e[i] for e in errors) / n for i in range(positions)],
        "step_error_from_end": [sum(e[-1 - i] for e in errors) / n for i in range(positions)],
    }
