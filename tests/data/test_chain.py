"""The long-chain tasks: fixed-width lines, slip placement, answers, per-step error reading."""

from __future__ import annotations

import random

import pytest

from areal_sys.data import chain
from areal_sys.data.chain import make_problems
from areal_sys.data.synthetic import extract_answer, is_correct, is_eval_prompt


@pytest.mark.parametrize("task", chain.CHAIN_TASKS)
def test_problems_have_12_to_16_fixed_width_steps_and_a_checkable_answer(task: str) -> None:
    rows = make_problems(300, 3, "train", task)
    for r in rows:
        lines = r["solution"].split("\n")
        start, ops = chain.parse_prompt(r["prompt"])
        assert chain.MIN_STEPS <= len(ops) <= chain.MAX_STEPS
        assert len(lines) == len(ops) + 1
        assert all(len(line) == 7 for line in lines[:-1])  # vv±b=rr
        assert lines[-1] == f"#### {int(r['answer']):02d}"
        assert is_correct(r["solution"], r["answer"])
        assert 104 <= len(r["solution"]) + 1 <= 136  # response tokens with EOS
        assert not any(chain.step_errors(r["prompt"], r["solution"]))
    assert len({r["prompt"] for r in rows}) == len(rows)


def test_a_hand_written_chain_wraps_modulo_100() -> None:
    assert chain.solve("97+5-9=") == "97+5=02\n02-9=93\n#### 93"
    assert extract_answer("97+5=02\n02-9=93\n#### 93") == "93"
    assert extract_answer("#### 07") == "7"


def test_splits_are_disjoint_and_deterministic() -> None:
    train = make_problems(200, 1, "train", "chain_tail")
    held = make_problems(200, 1, "eval", "chain_tail")
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert all(is_eval_prompt(r["prompt"]) for r in held)
    assert held == make_problems(200, 1, "eval", "chain_tail")
    assert make_problems(5, 1, "train", "chain_uniform") != make_problems(5, 1, "train",
                                                                         "chain_tail")


def test_slip_probabilities_by_position() -> None:
    assert chain.slip_probabilities("chain_tail", 14) == [0.003] * 12 + [0.25, 0.25]
    assert chain.slip_probabilities("chain_uniform", 12) == [0.045] * 12
    with pytest.raises(ValueError, match="not a long-chain task"):
        chain.slip_probabilities("first_decision", 12)


def test_a_slip_is_one_error_and_the_chain_carries_it() -> None:
    value, ops = chain.parse_prompt("10+5+5+5=")
    text = chain.demonstrate(value, ops, [False, True, False], random.Random(0))
    lines = text.split("\n")
    assert lines[0] == "10+5=15"
    slipped = int(lines[1][-2:])
    assert slipped != 20 and lines[1].startswith("15+5=2")  # the slip is in the units digit
    assert lines[2] == f"{slipped:02d}+5={(slipped + 5) % 100:02d}"  # carried on, computed right
    assert chain.step_errors("10+5+5+5=", text) == [False, True, False]
    assert not is_correct(text, "25")


def test_step_errors_reads_missing_malformed_and_copied_wrong_lines() -> None:
    prompt = "10+5-3+1="
    assert chain.step_errors(prompt, "10+5=15\n15-3=12\n12+1=13\n#### 13") == [False] * 3
    assert chain.step_errors(prompt, "10+5=15\n15+3=18\n18+1=19\n#### 19") == [False, True, False]
    assert chain.step_errors(prompt, "10+5=15\n#### 15") == [False, True, True]
    assert chain.step_errors(prompt, "10+5=15\n15-3=1x\n12+1=13") == [False, True, True]
    assert chain.step_errors(prompt, "#### 13") == [True, True, True]
    assert chain.step_errors(prompt, "") == [True, True, True]


@pytest.mark.parametrize("task", chain.CHAIN_TASKS)
def test_demonstrator_slips_at_the_configured_rates(task: str) -> None:
    rng = random.Random(7)
    rows = make_problems(3000, 2, "train", task)
    errors = [chain.step_errors(r["prompt"], chain.demonstration(r, task, rng)) for r in rows]
    by_end = chain.error_by_position(errors)["step_error_from_end"]
    want = chain.slip_probabilities(task, 12)[::-1]
    for got, p in zip(by_end, want, strict=True):  # 3000 draws: 4 standard errors
        assert abs(got - p) <= 4 * (p * (1 - p) / 3000) ** 0.5 + 1e-3
    passed = sum(not any(e) for e in errors) / len(errors)
    assert 0.45 < passed < 0.65


def test_a_slip_changes_only_the_units_digit_uniformly() -> None:
    """One token carries the slip decision (module doc): tens digit kept, units digit uniform
    over the nine others."""
    rng = random.Random(3)
    seen: dict[int, int] = {}
    for _ in range(2000):
        value, ops = chain.parse_prompt("47+5=")
        written = int(chain.demonstrate(value, ops, [True], rng).split("\n")[0][-2:])
        assert written // 10 == 5 and written != 52
        seen[written % 10] = seen.get(written % 10, 0) + 1
    assert sorted(seen) == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    assert min(seen.values()) > 2000 / 9 * 0.7


def test_error_by_position_counts_from_both_ends() -> None:
    errors = [[True] + [False] * 11 + [True], [False] * 12]
    figures = chain.error_by_position(errors, positions=2)
    assert figures == {"step_error_from_start": [0.5, 0.0], "step_error_from_end": [0.5, 0.0]}
    with pytest.raises(ValueError):
        chain.error_by_position([])
