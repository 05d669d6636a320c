"""The synthetic arithmetic task: format, determinism, split disjointness, length tail, grading."""

from __future__ import annotations

import re
import statistics

import pytest

from areal_sys.data.synthetic import (
    MAX_SOLUTION_CHARS,
    extract_answer,
    is_correct,
    make_problems,
    solve,
)
from areal_sys.models.tiny import CHARS, build_tokenizer

PROMPT_RE = re.compile(r"[0-9]+([+-][0-9]+)+=")
STEP_RE = re.compile(r"(-?[0-9]+)([+-])([0-9]+)=(-?[0-9]+)")


@pytest.fixture(scope="module")
def train() -> list[dict[str, str]]:
    return make_problems(3000, seed=0, split="train")


def _evaluate(prompt: str) -> int:
    terms = re.findall(r"[+-]?[0-9]+", prompt.rstrip("="))
    return sum(int(t) for t in terms)


def test_documented_example_is_rendered_exactly() -> None:
    assert solve("3+14-5+8=") == "3+14=17\n17-5=12\n12+8=20\n#### 20"


def test_rows_have_the_fixed_format_and_a_consistent_chain(train: list[dict[str, str]]) -> None:
    assert len(train) == 3000
    assert len({r["uid"] for r in train}) == 3000
    for r in train[:500]:
        assert set(r) == {"uid", "prompt", "answer", "solution"}
        assert PROMPT_RE.fullmatch(r["prompt"]), r
        *steps, last = r["solution"].split("\n")
        assert last == f"#### {r['answer']}"
        assert int(r["answer"]) == _evaluate(r["prompt"])
        assert len(steps) == r["prompt"].count("+") + r["prompt"].count("-")
        value = None
        for line in steps:
            a, op, b, c = STEP_RE.fullmatch(line).groups()  # type: ignore[union-attr]
            assert value is None or int(a) == value  # each step continues from the last result
            assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
            value = int(c)
        assert value == int(r["answer"])


def test_only_tokenizer_characters_and_the_response_budget(train: list[dict[str, str]]) -> None:
    allowed = set(CHARS)
    for r in train:
        assert set(r["prompt"] + r["solution"]) <= allowed
        assert len(r["solution"]) <= MAX_SOLUTION_CHARS


def test_tokenizer_round_trips_every_problem(train: list[dict[str, str]]) -> None:
    tok = build_tokenizer()
    texts = [r["prompt"] + r["solution"] for r in train]
    encoded = tok(texts)["input_ids"]
    for text, ids in zip(texts, encoded, strict=True):
        assert len(ids) == len(text)  # one token per character, no special tokens added
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text


def test_deterministic_in_seed_and_split() -> None:
    assert make_problems(200, seed=3) == make_problems(200, seed=3)
    assert make_problems(50, seed=3) == make_problems(200, seed=3)[:50]  # prefix-stable
    assert make_problems(200, seed=3) != make_problems(200, seed=4)
    assert make_problems(0, seed=3) == []
    with pytest.raises(ValueError):
        make_problems(5, seed=0, split="test")


def test_train_and_eval_prompts_are_disjoint_across_seeds() -> None:
    train = {r["prompt"] for s in (0, 1) for r in make_problems(4000, seed=s, split="train")}
    held = {r["prompt"] for s in (0, 1) for r in make_problems(600, seed=s, split="eval")}
    assert len(held) > 300
    assert train.isdisjoint(held)


def test_chain_length_is_long_tailed(train: list[dict[str, str]]) -> None:
    lengths = [len(r["solution"]) + 1 for r in train]  # tokens incl. EOS
    steps = [r["solution"].count("\n") for r in train]
    assert statistics.median(steps) <= 2
    assert max(steps) >= 10
    assert max(lengths) >= 4 * statistics.median(lengths)
    assert 0.3 < sum(s == 1 for s in steps) / len(steps) < 0.5  # P(k=2) = P_STOP = 0.4


def test_solve_rejects_non_chain_prompts() -> None:
    with pytest.raises(ValueError):
        solve("-3+4=")
    with pytest.raises(ValueError):
        solve("=")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3+14=17\n17-5=12\n12+8=20\n#### 20", "20"),
        ("#### -7", "-7"),
        ("####   42", "42"),
        ("####42 and more text", "42"),
        ("#### 007", "7"),
        ("#### 1\n#### 2", "2"),  # the last marker decides
        ("#### 1\n#### x", None),
        ("", None),
        ("no marker 12", None),
        ("#### ", None),
        ("#### -", None),
        ("#### " + "9" * 31, None),  # absurdly long numbers are refused, not parsed
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_extract_answer_is_safe_on_hostile_megabyte_inputs() -> None:
    mb = 1 << 20
    assert extract_answer("#" * mb) is None
    assert extract_answer("####" * (mb // 4)) is None
    assert extract_answer(" " * mb + "#### 5") == "5"
    assert extract_answer("#### " + " " * mb + "5") is None
    assert extract_answer("#### " + "1" * mb) is None
    assert extract_answer("#### 3" + "\n" * mb) == "3"
    assert extract_answer(("#### 1 " * (mb // 7)) + "#### 9") == "9"


def test_is_correct() -> None:
    assert is_correct("1+2=3\n#### 3", "3")
    assert is_correct("#### 3", " 3\n")
    assert is_correct("#### -0", "0")
    assert not is_correct("#### 4", "3")
    assert not is_correct("the answer is 3", "3")
    assert not is_correct("#### 3", "three")
