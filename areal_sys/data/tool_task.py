"""`tool_mul`: a CPU task where a tool helps. Multiply two two-digit numbers:

    prompt   37*48=
    episode  (37*48)          the model calls the calculator (`tiny` protocol, areal_sys/episode.py)
             =1776            the tool's result: environment tokens, masked out of the loss
             \\n#### 1776      the model copies it into its answer

The tiny model cannot multiply in its head: its warm-start demonstrator (`demonstration`) calls
the calculator on `CALL_PROB` of the problems and otherwise guesses (the right product's leading
digits and a random units digit: right one time in ten). RL can raise the pass rate only by
calling the tool more often. Graded like the other built-in tasks (`synthetic.is_correct`, the
integer after the last ``####``); train and eval prompts are disjoint (`synthetic.is_eval_prompt`).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

from areal_sys.data.synthetic import split_stream

TOOL_TASK_VERSION = 1  # bump when the generator or the demonstrator changes: it keys the model
LOW, HIGH = 10, 99
CALL_PROB = 0.3  # the demonstrator calls the calculator on this fraction of problems
Segment = tuple[str, bool]  # (text, trained): the model's tokens (True) or the tool's (False)


def make_problem(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(LOW, HIGH), rng.randint(LOW, HIGH)
    return {"prompt": f"{a}*{b}=", "answer": str(a * b),
            "solution": f"({a}*{b})={a * b}\n#### {a * b}"}


def iter_problems(seed: int | str, split: str) -> Iterator[dict[str, str]]:
    """Endless problems of `split`, deterministic in (`seed`, `split`)."""
    rng = random.Random(f"areal_sys.tool_mul.v{TOOL_TASK_VERSION}:{seed}:{split}")
    return split_stream(rng, make_problem, split, f"tool_mul-{split}-{seed}")


def make_problems(n: int, seed: int, split: str) -> list[dict[str, str]]:
    return list(itertools.islice(iter_problems(seed, split), n))


def demonstration(row: dict[str, str], rng: random.Random,
                  call_prob: float = CALL_PROB) -> list[Segment]:
    """The warm start's episode for a problem: a calculator call, its result (not trained) and
    the answer; or a guess in the head."""
    answer = int(row["answer"])
    if rng.random() < call_prob:
        call = row["prompt"][:-1]  # "37*48=" -> "37*48"
        return [(f"({call})", True), (f"={answer}", False), (f"\n#### {answer}", True)]
    guess = answer - answer % 10 + rng.randint(0, 9)
    return [(f"#### {guess}", True)]


def called_tool(response: str) -> bool:
    """Whether a response (its text, markers kept) called the calculator."""
    return "(" in response and ")=" in response
