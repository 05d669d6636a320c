"""Graders by task name: `(response, reference) -> bool | float`.

A grader returns a bool (correct / wrong, mapped to the service's `correct_reward` /
`wrong_reward`) or a float (used as the reward as is). It may raise: the reward service reports the
exception as a failed result instead of a reward.

Graders are a registry fixed when a grader process starts: the built-ins `synthetic`, `math`,
`code` and `format` below (`@register_grader`), plus the plugins the service's owner named
(`reward.graders` / `reward-serve --grader NAME=package.module:function`), which `load_plugins`
imports once at start. A task (an HTTP item's, a dataset row's, `data.task`) names a registered
grader only: nothing a client or a dataset says is imported or called by path.

The math grader uses math-verify with its own signal-based timeouts disabled (signals only work in
a process's main thread); the reward service enforces a wall-clock limit by killing the grading
process instead. It looks only at a bounded answer region of each text, so megabyte responses stay
fast (math-verify's regexes and sympy take tens of seconds on unbounded adversarial input).

Settings the built-ins read (`SETTINGS`, a `GraderSettings`) come from the JSON in the environment
variable `AREAL_SYS_GRADER_SETTINGS`, which the reward service sets for its grader processes
(from its `RewardConfig`, areal_sys/config/reward.py, where every setting is validated).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from areal_sys.config.reward import MATH_EXTRACTORS

Grader = Callable[[str, str], bool | float]

# Characters of a response the math grader reads when it has no explicit answer marker.
TAIL_CHARS = 2048
# Characters read after the last `\boxed` (enough for nested fractions, matrices, intervals).
BOXED_WINDOW_CHARS = 1024
# Characters read after the last GSM8K `####` marker (its answer runs to the end of that line).
GSM8K_WINDOW_CHARS = 256

# Responses longer than this are wrong for the `code` (as a program) and `format` graders.
MAX_PROGRAM_CHARS = 256 << 10
MAX_FORMAT_CHARS = 256 << 10
SETTINGS_ENV = "AREAL_SYS_GRADER_SETTINGS"

_REGISTRY: dict[str, Grader] = {}


class UnknownTaskError(LookupError):
    """No grader for a task name; the message names the task and what is available."""


def register_grader(name: str) -> Callable[[Grader], Grader]:
    """Decorator: register `fn` as the grader of task `name` in this process."""
    if not name or ":" in name:
        raise ValueError(f"grader name {name!r} must be non-empty and contain no ':'")

    def deco(fn: Grader) -> Grader:
        _REGISTRY[name] = fn
        return fn

    return deco


@dataclass
class GraderSettings:
    """Options of the built-in graders (the service passes them to its grader processes).

    math_extract: "auto" (the later of a `####` line and a `\\boxed{}`, else the text's tail), or
    a comma-separated order of extractors from `gsm8k`, `boxed`, `last_number`: the first that
    finds its marker decides; none found means a wrong answer.
    code_reward: "fraction" (tests passed / tests) or "all_or_nothing" (correct/wrong reward).
    code_wall_s, code_memory_mb: sandbox limits per test case; code_max_tests: test cases run.
    allow_unsafe_sandbox: run programs even when the sandbox mode does not contain them.
    plugins: NAME -> 'package.module:function', imported by `load_plugins` at process start.
    """

    math_extract: str = "auto"
    code_reward: str = "fraction"
    code_wall_s: float = 2.0
    code_memory_mb: int = 512
    code_max_tests: int = 32
    allow_unsafe_sandbox: bool = False
    plugins: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        order = [x.strip() for x in self.math_extract.split(",")]
        if self.math_extract != "auto" and not set(order) <= set(MATH_EXTRACTORS):
            raise ValueError(f"math_extract {self.math_extract!r}: use 'auto' or a comma list of "
                             f"{MATH_EXTRACTORS}")
        if self.code_reward not in ("fraction", "all_or_nothing"):
            raise ValueError(f"code_reward {self.code_reward!r}: 'fraction' or 'all_or_nothing'")
        if not (isinstance(self.code_wall_s, int | float) and 0 < self.code_wall_s < math.inf):
            raise ValueError(f"code_wall_s {self.code_wall_s!r}: a finite number of seconds > 0")

    @classmethod
    def from_env(cls) -> GraderSettings:
        raw = json.loads(os.environ.get(SETTINGS_ENV) or "{}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


SETTINGS = GraderSettings.from_env()


def registered_graders() -> list[str]:
    """Names registered in this process, sorted."""
    return sorted(_REGISTRY)


def get_grader(name: str) -> Grader:
    """The registered grader of task `name`. Raises UnknownTaskError (one line) otherwise.

    Never imports anything: a `module:function` or a file path is an unknown task like any other.
    """
    grader = _REGISTRY.get(name) if isinstance(name, str) else None
    if grader is None:
        shown = name[:80] if isinstance(name, str) else type(name).__name__
        raise UnknownTaskError(f"unknown task {shown!r}: registered graders are "
                               f"{registered_graders()}")
    return grader


def load_plugins(plugins: dict[str, str]) -> None:
    """Register the owner's plugins, NAME -> 'package.module:function' (at process start).

    Raises UnknownTaskError (one line) when one cannot be imported or is not callable.
    """
    for name, spec in plugins.items():
        if not name or ":" in name or name in _REGISTRY:
            raise UnknownTaskError(f"grader {name!r}: a plugin name must be new and contain "
                                   "no ':'")
        where, _, attr = spec.rpartition(":")
        if not where or where.endswith(".py") or "/" in where:
            raise UnknownTaskError(f"grader {name!r}: {spec!r} is not 'package.module:function'")
        try:
            module = importlib.import_module(where)
        except BaseException as e:  # noqa: BLE001 - any import failure means "no such grader"
            raise UnknownTaskError(f"grader {name!r}: cannot import {where!r}: "
                                   f"{one_line(e)}") from None
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise UnknownTaskError(f"grader {name!r}: {where!r} has no callable {attr!r}")
        _REGISTRY[name] = fn


def one_line(e: BaseException) -> str:
    """An exception as one line: `Type: first line of its message`."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


# ---------------------------------------------------------------------------------------------
# Built-in graders


@register_grader("synthetic")
def grade_synthetic(response: str, reference: str) -> bool:
    """The built-in arithmetic task (`areal_sys.data.synthetic`); `reference` is the final number
    or a full solution ending in `#### N`."""
    from areal_sys.data.synthetic import extract_answer, is_correct

    if "####" in reference:
        reference = extract_answer(reference) or reference
    return bool(is_correct(response, reference))


def answer_region(text: str, tail_chars: int = TAIL_CHARS) -> str:
    """The bounded part of `text` that holds its final answer.

    After the last GSM8K `####` marker: the rest of that line; else from the last `\\boxed`:
    a fixed window; else the last `tail_chars` characters. Linear time in len(text).
    """
    gsm = text.rfind("####")
    boxed = text.rfind("\\boxed")
    if gsm >= 0 and gsm > boxed:
        return _after_gsm8k_marker(text, gsm)
    if boxed >= 0:
        return _from_boxed(text, boxed)
    return text[-tail_chars:]


def _after_gsm8k_marker(text: str, i: int) -> str:
    """The rest of the line after the `####` at `i` (bounded)."""
    return text[i + 4 : i + 4 + GSM8K_WINDOW_CHARS].lstrip().split("\n", 1)[0]


def _from_boxed(text: str, i: int) -> str:
    """A fixed window from the `\\boxed` at `i`."""
    return text[i : i + BOXED_WINDOW_CHARS]


_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_answer(text: str, order: str) -> str | None:
    """Answer region by an explicit extractor order (`GraderSettings.math_extract`); None when
    no extractor finds its marker. Bounded like `answer_region`."""
    for name in order.split(","):
        name = name.strip()
        if name == "gsm8k" and (i := text.rfind("####")) >= 0:
            return _after_gsm8k_marker(text, i)
        if name == "boxed" and (i := text.rfind("\\boxed")) >= 0:
            return _from_boxed(text, i)
        if name == "last_number":
            numbers = _LAST_NUMBER.findall(text[-TAIL_CHARS:])
            if numbers:
                return numbers[-1]
    return None


def _parse(text: str) -> list:
    from math_verify import parse

    return parse(text, parsing_timeout=None)


def _quiet_math_verify() -> None:
    # math-verify warns once per process that its timeouts are off; that is deliberate here.
    logging.getLogger("math_verify").setLevel(logging.ERROR)


@register_grader("math")
def grade_math(response: str, reference: str) -> bool:
    """Math answer equivalence with math-verify (numbers, fractions, LaTeX, `\\boxed{}`, `####`).

    `reference` may be a number (`42`, `1,000`, `0.5`), LaTeX with or without `$` delimiters
    (`\\frac{1}{2}`), a `\\boxed{...}` answer or a GSM8K solution ending in `#### N`.
    Raises ValueError when the reference itself cannot be parsed (bad data, not a wrong answer).
    """
    from math_verify import verify

    _quiet_math_verify()
    ref = answer_region(reference)
    gold = []
    if "$" not in ref and "\\(" not in ref and "\\[" not in ref and "\\boxed" not in ref:
        gold = _parse(f"${ref.strip()}$")
    if not gold:
        gold = _parse(ref)
    if not gold:
        raise ValueError(f"math grader: cannot parse reference {reference[-60:]!r}")
    if SETTINGS.math_extract == "auto":
        region: str | None = answer_region(response)
    else:
        region = extract_answer(response, SETTINGS.math_extract)
    pred = _parse(region) if region else []
    if not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=None))


def extract_program(response: str) -> str:
    """The last fenced ```python (or ```py / bare ```) block of `response`, else all of it."""
    for fence in ("```python", "```py", "```"):
        start = response.rfind(fence)
        while start >= 0:
            body = response.find("\n", start)
            end = response.find("```", body + 1) if body >= 0 else -1
            if body >= 0 and end >= 0:
                return response[body + 1 : end]
            start = response.rfind(fence, 0, start)  # an unclosed fence: try an earlier one
    return response


def _trim(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip().split("\n"))


def _code_tests(reference: str) -> tuple[list[dict[str, str]], str]:
    spec: Any = json.loads(reference)
    tests = spec.get("tests") if isinstance(spec, dict) else None
    if not isinstance(tests, list) or not tests or not all(
        isinstance(t, dict) and isinstance(t.get("input", ""), str)
        and isinstance(t.get("output"), str) for t in tests
    ):
        raise ValueError('code grader: reference must be {"tests": [{"input": str, "output": str}'
                         ', ...]} with at least one test')
    mode = spec.get("reward", SETTINGS.code_reward)
    if mode not in ("fraction", "all_or_nothing"):
        raise ValueError(f"code grader: reward {mode!r} is not 'fraction' or 'all_or_nothing'")
    return tests[: SETTINGS.code_max_tests], mode


@register_grader("code")
def grade_code(response: str, reference: str) -> bool | float:
    """Run the response's Python program in the sandbox once per test case (stdin in, stdout
    compared with the expected output after trimming trailing whitespace of each line and of
    the text). `reference`: `{"tests": [{"input", "output"}, ...], "reward"?: mode}`.
    Returns the fraction passed, or a bool with `all_or_nothing`. Raises on a bad reference or
    when the sandbox itself fails (infrastructure, not the program's fault)."""
    from reward_service.sandbox import SAFE_MODES, SandboxLimits, detect_mode, run_python

    tests, mode = _code_tests(reference)
    sandbox = detect_mode()
    if sandbox not in SAFE_MODES and not SETTINGS.allow_unsafe_sandbox:
        raise RuntimeError(f"code grader: sandbox mode {sandbox!r} does not contain hostile "
                           "programs; its owner can allow it (allow_unsafe_sandbox)")
    program = extract_program(response)
    if len(program) > MAX_PROGRAM_CHARS:
        return False if mode == "all_or_nothing" else 0.0
    wall = SETTINGS.code_wall_s
    limits = SandboxLimits(wall_s=wall, cpu_s=max(1, math.ceil(wall)),
                           memory_mb=SETTINGS.code_memory_mb)
    passed = 0
    for test in tests:
        r = run_python(program, test.get("input", ""), limits)
        if r.error:
            raise RuntimeError(f"sandbox failed: {r.error}")
        ok = r.exit_code == 0 and not r.truncated and _trim(r.stdout) == _trim(test["output"])
        passed += ok
        if not ok and mode == "all_or_nothing":
            return False
    return passed == len(tests) if mode == "all_or_nothing" else passed / len(tests)


@register_grader("format")
def grade_format(response: str, reference: str) -> bool:
    """`reference` is a regular expression the whole response must match (`re.fullmatch`, with
    DOTALL). Responses over MAX_FORMAT_CHARS are wrong; a catastrophic pattern is bounded by the
    service's per-item timeout."""
    if len(response) > MAX_FORMAT_CHARS:
        return False
    return re.fullmatch(reference, response, flags=re.DOTALL) is not None
