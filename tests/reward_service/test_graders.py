"""The grader registry and the built-in `math`, `synthetic`, `code` and `format` graders
(in-process, real math-verify, real sandbox).

Inputs that could take long (megabyte and regex-hostile texts) are graded through the service in
test_service.py, where a timeout bounds them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from areal_sys.data.synthetic import make_problems
from reward_service import graders
from reward_service.graders import (
    BOXED_WINDOW_CHARS,
    GSM8K_WINDOW_CHARS,
    MAX_FORMAT_CHARS,
    MAX_PROGRAM_CHARS,
    TAIL_CHARS,
    GraderSettings,
    UnknownTaskError,
    answer_region,
    extract_program,
    get_grader,
    load_plugins,
    register_grader,
    registered_graders,
)
from reward_service.sandbox import MODE_ENV

FAKES = Path(__file__).with_name("fake_graders.py")

GSM8K_SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("She sold 24 in May, so 48+24=72 in total.\n#### 72", True),
        ("The total is \\boxed{72}.", True),
        ("48 + 24 = 72 clips in all, so the answer is 72", True),
        ("Adding up gives 72.", True),
        ("#### 72.0", True),
        ("#### 73", False),
        ("The total is \\boxed{71}.", False),
        ("It is 72 in April... no wait, the answer is 70", False),
        ("I do not know.", False),
        ("", False),
    ],
)
def test_math_gsm8k_reference(response: str, expected: bool) -> None:
    assert get_grader("math")(response, GSM8K_SOLUTION) is expected


@pytest.mark.parametrize(
    ("response", "reference", "expected"),
    [
        ("\\boxed{\\frac{1}{2}}", "0.5", True),
        ("so x = 0.5", "\\frac{1}{2}", True),
        ("$\\dfrac{2}{4}$", "$\\frac{1}{2}$", True),
        ("the answer is 1/2", "\\boxed{\\frac{1}{2}}", True),
        ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", False),
        ("#### 1,000", "1000", True),
        ("\\boxed{1000}", "1,000", True),
        ("$-\\frac{7}{2}$", "-3.5", True),
        ("\\boxed{3.5}", "-3.5", False),
        ("\\boxed{3\\sqrt{2}}", "\\sqrt{18}", True),
        ("\\boxed{4}", "\\sqrt{18}", False),
        ("first \\boxed{3}, final \\boxed{4}", "4", True),
        ("first \\boxed{4}, final \\boxed{3}", "4", False),
    ],
)
def test_math_equivalent_forms(response: str, reference: str, expected: bool) -> None:
    assert get_grader("math")(response, reference) is expected


@pytest.mark.parametrize("reference", ["", "   ", "#### "])
def test_math_empty_reference_is_an_error_not_a_wrong_answer(reference: str) -> None:
    with pytest.raises(ValueError, match="cannot parse reference"):
        get_grader("math")("\\boxed{1}", reference)


def test_answer_region_is_bounded_and_takes_the_last_marker() -> None:
    big = "x" * 1_000_000
    assert len(answer_region(big)) == TAIL_CHARS
    assert answer_region(big + "#### 1\n#### 42 \nmore") == "42 "
    assert len(answer_region("#### " + big)) <= GSM8K_WINDOW_CHARS
    assert answer_region("#### 5 \\boxed{7}").startswith("\\boxed{7}")
    assert len(answer_region("\\boxed{" + big)) == BOXED_WINDOW_CHARS
    assert answer_region(big + "\\boxed{9} then text").startswith("\\boxed{9}")


def test_synthetic_grader_on_real_problems() -> None:
    grade = get_grader("synthetic")
    for row in make_problems(20, seed=3, split="train"):
        answer = int(row["answer"])
        assert grade(row["solution"], row["answer"]) is True
        assert grade(row["solution"], row["solution"]) is True  # reference as a full solution
        wrong = row["solution"].rsplit("####", 1)[0] + f"#### {answer + 1}"
        assert grade(wrong, row["answer"]) is False
        assert grade(row["solution"].replace("####", "="), row["answer"]) is False


def test_registry_names_and_plugins() -> None:
    @register_grader("fake_upper")
    def fake_upper(response: str, reference: str) -> bool:
        return response.upper() == reference

    assert {"math", "synthetic", "fake_upper"} <= set(registered_graders())
    assert get_grader("fake_upper")("ab", "AB") is True
    load_plugins({"fake_string_plugin": "tests.reward_service.fake_graders:fake_string"})
    assert get_grader("fake_string_plugin")("", "") == "yes"


@pytest.mark.parametrize(
    "name",
    ["no_such_task", "reward_service.graders:grade_math", "os:popen", "builtins:open",
     f"{FAKES}:fake_nan", "tests.reward_service.fake_graders:fake_string"],
)
def test_a_task_never_imports_anything(name: str) -> None:
    with pytest.raises(UnknownTaskError, match="unknown task .*registered graders") as info:
        get_grader(name)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_such_module_xyz:fn", "cannot import 'no_such_module_xyz'.*ModuleNotFoundError"),
        ("reward_service.graders:no_such_fn", "has no callable 'no_such_fn'"),
        (f"{FAKES}:fake_nan", "is not 'package.module:function'"),
    ],
)
def test_plugins_that_cannot_load_raise_one_line(spec: str, match: str) -> None:
    with pytest.raises(UnknownTaskError, match=match) as info:
        load_plugins({"fake_broken": spec})
    assert "\n" not in str(info.value) and "fake_broken" not in registered_graders()


def test_register_rejects_plugin_style_names() -> None:
    with pytest.raises(ValueError, match="no ':'"):
        register_grader("a:b")


# ---------------------------------------------------------------------------------------------
# math extraction settings, code and format graders


@pytest.mark.parametrize(
    ("order", "response", "expected"),
    [
        ("boxed", "#### 5 but \\boxed{5}", True),
        ("boxed", "#### 5", False),  # no \boxed: wrong under a boxed-only policy
        ("gsm8k", "\\boxed{5} then #### 5", True),
        ("gsm8k,last_number", "it is 5", True),
        ("last_number", "it is 5 or maybe 6", False),
        ("last_number", "1,000 then 5.0", True),
    ],
)
def test_math_extraction_is_configurable(
    monkeypatch: pytest.MonkeyPatch, order: str, response: str, expected: bool
) -> None:
    monkeypatch.setattr(graders, "SETTINGS", GraderSettings(math_extract=order))
    assert get_grader("math")(response, "5") is expected


def test_grader_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="math_extract"):
        GraderSettings(math_extract="boxed,latex")
    with pytest.raises(ValueError, match="code_reward"):
        GraderSettings(code_reward="half")
    for wall in (-1.0, 0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="code_wall_s"):
            GraderSettings(code_wall_s=wall)


@pytest.mark.parametrize(
    ("response", "program"),
    [
        ("print(1)", "print(1)"),
        ("text\n```python\nprint(2)\n```\nmore", "print(2)\n"),
        ("```py\nprint(3)\n```", "print(3)\n"),
        ("```\nprint(4)\n```", "print(4)\n"),
        ("```python\nold()\n```\n```python\nprint(5)\n```", "print(5)\n"),
        ("```python\nprint(6)\n```\n```python\nunclosed", "print(6)\n"),
    ],
)
def test_extract_program(response: str, program: str) -> None:
    assert extract_program(response) == program


def test_code_grader_in_process() -> None:
    grade = get_grader("code")
    tests = {"tests": [{"input": "2\n", "output": "4"}, {"input": "3\n", "output": "9  \n\n"}]}
    square = "n = int(input())\nprint(n * n)"
    assert grade(square, json.dumps(tests)) == 1.0
    assert grade("print(4)", json.dumps(tests)) == 0.5
    assert grade("print(4)", json.dumps({**tests, "reward": "all_or_nothing"})) is False
    assert grade("x" * (MAX_PROGRAM_CHARS + 1), json.dumps(tests)) == 0.0
    for bad in ("[]", '{"tests": []}', '{"tests": [{"input": "1"}]}', "nope"):
        with pytest.raises(ValueError):
            grade(square, bad)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<think>a\nb</think> <answer>5</answer>", True),
        ("<answer>5</answer>", False),
        ("<think>a</think><answer>5</answer> trailing", False),
        ("<think>" + "a" * (MAX_FORMAT_CHARS + 1) + "</think><answer>5</answer>", False),
    ],
)
def test_format_grader(response: str, expected: bool) -> None:
    pattern = r"<think>.*</think>\s*<answer>.*</answer>"
    assert get_grader("format")(response, pattern) is expected


def test_code_grader_refuses_an_unsafe_sandbox_unless_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reward_service import sandbox

    monkeypatch.setenv(MODE_ENV, "rlimits")
    monkeypatch.setattr(sandbox, "_detected", None)
    ref = json.dumps({"tests": [{"input": "", "output": "ran"}]})
    with pytest.raises(RuntimeError, match="sandbox mode 'rlimits' does not contain") as info:
        get_grader("code")("print('ran')", ref)
    assert "\n" not in str(info.value)
    monkeypatch.setattr(graders, "SETTINGS", GraderSettings(allow_unsafe_sandbox=True))
    assert get_grader("code")("print('ran')", ref) == 1.0
