"""The tool task (areal_sys/data/tool_task.py): problems, splits and the demonstrator."""

from __future__ import annotations

import random

from areal_sys.data.synthetic import is_correct, is_eval_prompt
from areal_sys.data.tool_task import called_tool, demonstration, make_problems


def test_problems_are_two_digit_products_split_like_the_other_tasks() -> None:
    train, held_out = make_problems(300, 1, "train"), make_problems(100, 1, "eval")
    for r in train + held_out:
        a, b = r["prompt"][:-1].split("*")
        assert r["prompt"].endswith("=") and 10 <= int(a) <= 99 and 10 <= int(b) <= 99
        assert int(r["answer"]) == int(a) * int(b) and is_correct(r["solution"], r["answer"])
    assert not any(is_eval_prompt(r["prompt"]) for r in train)
    assert all(is_eval_prompt(r["prompt"]) for r in held_out)
    assert make_problems(5, 1, "train") == train[:5]  # deterministic
    assert make_problems(5, 2, "train") != train[:5]


def test_the_demonstrator_calls_on_a_minority_and_its_guesses_are_mostly_wrong() -> None:
    rng = random.Random(0)
    rows = make_problems(2000, 3, "train")
    episodes = [demonstration(r, rng) for r in rows]
    calls = [e for e in episodes if len(e) == 3]
    assert 0.25 < len(calls) / len(episodes) < 0.35  # CALL_PROB = 0.3
    for row, e in zip(rows, episodes, strict=True):
        text = "".join(t for t, _ in e)
        if len(e) == 3:  # the call and the answer are trained, the tool's result is not
            assert [trained for _, trained in e] == [True, False, True]
            assert e[0][0] == f"({row['prompt'][:-1]})" and e[1][0] == f"={row['answer']}"
            assert is_correct(text, row["answer"]) and called_tool(text)
        else:
            assert e[0][1] and not called_tool(text)
    guesses = [is_correct(e[0][0], r["answer"]) for r, e in zip(rows, episodes, strict=True)
               if len(e) == 1]
    assert 0.05 < sum(guesses) / len(guesses) < 0.15  # the right units digit one time in ten
