"""Named algorithm presets: each one is a set of `AlgorithmConfig` field values.

`algorithm.name` picks a preset; `AlgorithmConfig` starts from the preset's values and every key
the YAML (or a dotted override) gives explicitly wins, so any piece can be swapped on top of a
preset, e.g. `{name: dapo, filter: none}` is DAPO without dynamic sampling. After validation
`cfg.algorithm` is fully resolved: the trainer and the controller read the pieces (estimator, loss,
aggregation, filter, KL, overlong shaping), never the preset name.

RAFT and RAFT++ use the filter `remove_all_wrong`: a group with no correct response has all RAFT
weights 0, so it would fill a batch slot and train nothing; dropping it before buffering keeps the
batch made of groups that carry signal, and the controller counts the drops.

This module is pure data with no torch import: config.py reads it when validating.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

PresetName = Literal[
    "grpo", "dr_grpo", "dapo", "ppo", "raft", "raft_pp", "reinforce", "reinforce_rej"
]


@dataclass(frozen=True)
class Preset:
    """A preset: one line saying what it is, the field values it sets, and a usage note."""

    description: str
    values: Mapping[str, Any]
    note: str = ""


# Every preset names all four pieces, so reading one entry tells the whole recipe.
_PPO_FAMILY = {"loss": "decoupled_ppo", "aggregation": "token-mean", "filter": "none"}

PRESETS: dict[str, Preset] = {
    "grpo": Preset(
        "GRPO: group-normalised advantages, decoupled PPO objective, token-mean",
        {"estimator": "grpo", **_PPO_FAMILY},
    ),
    "dr_grpo": Preset(
        "Dr.GRPO: mean-centred advantages (no std) and the constant B*L_max normaliser",
        {"estimator": "dr_grpo", **_PPO_FAMILY, "aggregation": "dr_grpo"},
    ),
    "dapo": Preset(
        "DAPO: clip-higher 0.28, dynamic sampling, token-mean, soft overlong punishment, no KL",
        {
            "estimator": "grpo",
            **_PPO_FAMILY,
            "filter": "dynamic_sampling",
            "clip_low": 0.2,
            "clip_high": 0.28,
            "overlong_penalty": True,
            "kl_coef": 0.0,
        },
        note="DAPO uses rewards +1/-1 (reward.correct_reward=1, reward.wrong_reward=-1)",
    ),
    "ppo": Preset(
        "PPO with a critic: GAE advantages (whitened), decoupled PPO objective, clipped value loss",
        {"estimator": "gae", **_PPO_FAMILY, "kl_placement": "reward"},
        note="needs a critic (value model); the outcome reward sits on the last response token",
    ),
    "raft": Preset(
        "RAFT: SFT on each group's best correct responses; all-wrong groups are dropped",
        {"estimator": "raft", "loss": "raft_sft", "aggregation": "token-mean",
         "filter": "remove_all_wrong"},
    ),
    "raft_pp": Preset(
        "RAFT++: RAFT weights trained with the clipped importance-sampled ratio loss",
        {"estimator": "raft", "loss": "raft_pp", "aggregation": "token-mean",
         "filter": "remove_all_wrong"},
        note="entropy tends to collapse: watch the logged policy entropy",
    ),
    "reinforce": Preset(
        "REINFORCE: A_i = R_i (no baseline) with the decoupled PPO objective",
        {"estimator": "reinforce", **_PPO_FAMILY},
    ),
    "reinforce_rej": Preset(
        "Reinforce-Rej: A_i = R_i, groups all correct or all wrong are dropped",
        {"estimator": "reinforce", **_PPO_FAMILY, "filter": "reject_all_same"},
        note="use rewards +1/-1 (reward.correct_reward=1, reward.wrong_reward=-1); with 0/1 "
        "rewards wrong answers get weight 0 and it degenerates into RAFT",
    ),
}


def preset_values(name: str) -> dict[str, Any]:
    """The field values of preset `name` (a fresh dict); KeyError lists the presets."""
    if name not in PRESETS:
        raise KeyError(f"unknown algorithm preset {name!r}; presets: {sorted(PRESETS)}")
    return dict(PRESETS[name].values)
