"""Name → function registries for the algorithm plugins, and the one place a config picks them.

Five kinds of plugin, all pure tensor functions (no config objects, no I/O, no distributed calls):

- estimator: rewards of one group [G] → one advantage (or RAFT weight) per response [G], which
  the trainer broadcasts to every response token. A token-level estimator (`gae`) registers with
  `meta={"token_level": True, "needs_critic": True}` and has its own signature (critic.py);
- policy loss: (logprobs, proximal, behaviour, advantages, mask), each [S, L] → per-token loss
  [S, L] (zero where not trained) and a dict of per-token statistics [S, L];
- aggregation: (per-token loss [S, L], mask [S, L], global denominators) → scalar;
- filter: rewards of one scored group [G] → keep it (bool);
- kl: (logprobs, reference logprobs) → per-token KL estimate.

A plugin registers under a name together with `options`: a mapping from its keyword arguments to
the `AlgorithmConfig` fields that set them, or to `GENERATION_BUDGET` (`rollout.max_new_tokens`,
which `build_algorithm` receives beside the config). `build_algorithm` binds those options,
so the trainer and controller call plugins without knowing any algorithm by name, and a new
estimator, loss or filter is one decorated function. The config checks piece names against these
registries when it validates; a user's own plugin module is listed in `algorithm.plugins`, which
the config imports before that check (and `build_algorithm` again in every process).
"""

from __future__ import annotations

import ast
import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ESTIMATOR = "estimator"
POLICY_LOSS = "policy_loss"
AGGREGATION = "aggregation"
FILTER = "filter"
KL = "kl"
# The option source that is not an AlgorithmConfig field: the run's generation budget in tokens
# (rollout.max_new_tokens), given to build_algorithm(..., max_new_tokens=...).
GENERATION_BUDGET = "max_new_tokens"

# Modules whose import registers the built-in plugins (loaded on first look-up).
BUILTIN_MODULES = ("advantages", "critic", "losses", "aggregation", "filters", "kl")


@dataclass(frozen=True)
class Plugin:
    """A registered function, the config fields its keyword options come from, and facts about
    it the trainer needs (`meta`, e.g. `token_level`, `needs_critic`, `mask_zero_advantage`)."""

    name: str
    fn: Callable[..., Any]
    options: Mapping[str, str] = field(default_factory=dict)  # kwarg name -> config field
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        """The first paragraph of the function's docstring, on one line."""
        first = (self.fn.__doc__ or "").strip().split("\n\n")[0]
        return " ".join(first.split())


REGISTRIES: dict[str, dict[str, Plugin]] = {
    ESTIMATOR: {}, POLICY_LOSS: {}, AGGREGATION: {}, FILTER: {}, KL: {}
}


def register(
    kind: str,
    name: str,
    options: Mapping[str, str] | None = None,
    meta: Mapping[str, Any] | None = None,
):
    """Decorator: register a function as plugin `name` of `kind` (estimator, policy_loss, ...)."""
    registry = REGISTRIES[kind]

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in registry:
            raise ValueError(f"{kind} {name!r} is already registered ({registry[name].fn})")
        registry[name] = Plugin(name, fn, dict(options or {}), dict(meta or {}))
        return fn

    return deco


def load_builtin_plugins() -> None:
    """Import the modules that register the built-in plugins (cheap after the first call)."""
    for module in BUILTIN_MODULES:
        importlib.import_module(f"areal_sys.algorithms.{module}")


@functools.cache
def builtin_names() -> dict[str, frozenset[str]]:
    """The names the built-in modules register, per kind, read from their source
    (`@register(KIND, "name", ...)`) without importing them: a config's piece names are checked
    before anything heavy loads, so a typo costs no torch import (tests check that this agrees
    with the imported registry)."""
    kinds = {"ESTIMATOR": ESTIMATOR, "POLICY_LOSS": POLICY_LOSS, "AGGREGATION": AGGREGATION,
             "FILTER": FILTER, "KL": KL}
    found: dict[str, set[str]] = {kind: set() for kind in REGISTRIES}
    here = Path(__file__).parent
    for module in BUILTIN_MODULES:
        tree = ast.parse((here / f"{module}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name)
                        and deco.func.id == "register" and len(deco.args) >= 2
                        and isinstance(deco.args[0], ast.Name) and deco.args[0].id in kinds
                        and isinstance(deco.args[1], ast.Constant)):
                    found[kinds[deco.args[0].id]].add(str(deco.args[1].value))
    return {kind: frozenset(names) for kind, names in found.items()}


def check_name(kind: str, name: str) -> None:
    """A KeyError listing the registered names unless `name` is a built-in or registered plugin
    of `kind`; imports nothing (user plugin modules are imported by the config first)."""
    known = builtin_names()[kind] | REGISTRIES[kind].keys()
    if name not in known:
        names = ", ".join(repr(n) for n in sorted(known))
        raise KeyError(f"unknown {kind} {name!r}; registered: {names}")


def plugins(kind: str) -> dict[str, Plugin]:
    """Every registered plugin of `kind`, by name."""
    load_builtin_plugins()
    return dict(REGISTRIES[kind])


def get_plugin(kind: str, name: str) -> Plugin:
    """The plugin `name` of `kind`; a KeyError lists the registered names."""
    load_builtin_plugins()
    registry = REGISTRIES[kind]
    if name not in registry:
        names = ", ".join(repr(n) for n in sorted(registry))
        raise KeyError(f"unknown {kind} {name!r}; registered: {names}")
    return registry[name]


def bind(kind: str, name: str, cfg: Mapping[str, Any]) -> Callable[..., Any]:
    """Plugin `name` of `kind` with its options taken from the config mapping `cfg`."""
    plugin = get_plugin(kind, name)
    missing = [f for f in plugin.options.values() if f not in cfg]
    if missing:
        raise KeyError(f"{kind} {name!r} needs config fields {missing}")
    kwargs = {arg: cfg[f] for arg, f in plugin.options.items()}
    return functools.partial(plugin.fn, **kwargs) if kwargs else plugin.fn
