"""Resolve ``quant_pair.format_name`` to a ModelOpt 0.47 format (list schema, deep copy).

Names are ModelOpt presets (``INT8_DEFAULT_CFG``...) or project compositions built from preset
rules with the rule-list machinery of :mod:`autoquant_sweep.quant.overlay` (never hand-written
cfg dicts). ModelOpt is imported lazily, inside the functions.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import sys
from dataclasses import dataclass
from typing import Any

from autoquant_sweep.quant.overlay import INPUT, WEIGHT, to_rule_list

__all__ = [
    "PROJECT_COMPOSITIONS",
    "Composition",
    "UnknownFormatError",
    "available_format_names",
    "build_composition",
    "resolve_format",
]


class UnknownFormatError(ValueError):
    """``quant_pair.format_name`` names neither a ModelOpt preset nor a project composition."""


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


def _import_modelopt_quietly() -> Any:
    """Import ModelOpt with its import-time chatter (an optional dependency logs to stdout) on stderr,
    so that machine-readable stdout (``validate --json``) stays clean."""
    with contextlib.redirect_stdout(sys.stderr):
        import modelopt.torch.quantization as mtq
    return mtq


def _preset_table() -> dict[str, dict]:
    mtq = _import_modelopt_quietly()

    config = mtq.config
    names = set(getattr(config, "choices", ()) or ())
    names.update(n for n in dir(config) if n.endswith("_CFG"))
    table: dict[str, dict] = {}
    for name in sorted(names):
        value = getattr(config, name, None)
        if value is None:
            value = getattr(mtq, name, None)
        if isinstance(value, dict) and "quant_cfg" in value:
            table[name] = value
    return table


def available_format_names() -> list[str]:
    """Sorted ModelOpt preset names plus the project compositions."""
    return sorted(set(_preset_table()) | set(PROJECT_COMPOSITIONS))


def _preset_to_list_schema(preset: dict) -> dict:
    out = {k: copy.deepcopy(v) for k, v in preset.items() if k != "quant_cfg"}
    return {"quant_cfg": to_rule_list(preset["quant_cfg"]), **out}


def _input_rule_index(rules: list[dict]) -> int | None:
    for i in range(len(rules) - 1, -1, -1):
        if rules[i]["quantizer_name"] == INPUT and not rules[i].get("parent_class"):
            return i
    return None


def build_composition(comp: Composition, presets: dict[str, dict]) -> dict:
    """Build a composition from preset rule lists (deep copies)."""
    rules = to_rule_list(presets[comp.weight_from]["quant_cfg"])
    if comp.input_from is None:
        input_rule: dict = {"quantizer_name": INPUT, "enable": False}
    else:
        source = to_rule_list(presets[comp.input_from]["quant_cfg"])
        idx = _input_rule_index(source)
        if idx is None:
            raise UnknownFormatError(f"composition input source '{comp.input_from}' has no {INPUT} rule")
        input_rule = source[idx]
    idx = _input_rule_index(rules)
    if idx is not None:
        rules[idx] = input_rule
    else:
        weight_idx = max(i for i, r in enumerate(rules) if r["quantizer_name"] == WEIGHT)
        rules.insert(weight_idx + 1, input_rule)
    return {"quant_cfg": rules, "algorithm": copy.deepcopy(comp.algorithm)}


def resolve_format(format_name: str) -> dict:
    """Return the format named ``format_name`` as a deep copy in list schema.

    Example:
        >>> fmt = resolve_format("INT8_DEFAULT_CFG")
        >>> fmt["quant_cfg"][1]
        {'quantizer_name': '*weight_quantizer', 'cfg': {'num_bits': 8, 'axis': 0}}
    """
    name = str(format_name).strip()
    presets = _preset_table()
    if name in PROJECT_COMPOSITIONS:
        return build_composition(PROJECT_COMPOSITIONS[name], presets)
    if name in presets:
        return _preset_to_list_schema(presets[name])
    known = sorted(set(presets) | set(PROJECT_COMPOSITIONS))
    close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.5)
    message = f"unknown quant format '{format_name}' (key quant_pair.format_name)"
    if close:
        message += f"; did you mean '{close[0]}'?"
    raise UnknownFormatError(f"{message}; known: {', '.join(known)}")
