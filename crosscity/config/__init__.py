"""The typed run config: sections (dataclasses), loading (YAML + overrides), rules (checked at load)."""

from crosscity.config.errors import ConfigError
from crosscity.config.loading import load_config, save_config, to_dict
from crosscity.config.sections import (
    Config,
    DataConfig,
    LanConfig,
    ModelConfig,
    MonitorConfig,
    OptimConfig,
    SecurityConfig,
    SlurmConfig,
    TopologyConfig,
    TrainConfig,
    WanConfig,
)

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "LanConfig",
    "ModelConfig",
    "MonitorConfig",
    "OptimConfig",
    "SecurityConfig",
    "SlurmConfig",
    "TopologyConfig",
    "TrainConfig",
    "WanConfig",
    "load_config",
    "save_config",
    "to_dict",
]
