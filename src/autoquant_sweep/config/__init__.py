"""Structured config schemas (validated when Hydra composes) and their registration."""

from autoquant_sweep.config.registration import register_configs
from autoquant_sweep.config.schema import (
    AutoQuantConfig,
    DatasetConfig,
    GranularityConfig,
    ModelConfig,
    OutputLayoutConfig,
    QuantPairConfig,
    SensitivityConfig,
    TrackingConfig,
)

__all__ = [
    "AutoQuantConfig",
    "DatasetConfig",
    "GranularityConfig",
    "ModelConfig",
    "OutputLayoutConfig",
    "QuantPairConfig",
    "SensitivityConfig",
    "TrackingConfig",
    "register_configs",
]
