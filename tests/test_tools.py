"""Tools (areal_sys/tools.py): exact arithmetic, and every failure a one-line result."""

from __future__ import annotations

import asyncio

import pytest

from areal_sys.tools import MAX_DIGITS, ToolLimits, calculate, call_tool


@pytest.mark.parametrize(("expr", "value"), [
    ("12*34", 408), ("123456789*987654321", 121932631112635269), ("-(3+4)*2", -14),
    ("2**64", 18446744073709551616), ("17//5", 3), ("17%5", 2), ("18/6", 3), (" 7 ", 7),
])
def test_calculator_is_exact(expr: str, value: int) -> None:
    assert calculate(expr) == value


@pytest.mark.parametrize(("expr", "error"), [
    ("", "empty expression"),
    ("1" * 201, "longer than 200"),
    ("__import__('os').system('id')", "only integers"),
    ("(1).__class__", "only integers"),
    ("1.5*2", "only integers"),
    ("True+1", "only integers"),
    ("7/2", "7/2 is not an integer"),
    ("1//0", "division by zero"),
    ("2**65", "exponent must be in 0..64"),
    ("10**60*10**60", f"more than {MAX_DIGITS} digits"),
    ("12*", "not an arithmetic expression"),
    ("x", "only integers"),
])
def test_calculator_refuses_everything_else_in_one_line(expr: str, error: str) -> None:
    r = asyncio.run(call_tool("calculator", expr, ToolLimits()))
    assert not r.ok and r.text.startswith("error: ") and error in r.text and "\n" not in r.text


def test_unknown_tool_and_long_output_are_results() -> None:
    r = asyncio.run(call_tool("shell", "rm -rf /", ToolLimits()))
    assert not r.ok and r.text == "error: unknown tool 'shell'"
    r = asyncio.run(call_tool("calculator", "9**64", ToolLimits(max_output_chars=10)))
    assert r.ok and r.text == str(9 ** 64)[:10] + "..."


@pytest.mark.integration
def test_python_tool_runs_in_the_sandbox_and_its_failures_are_results() -> None:
    limits = ToolLimits(python_wall_s=1.0, timeout_s=10.0, allow_unsafe_sandbox=True)
    r = asyncio.run(call_tool("python", "print(12*34)", limits))
    assert r.ok and r.text == "408" and r.seconds > 0
    r = asyncio.run(call_tool("python", "1/0", limits))
    assert not r.ok and r.text == "error: ZeroDivisionError: division by zero"
    r = asyncio.run(call_tool("python", "while True:\n    pass", limits))
    assert not r.ok and r.text == "error: timed out"
