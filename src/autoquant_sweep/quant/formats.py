"""Resolve ``quant_pair.format_name`` to a ModelOpt 0.47 format (list schema, deep copy).

Names are ModelOpt presets (``INT8_DEFAULT_CFG``...) or project compositions built from preset
rules with the rule-list machinery of :mod:`autoquant_sweep.quant.overlay` (never hand-written
cfg dicts). The presets the project uses are stored as data (:mod:`autoquant_sweep.quant.presets`),
so resolving them imports no ModelOpt; any other preset name imports ModelOpt (8-12 s) and reads it
there. :func:`check_with_modelopt`, the last gate of a plan, validates a format with ModelOpt's own
config schema.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import sys
from typing import Any

from autoquant_sweep.quant.compositions import PROJECT_COMPOSITIONS, Composition
from autoquant_sweep.quant.overlay import INPUT, WEIGHT, to_rule_list
from autoquant_sweep.quant.presets import stored_presets

__all__ = [
    "UnknownFormatError",
    "available_format_names",
    "build_composition",
    "check_with_modelopt",
    "resolve_format",
]


class UnknownFormatError(ValueError):
    """``quant_pair.format_name`` names neither a ModelOpt preset nor a project composition."""


def _import_modelopt_quietly() -> Any:
    """Import ModelOpt with its import-time chatter (an optional dependency logs to stdout) on stderr,
    so that machine-readable stdout (``validate --json``) stays clean."""
    with contextlib.redirect_stdout(sys.stderr):
        import modelopt.torch.quantization as mtq
    return mtq


def _preset_table() -> dict[str, dict]:
    """Every preset of the installed ModelOpt (imports it)."""
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


def _presets_for(names: set[str]) -> dict[str, dict]:
    """Presets holding ``names``: the stored ones when they have them all, else ModelOpt's."""
    stored = stored_presets()
    return stored if names <= set(stored) else _preset_table()


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

    The stored presets serve the names the project uses (no ModelOpt import); another preset name
    imports ModelOpt and takes its preset from there.

    Example:
        >>> fmt = resolve_format("INT8_DEFAULT_CFG")
        >>> fmt["quant_cfg"][1]
        {'quantizer_name': '*weight_quantizer', 'cfg': {'num_bits': 8, 'axis': 0}}
    """
    name = str(format_name).strip()
    if name in PROJECT_COMPOSITIONS:
        comp = PROJECT_COMPOSITIONS[name]
        sources = {n for n in (comp.weight_from, comp.input_from) if n is not None}
        return build_composition(comp, _presets_for(sources))
    presets = _presets_for({name})
    if name in presets:
        return _preset_to_list_schema(presets[name])
    known = sorted(set(presets) | set(PROJECT_COMPOSITIONS))
    close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.5)
    message = f"unknown quant format '{format_name}' (key quant_pair.format_name)"
    if close:
        message += f"; did you mean '{close[0]}'?"
    raise UnknownFormatError(f"{message}; known: {', '.join(known)}")


# --------------------------------------------------------------------------------------------- last gate

# pydantic names the branches of a union in an error location ('function-after[...]', 'list[...]',
# 'int', 'tuple[int, ...]'); they say nothing to a user, so the location keeps only field names and
# list indexes
_UNION_BRANCH_NAMES = frozenset({"int", "float", "str", "bool", "dict", "list", "tuple", "none"})
# a value of the other shape of a union (a cfg mapping vs a list of stage mappings) fails the branch
# it does not belong to; that error is noise next to the real one
_BRANCH_MISMATCH_TYPES = frozenset({"model_type", "list_type", "dict_type", "model_attributes_type"})


def _error_location(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif "[" in str(item) or "(" in str(item) or str(item).lower() in _UNION_BRANCH_NAMES:
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _validation_reason(exc: Exception) -> str:
    """One line from a pydantic ``ValidationError`` (its first meaningful error) or any exception."""
    errors_of = getattr(exc, "errors", None)
    if not callable(errors_of):
        return " ".join(str(exc).split())
    errors = errors_of(include_url=False)
    relevant = [e for e in errors if e.get("type") not in _BRANCH_MISMATCH_TYPES] or errors
    if not relevant:
        return " ".join(str(exc).split())
    first = relevant[0]
    message = str(first.get("msg", "")).removeprefix("Value error, ")
    if first.get("type") == "assertion_error":
        # ModelOpt's block_sizes check asserts without a message ('Assertion failed, '): show the value
        message = message.rstrip(", ").rstrip() + f" (got {first.get('input')!r})"
    location = _error_location(tuple(first.get("loc", ())))
    # alternatives of one union field (axis: int | tuple) fail together: count other places only
    others = {_error_location(tuple(e.get("loc", ()))) for e in relevant} - {location}
    more = f" (and {len(others)} more)" if others else ""
    return " ".join(f"{location + ': ' if location else ''}{message}{more}".split())


def check_with_modelopt(fmt: dict, context: str) -> None:
    """Validate an effective format with ModelOpt's own pydantic config; the last gate of a plan.

    Each rule is checked as a ModelOpt ``QuantizerCfgEntry`` (so the error names the rule), then the
    whole format as a ``QuantizeConfig`` (top-level keys, ``algorithm``). ModelOpt decides which
    ``cfg`` and ``block_sizes`` keys exist (e.g. ``four_over_six``), so a newer ModelOpt needs no
    change here. Imports ModelOpt (seconds): call it after every cheaper check.

    Raises:
        UserInputError: one line, ``<context>: ModelOpt rejects the effective format: <where>: <why>``.

    Example:
        >>> check_with_modelopt(resolve_format("INT8_DEFAULT_CFG"), "quant_pair=x")  # doctest: +SKIP
    """
    from autoquant_sweep.errors import UserInputError

    with contextlib.redirect_stdout(sys.stderr):
        from modelopt.torch.quantization.config import QuantizeConfig, QuantizerCfgEntry

    prefix = f"{context}: ModelOpt rejects the effective format"
    if not isinstance(fmt, dict) or not isinstance(fmt.get("quant_cfg"), list):
        raise UserInputError(f"{prefix}: it must be a mapping with a list 'quant_cfg'")
    for index, rule in enumerate(fmt["quant_cfg"]):
        name = rule.get("quantizer_name") if isinstance(rule, dict) else None
        where = f"quant_cfg rule #{index}" + (f" ('{name}')" if name else "")
        try:
            QuantizerCfgEntry.model_validate(copy.deepcopy(rule))
        except Exception as exc:  # pydantic.ValidationError, or ModelOpt's own ValueError/AssertionError
            raise UserInputError(f"{prefix}: {where}: {_validation_reason(exc)}") from exc
    try:
        QuantizeConfig.model_validate(copy.deepcopy(fmt))
    except Exception as exc:
        raise UserInputError(f"{prefix}: {_validation_reason(exc)}") from exc
