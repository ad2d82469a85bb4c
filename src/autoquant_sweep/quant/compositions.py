"""Project compositions: formats built from two ModelOpt presets' rules (data only).

Both :mod:`autoquant_sweep.quant.formats` (which builds them) and
:mod:`autoquant_sweep.quant.presets` (which stores their source presets) read this table, so it
lives apart from both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PROJECT_COMPOSITIONS", "Composition"]


@dataclass(frozen=True)
class Composition:
    """Weights (and every other rule) from ``weight_from``; the input rule from ``input_from``.

    ``input_from=None`` replaces the input rule with ``{"quantizer_name": "*input_quantizer",
    "enable": False}`` (weight-only).
    """

    weight_from: str
    input_from: str | None
    algorithm: Any
    description: str


PROJECT_COMPOSITIONS: dict[str, Composition] = {
    "AQS_W4A8_INT4_BLOCK_INT8_CFG": Composition(
        weight_from="INT4_BLOCKWISE_WEIGHT_ONLY_CFG",
        input_from="INT8_DEFAULT_CFG",
        algorithm="max",
        description="INT4 block-128 weights (INT4_BLOCKWISE_WEIGHT_ONLY_CFG) + INT8 per-tensor inputs "
        "(INT8_DEFAULT_CFG), max calibration",
    ),
    "AQS_FP8_WEIGHT_ONLY_CFG": Composition(
        weight_from="FP8_DEFAULT_CFG",
        input_from=None,
        algorithm="max",
        description="FP8 per-tensor weights (FP8_DEFAULT_CFG), inputs disabled, max calibration",
    ),
}
