"""A format in one line (for logs, plan output and the MLflow ``quant`` section); pure, no ModelOpt."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoquant_sweep.quant.overlay import INPUT, WEIGHT, effective_quantizer_cfg

__all__ = ["summarize_format"]


def _fmt_value(value: Any) -> str:
    if isinstance(value, Mapping):
        inner = ", ".join(f"{k}: {_fmt_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt_value(v) for v in value) + ")"
    return str(value)


def _summarize_cfg(cfg: Any) -> str:
    if cfg is None:
        return "disabled"
    if isinstance(cfg, list):
        return "[" + "; ".join(_summarize_cfg(stage) for stage in cfg) + "]"
    keys = ("num_bits", "axis", "block_sizes", "type")
    parts = [f"{key}={_fmt_value(cfg[key])}" for key in keys if key in cfg]
    return " ".join(parts) or "enabled (ModelOpt defaults)"


def summarize_format(fmt: Mapping) -> str:
    """One-line summary of the weight and input quantizers (and the algorithm).

    Example:
        >>> summarize_format({"quant_cfg": [{"quantizer_name": "*", "enable": False},
        ...   {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}}],
        ...   "algorithm": "max"})
        'weight: num_bits=8 axis=0 | input: disabled | algorithm: max'
    """
    weight = _summarize_cfg(effective_quantizer_cfg(fmt, WEIGHT))
    inp = _summarize_cfg(effective_quantizer_cfg(fmt, INPUT))
    algo = fmt.get("algorithm")
    if isinstance(algo, Mapping):
        algo = algo.get("method", _fmt_value(algo))
    return f"weight: {weight} | input: {inp} | algorithm: {algo}"
