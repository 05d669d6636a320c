"""Algorithm plugins: advantage estimators, policy losses and loss aggregations, registered by name.

Importing the package registers every built-in plugin; `build_algorithm(algo_cfg)` binds the ones
an `AlgorithmConfig` names. See registry.py for the plugin interfaces and ALGORITHMS.md for the
formulas.
"""

from areal_sys.algorithms import advantages, aggregation, losses  # noqa: F401  (registers plugins)
from areal_sys.algorithms.advantages import (
    broadcast_to_tokens,
    dr_grpo_advantages,
    grpo_advantages,
)
from areal_sys.algorithms.aggregation import LossDenominators
from areal_sys.algorithms.losses import decoupled_ppo_loss, ppo_clip_loss
from areal_sys.algorithms.registry import (
    AGGREGATION,
    ESTIMATOR,
    POLICY_LOSS,
    REGISTRIES,
    Algorithm,
    build_algorithm,
    get_plugin,
    register,
)

__all__ = [
    "AGGREGATION",
    "ESTIMATOR",
    "POLICY_LOSS",
    "REGISTRIES",
    "Algorithm",
    "LossDenominators",
    "broadcast_to_tokens",
    "build_algorithm",
    "decoupled_ppo_loss",
    "dr_grpo_advantages",
    "get_plugin",
    "grpo_advantages",
    "ppo_clip_loss",
    "register",
]
