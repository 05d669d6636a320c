"""Named algorithm presets: one module per published method (see each module's docstring).

`algorithm.name` picks a preset; `AlgorithmConfig` starts from its values and explicit keys win
(base.py says how, and how a preset's reward values reach the `reward` section). To add a
preset, write a module like grpo.py and list it in `_MODULES`.

Pure data, no torch import: the config reads this package while validating.
"""

from __future__ import annotations

from typing import Any

from areal_sys.algorithms.presets import (
    dapo,
    dr_grpo,
    grpo,
    ppo,
    raft,
    raft_pp,
    reinforce,
    reinforce_rej,
)
from areal_sys.algorithms.presets.base import Preset

_MODULES = (grpo, dr_grpo, dapo, ppo, raft, raft_pp, reinforce, reinforce_rej)

PRESETS: dict[str, Preset] = {m.PRESET.name: m.PRESET for m in _MODULES}

__all__ = ["PRESETS", "Preset", "preset_values"]


def preset_values(name: str) -> dict[str, Any]:
    """The `AlgorithmConfig` field values of preset `name` (a fresh dict); KeyError lists them."""
    if name not in PRESETS:
        raise KeyError(f"unknown algorithm preset {name!r}; presets: {sorted(PRESETS)}")
    return PRESETS[name].values
