"""Algorithm plugins: advantage estimators, policy losses, aggregations, group filters and KL
estimators, registered by name, plus named presets over them.

`build_algorithm(algo_cfg)` binds the pieces an `AlgorithmConfig` names (algorithm.py says how the
trainer and controller call them). See registry.py for the plugin interfaces and ALGORITHMS.md
for the formulas.

The package imports lazily: `import areal_sys.algorithms.presets` (what config.py reads) does not
import torch; the first access to a name below loads every built-in plugin.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AGGREGATION": "registry",
    "ESTIMATOR": "registry",
    "FILTER": "registry",
    "KL": "registry",
    "POLICY_LOSS": "registry",
    "REGISTRIES": "registry",
    "get_plugin": "registry",
    "plugins": "registry",
    "register": "registry",
    "Algorithm": "algorithm",
    "build_algorithm": "algorithm",
    "PRESETS": "presets",
    "broadcast_to_tokens": "advantages",
    "dr_grpo_advantages": "advantages",
    "grpo_advantages": "advantages",
    "raft_weights": "advantages",
    "reinforce_advantages": "advantages",
    "rloo_advantages": "advantages",
    "gae_advantages": "critic",
    "masked_whiten": "critic",
    "outcome_token_rewards": "critic",
    "value_loss": "critic",
    "LossDenominators": "aggregation",
    "decoupled_ppo_loss": "losses",
    "ppo_clip_loss": "losses",
    "raft_pp_loss": "losses",
    "raft_sft_loss": "losses",
    "kl_k1": "kl",
    "kl_k2": "kl",
    "kl_k3": "kl",
    "kl_loss_term": "kl",
    "kl_reward_term": "kl",
    "overlong_keep_mask": "shaping",
    "overlong_penalty": "shaping",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module(f"{__name__}.registry").load_builtin_plugins()
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
