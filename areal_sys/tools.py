"""Tools a model may call inside an episode (`rollout.episode.kind: tool_use`).

A tool takes the text of one call's arguments and returns a `ToolResult`: the text the model sees
next, whether the call succeeded, and the seconds it took. Nothing a call says becomes code
outside a sandbox, and nothing it does raises: an unknown tool, bad arguments, a timeout or a
crash are results the model reads (`ok=False`, the text says what went wrong in one line).

- `calculator`: exact integer arithmetic on `+ - * // % **` and parentheses, parsed (never
  evaluated by Python): at most `MAX_EXPR_CHARS` characters, exponents up to `MAX_EXPONENT`,
  intermediate results up to `MAX_DIGITS` digits. `/` is integer division when exact, else an
  error (the tool never rounds silently).
- `python`: the call's text is a Python program, run in the reward service's sandbox
  (reward_service/sandbox.py) with the episode's limits; the result is its stdout (and the last
  line of stderr when it fails). Only a sandbox mode fit for hostile code is used unless
  `allow_unsafe_sandbox` is set, as for the code grader.
"""

from __future__ import annotations

import ast
import asyncio
import time
from dataclasses import dataclass

__all__ = ["TOOLS", "TOOL_SCHEMAS", "ToolLimits", "ToolResult", "calculate", "call_tool"]

MAX_EXPR_CHARS = 200
MAX_EXPONENT = 64
MAX_DIGITS = 100
TOOLS = ("calculator", "python")


def _schema(name: str, description: str, arg: str, arg_description: str) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "required": [arg],
                       "properties": {arg: {"type": "string", "description": arg_description}}}}}


# what a chat template shows the model (`data.prompt_template: chat`): OpenAI-style function specs
TOOL_SCHEMAS = {
    "calculator": _schema("calculator", "Exact integer arithmetic.", "expression",
                          "integers with + - * / // % ** and parentheses, e.g. 37*48"),
    "python": _schema("python", "Run a Python program; returns what it prints.", "code",
                      "the program"),
}


@dataclass(frozen=True)
class ToolResult:
    text: str  # what the model reads
    ok: bool
    seconds: float = 0.0


@dataclass(frozen=True)
class ToolLimits:
    """Per-call limits: `timeout_s` bounds any call's wall clock (the python tool's sandbox also
    stops the program at `python_wall_s` / `python_cpu_s` / `python_memory_mb`); `max_output_chars`
    truncates what the model reads."""

    timeout_s: float = 5.0
    max_output_chars: int = 200
    python_wall_s: float = 2.0
    python_cpu_s: int = 2
    python_memory_mb: int = 256
    allow_unsafe_sandbox: bool = False


class CalculatorError(ValueError):
    pass


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.Mod: lambda a, b: a % b}


def calculate(expr: str) -> int:
    """The exact value of an integer expression; CalculatorError (one line) for anything else."""
    text = expr.strip()
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > MAX_EXPR_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPR_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalculatorError("not an arithmetic expression") from None
    return _value(tree.body)


def _value(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _value(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a, b = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow):
            if b < 0 or b > MAX_EXPONENT:
                raise CalculatorError(f"exponent must be in 0..{MAX_EXPONENT}")
            return _bounded(a ** b) if abs(a) < 10 ** MAX_DIGITS else _too_large()
        if isinstance(node.op, (ast.FloorDiv, ast.Div, ast.Mod)) and b == 0:
            raise CalculatorError("division by zero")
        if isinstance(node.op, ast.Div):
            if a % b:
                raise CalculatorError(f"{a}/{b} is not an integer")
            return a // b
        if isinstance(node.op, ast.FloorDiv):
            return a // b
        if type(node.op) in _BINOPS:
            return _bounded(_BINOPS[type(node.op)](a, b))
    raise CalculatorError("only integers, + - * / // % ** and parentheses are allowed")


def _bounded(v: int) -> int:
    return v if abs(v) < 10 ** MAX_DIGITS else _too_large()


def _too_large() -> int:
    raise CalculatorError(f"a value has more than {MAX_DIGITS} digits")


def _calculator(args: str) -> ToolResult:
    try:
        return ToolResult(str(calculate(args)), True)
    except CalculatorError as e:
        return ToolResult(f"error: {e}", False)


def _python(args: str, limits: ToolLimits) -> ToolResult:
    from reward_service.sandbox import SAFE_MODES, SandboxLimits, detect_mode, run_python

    mode = detect_mode()
    if mode not in SAFE_MODES and not limits.allow_unsafe_sandbox:
        return ToolResult(f"error: no sandbox fit for untrusted code here ({mode})", False)
    r = run_python(args, "", SandboxLimits(wall_s=limits.python_wall_s, cpu_s=limits.python_cpu_s,
                                           memory_mb=limits.python_memory_mb,
                                           max_output_bytes=4 * limits.max_output_chars + 64))
    if r.error:
        return ToolResult(f"error: sandbox failed ({r.error.splitlines()[0]})", False)
    if r.timed_out:
        return ToolResult("error: timed out", False)
    if r.exit_code != 0:
        last = (r.stderr.strip().splitlines() or [f"exit code {r.exit_code}"])[-1]
        return ToolResult(f"error: {last}", False)
    return ToolResult(r.stdout.strip(), True)


async def call_tool(name: str, args: str, limits: ToolLimits) -> ToolResult:
    """Run one call; every failure is a result. The text is cut to `limits.max_output_chars`."""
    t0 = time.perf_counter()
    if name == "calculator":
        result = _calculator(args)
    elif name == "python":
        try:
            result = await asyncio.wait_for(asyncio.to_thread(_python, args, limits),
                                            limits.timeout_s)
        except TimeoutError:
            result = ToolResult("error: timed out", False)
        except Exception as e:  # noqa: BLE001 - a failing tool is a result the model reads
            result = ToolResult(f"error: {type(e).__name__}", False)
    else:
        result = ToolResult(f"error: unknown tool {name[:40]!r}", False)
    text = result.text if len(result.text) <= limits.max_output_chars else \
        result.text[: limits.max_output_chars] + "..."
    return ToolResult(text, result.ok, time.perf_counter() - t0)
