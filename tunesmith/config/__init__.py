"""Run configuration: typed sections (`schema`), YAML + overrides (`loader`), dict/YAML dumps (`dump`)."""

from .dump import config_to_dict, flatten, save_config
from .loader import load_config
from .schema import (
    AuditConfig,
    AugmentConfig,
    Config,
    DataConfig,
    EvalConfig,
    GenerateConfig,
    ModelConfig,
    PrepareConfig,
    StrategyConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "AugmentConfig",
    "AuditConfig",
    "Config",
    "DataConfig",
    "EvalConfig",
    "GenerateConfig",
    "ModelConfig",
    "PrepareConfig",
    "StrategyConfig",
    "TrackingConfig",
    "TrainConfig",
    "config_to_dict",
    "flatten",
    "load_config",
    "save_config",
]
