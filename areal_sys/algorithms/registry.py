"""Name → function registries for the algorithm plugins, and the one place a config picks them.

Three kinds of plugin, all pure tensor functions (no config objects, no I/O, no distributed calls):

- advantage estimator: rewards of one group [G] → one advantage per response [G]
  (the trainer broadcasts it to every response token);
- policy loss: (logprobs, proximal, behaviour, advantages, mask), each [S, L] → per-token loss
  [S, L] (zero where not trained) and a dict of per-token statistics [S, L];
- aggregation: (per-token loss [S, L], mask [S, L], global denominators) → scalar.

A plugin registers under a name together with `options`: a mapping from its keyword arguments to
the `AlgorithmConfig` fields that set them. `build_algorithm` binds those options from the config,
so the trainer calls plugins without knowing any algorithm by name, and a new estimator or loss is
one decorated function with no change elsewhere.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

ESTIMATOR = "estimator"
POLICY_LOSS = "policy_loss"
AGGREGATION = "aggregation"


@dataclass(frozen=True)
class Plugin:
    """A registered function and the config fields its keyword options come from."""

    name: str
    fn: Callable[..., Any]
    options: Mapping[str, str] = field(default_factory=dict)  # kwarg name -> config field


REGISTRIES: dict[str, dict[str, Plugin]] = {ESTIMATOR: {}, POLICY_LOSS: {}, AGGREGATION: {}}


def register(kind: str, name: str, options: Mapping[str, str] | None = None):
    """Decorator: register a function as plugin `name` of `kind` (estimator, policy_loss, ...)."""
    registry = REGISTRIES[kind]

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in registry:
            raise ValueError(f"{kind} {name!r} is already registered ({registry[name].fn})")
        registry[name] = Plugin(name, fn, dict(options or {}))
        return fn

    return deco


def get_plugin(kind: str, name: str) -> Plugin:
    """The plugin `name` of `kind`; a KeyError lists the registered names."""
    registry = REGISTRIES[kind]
    if name not in registry:
        raise KeyError(f"unknown {kind} {name!r}; registered: {sorted(registry)}")
    return registry[name]


def bind(kind: str, name: str, cfg: Mapping[str, Any]) -> Callable[..., Any]:
    """Plugin `name` of `kind` with its options taken from the config mapping `cfg`."""
    plugin = get_plugin(kind, name)
    missing = [f for f in plugin.options.values() if f not in cfg]
    if missing:
        raise KeyError(f"{kind} {name!r} needs config fields {missing}")
    kwargs = {arg: cfg[f] for arg, f in plugin.options.items()}
    return functools.partial(plugin.fn, **kwargs) if kwargs else plugin.fn


@dataclass(frozen=True)
class Algorithm:
    """The plugins one experiment uses, with their options bound.

    `estimator(rewards [G]) -> [G]`; `policy_loss(logp, prox, behav, adv, mask) -> (loss, stats)`;
    `aggregate(loss, mask, denominators) -> scalar`. `summary` says which path is active (log it).
    """

    estimator: Callable[..., Any]
    policy_loss: Callable[..., Any]
    aggregate: Callable[..., Any]
    summary: str


def build_algorithm(algo_cfg: Mapping[str, Any]) -> Algorithm:
    """Pick and bind the plugins named by an `AlgorithmConfig.model_dump()`.

    The estimator is named by `name` (the preset), the loss by `loss`, the aggregation by
    `aggregation`.
    """
    est_name, loss_name, agg_name = algo_cfg["name"], algo_cfg["loss"], algo_cfg["aggregation"]
    parts = []
    for kind, name in ((ESTIMATOR, est_name), (POLICY_LOSS, loss_name), (AGGREGATION, agg_name)):
        opts = {arg: algo_cfg.get(f) for arg, f in get_plugin(kind, name).options.items()}
        parts.append(f"{kind}={name}{opts if opts else ''}")
    return Algorithm(
        estimator=bind(ESTIMATOR, est_name, algo_cfg),
        policy_loss=bind(POLICY_LOSS, loss_name, algo_cfg),
        aggregate=bind(AGGREGATION, agg_name, algo_cfg),
        summary="; ".join(parts),
    )
