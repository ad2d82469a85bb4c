"""Quantization formats, granularity overlays and capability rules.

``overlay``, ``summary``, ``compositions`` and ``capability`` are pure (no torch, no modelopt) and
imported eagerly; ``formats`` is imported lazily on first attribute access. It resolves the presets the
project uses from stored data (``presets``, ``preset_data``) and imports ModelOpt only for other preset
names and for ``check_with_modelopt``, the plan's last gate.
"""

from __future__ import annotations

from typing import Any

from autoquant_sweep.quant.capability import (
    CAPABILITY_RULES,
    CapabilityRule,
    Status,
    Verdict,
    check_combination,
    validation_matrix,
)
from autoquant_sweep.quant.compositions import PROJECT_COMPOSITIONS
from autoquant_sweep.quant.overlay import (
    INPUT,
    WEIGHT,
    OverlayError,
    OverlayResult,
    apply_overlay,
    effective_quantizer_cfg,
    normalize_block_sizes,
    to_rule_list,
    validate_overrides,
)
from autoquant_sweep.quant.summary import summarize_format

_LAZY_FORMATS = (
    "UnknownFormatError",
    "available_format_names",
    "check_with_modelopt",
    "resolve_format",
)

__all__ = [
    "CAPABILITY_RULES",
    "INPUT",
    "PROJECT_COMPOSITIONS",
    "WEIGHT",
    "CapabilityRule",
    "OverlayError",
    "OverlayResult",
    "Status",
    "UnknownFormatError",
    "Verdict",
    "apply_overlay",
    "available_format_names",
    "check_combination",
    "check_with_modelopt",
    "effective_quantizer_cfg",
    "normalize_block_sizes",
    "resolve_format",
    "summarize_format",
    "to_rule_list",
    "validate_overrides",
    "validation_matrix",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_FORMATS:
        from autoquant_sweep.quant import formats

        return getattr(formats, name)
    raise AttributeError(f"module 'autoquant_sweep.quant' has no attribute {name!r}")
