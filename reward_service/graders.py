"""Graders by task name: `(response, reference) -> bool | float`.

A grader returns a bool (correct / wrong, mapped to the service's `correct_reward` /
`wrong_reward`) or a float (used as the reward as is). It may raise: the reward service reports the
exception as a failed result instead of a reward.

Task names resolve in this order (see `get_grader`):
- a name registered with `@register_grader(name)` in the grading process: the built-ins
  `synthetic` and `math` below;
- `"package.module:function"`: imported by the grading process (how user plugins are loaded);
- `"/path/to/file.py:function"`: a plugin file loaded by path.
The reward service grades in subprocesses that import only this module, so a grader registered
with the decorator in some other module is visible there only through the `module:function` form.

The math grader uses math-verify with its own signal-based timeouts disabled (signals only work in
a process's main thread); the reward service enforces a wall-clock limit by killing the grading
process instead. It looks only at a bounded answer region of each text, so megabyte responses stay
fast (math-verify's regexes and sympy take tens of seconds on unbounded adversarial input).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable
from pathlib import Path

Grader = Callable[[str, str], bool | float]

# Characters of a response the math grader reads when it has no explicit answer marker.
TAIL_CHARS = 2048
# Characters read after the last `\boxed` (enough for nested fractions, matrices, intervals).
BOXED_WINDOW_CHARS = 1024
# Characters read after the last GSM8K `####` marker (its answer runs to the end of that line).
GSM8K_WINDOW_CHARS = 256

_REGISTRY: dict[str, Grader] = {}
_PLUGINS: dict[str, Grader] = {}


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


def registered_graders() -> list[str]:
    """Names registered in this process, sorted."""
    return sorted(_REGISTRY)


def get_grader(name: str) -> Grader:
    """The grader of task `name`: a registered name, `module:function` or `file.py:function`.

    Raises UnknownTaskError (one line) when nothing matches or the plugin cannot be loaded.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" not in name:
        raise UnknownTaskError(
            f"unknown task {name!r}: registered graders are {registered_graders()}; "
            "plugins are named 'package.module:function' or '/path/file.py:function'"
        )
    if name not in _PLUGINS:
        _PLUGINS[name] = _load_plugin(name)
    return _PLUGINS[name]


def _load_plugin(spec: str) -> Grader:
    where, _, attr = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser().resolve()
            mod_name = f"_grader_plugin_{abs(hash(str(path)))}"
            file_spec = importlib.util.spec_from_file_location(mod_name, path)
            if file_spec is None or file_spec.loader is None or not path.is_file():
                raise FileNotFoundError(f"no plugin file {str(path)!r}")
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[mod_name] = module
            file_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except Exception as e:  # noqa: BLE001 - any import failure means "no such grader"
        raise UnknownTaskError(f"task {spec!r}: cannot load {where!r}: {_one_line(e)}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UnknownTaskError(f"task {spec!r}: {where!r} has no callable {attr!r}")
    return fn


def _one_line(e: BaseException) -> str:
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
        return text[gsm + 4 : gsm + 4 + GSM8K_WINDOW_CHARS].lstrip().split("\n", 1)[0]
    if boxed >= 0:
        return text[boxed : boxed + BOXED_WINDOW_CHARS]
    return text[-tail_chars:]


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
    pred = _parse(answer_region(response))
    if not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=None))
