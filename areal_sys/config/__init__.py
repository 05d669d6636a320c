"""Experiment configuration: a pydantic v2 schema, YAML loading and dotted command-line overrides.

base.py (the Section base and ConfigError), schema.py (the sections and ExperimentConfig),
algorithm.py (the algorithm and rpo sections), reward.py (the reward service's section) and
loading.py (YAML, overrides, one-line errors).
"""

from areal_sys.config.algorithm import AlgorithmConfig, RpoConfig
from areal_sys.config.base import ConfigError, Section
from areal_sys.config.loading import apply_overrides, dump_config, load_config
from areal_sys.config.reward import RewardConfig
from areal_sys.config.schema import (
    TINY_MODEL,
    ClusterConfig,
    ControllerConfig,
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    LoggingConfig,
    ModelConfig,
    RolloutConfig,
    TrainerConfig,
)

__all__ = [
    "TINY_MODEL", "AlgorithmConfig", "ClusterConfig", "ConfigError", "ControllerConfig",
    "DataConfig", "EvalConfig", "ExperimentConfig", "LoggingConfig", "ModelConfig",
    "RewardConfig", "RolloutConfig", "RpoConfig", "Section", "TrainerConfig", "apply_overrides",
    "dump_config", "load_config",
]
