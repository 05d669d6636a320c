"""`Preset`: what one preset module declares, the pieces and constants of one published method.

A preset is a starting point, not a mode: `AlgorithmConfig` starts from `values` and every key the
YAML (or a dotted override) gives wins, so `{name: dapo, filter: none}` is DAPO without dynamic
sampling. After validation `cfg.algorithm` is fully resolved and nothing downstream reads the
preset's name. Reward values (`correct_reward`, `wrong_reward`) are the method's defaults for the
`reward` section: `ExperimentConfig` fills them in when the YAML leaves them unset, and a value the
YAML gives wins. None: the method defines no reward values, the reward section's own defaults
(1 and 0) apply.

Pure data, no torch import: the config reads presets while validating.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """One method: its four pieces, the other `AlgorithmConfig` values it fixes (clip, dual clip,
    KL, overlong shaping, ...), its reward values, and a one-line description."""

    name: str
    description: str
    estimator: str
    loss: str
    aggregation: str
    filter: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    correct_reward: float | None = None
    wrong_reward: float | None = None
    remark: str = ""

    @property
    def values(self) -> dict[str, Any]:
        """The `AlgorithmConfig` field values this preset sets (a fresh dict)."""
        return {"estimator": self.estimator, "loss": self.loss, "aggregation": self.aggregation,
                "filter": self.filter, **self.settings}

    @property
    def rewards(self) -> dict[str, float]:
        """The `reward` section defaults this preset supplies (empty: none)."""
        out = {"correct_reward": self.correct_reward, "wrong_reward": self.wrong_reward}
        return {k: v for k, v in out.items() if v is not None}

    @property
    def note(self) -> str:
        """Usage note: the remark, and the reward values when the method sets them."""
        parts = [self.remark] if self.remark else []
        if self.rewards:
            values = ", ".join(f"reward.{k}={v:g}" for k, v in self.rewards.items())
            parts.append(f"rewards {values} unless the YAML sets them")
        return "; ".join(parts)


def ppo_clip(low: float, high: float, dual: float | None = None) -> dict[str, Any]:
    """The ratio-clip settings of a PPO-style objective: 1 − low, 1 + high, dual clip c (A < 0)."""
    return {"clip_low": low, "clip_high": high, "dual_clip": dual}


NO_KL: Mapping[str, Any] = {"kl_coef": 0.0}
NO_OVERLONG: Mapping[str, Any] = {"overlong_filter": False, "overlong_penalty": False}
