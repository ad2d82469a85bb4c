"""Granularity overlays on ModelOpt 0.47 quantization formats (pure: no torch, no modelopt).

A *format* is what ``mtq.auto_quantize`` takes as one candidate: ``{"quant_cfg": [rule, ...],
"algorithm": ...}``. ModelOpt 0.47 uses an ordered LIST of rules
``{"quantizer_name": glob, "cfg": {...} | [{...}, ...], "enable": bool, "parent_class": "nn.X"}``
where later rules win. An *overlay* (``quant_cfg_overrides`` of a ``conf/quant_granularity`` file)
changes only the granularity attributes ``axis`` / ``block_sizes`` / ``type`` of named quantizer
patterns, on a deep copy.

Semantics (see ``docs/granularity.md``):

- the override lands on the LAST rule whose ``quantizer_name`` equals the pattern exactly, has no
  ``parent_class`` and carries a ``cfg`` (the rule that wins for that quantizer);
- a pattern whose quantizer is disabled in the base (its own rule says ``enable: False``, or it has
  no rule and the leading ``"*"`` rule disables it) is a recorded no-op, never an error and never
  enabled by the overlay;
- a pattern that is neither in the rules nor one of :data:`WEIGHT` / :data:`INPUT` is an error;
- ``axis`` removes ``block_sizes``; ``block_sizes`` removes ``axis`` and merges into the existing
  mapping (keeps ``type``, ``scale_bits``, ``scale_block_sizes``); ``axis: null`` next to
  ``block_sizes`` is allowed (ModelOpt's own ``FP8_PER_CHANNEL_PER_TOKEN_CFG`` input rule writes it);
- ``type`` is the **quantizer-level** attribute (``TensorQuantizer`` dynamic or static): with
  ``axis: null`` and ``block_sizes: {-1: null}`` it makes inputs per-token dynamic. It is not
  ``block_sizes["type"]``, which is dynamic *block* quantization (NVFP4 / MX style) and, written
  ``{-1: None, "type": "dynamic"}`` as ModelOpt's docstring suggests, instantiates a static quantizer
  per (batch, position) for INT8 inputs (facts 31; refused by a capability rule). An overlay writes
  ``block_sizes["type"]`` only when its ``block_sizes`` says so explicitly;
- the key ``default`` is shorthand for both :data:`WEIGHT` and :data:`INPUT` (explicit pattern
  entries win over it attribute by attribute); like any overlay it never enables a quantizer;
- a sequential ``cfg`` (a list, e.g. ``W4A8_AWQ_BETA_CFG`` weights: INT4 block-128 then FP8
  per-tensor) is overlaid on stage 0 only: stage 0 is the low-bit primary quantizer whose
  granularity is the experiment variable; the later stage re-quantizes the result per tensor and
  changing it would alter the format's dtype recipe, not its granularity. A note records it.

What is checked here is the overlay's own input (the override attributes and their values) and
what the overlay needs to work. The structure of a ``quant_cfg`` (which rule keys, ``cfg``
attributes and ``block_sizes`` keys exist, e.g. ModelOpt 0.47's ``four_over_six``) is ModelOpt's
business: :func:`autoquant_sweep.quant.formats.check_with_modelopt`, the last gate of a plan,
validates the effective format with ModelOpt's own schema, so new ModelOpt keys pass through here.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from autoquant_sweep.fingerprints import canonical_json

__all__ = [
    "ALLOWED_ATTRS",
    "BLOCK_SIZE_SPECIAL_KEYS",
    "INPUT",
    "WEIGHT",
    "OverlayError",
    "OverlayResult",
    "apply_overlay",
    "axis_key",
    "effective_quantizer_cfg",
    "expand_overrides",
    "format_bits",
    "normalize_block_sizes",
    "to_rule_list",
    "validate_overrides",
]

WEIGHT = "*weight_quantizer"
INPUT = "*input_quantizer"
DEFAULT_KEY = "default"
STANDARD_PATTERNS: tuple[str, ...] = (WEIGHT, INPUT)
ALLOWED_ATTRS: tuple[str, ...] = ("axis", "block_sizes", "type")
# the special (non-axis) block_sizes keys ModelOpt 0.47 knows (facts 23; for reading formats, e.g. the
# shape checks of model_shapes; ModelOpt validates them)
BLOCK_SIZE_SPECIAL_KEYS: tuple[str, ...] = ("type", "scale_bits", "scale_block_sizes", "four_over_six")
TYPE_VALUES: tuple[str, ...] = ("static", "dynamic")


class OverlayError(ValueError):
    """A granularity overlay or a quant_cfg is invalid; the message names the key and the fix."""


# --------------------------------------------------------------------------------------------- helpers


def _plain(obj: Any) -> Any:
    """Deep-copy ``obj`` into plain Python containers (OmegaConf containers included).

    Mappings become dicts, tuples stay tuples (ModelOpt uses them for ``num_bits``), other
    non-string sequences become lists.
    """
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return [_plain(v) for v in obj]
    return copy.deepcopy(obj)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def axis_key(key: Any) -> int | None:
    """A ``block_sizes`` key naming an axis as an int (``-1``, or ``"-1"`` from JSON/YAML), else None.

    Example:
        >>> axis_key("-1"), axis_key(0), axis_key("type"), axis_key(True)
        (-1, 0, None, None)
    """
    if _is_int(key):
        return key
    if isinstance(key, str):
        try:
            return int(key.strip())
        except ValueError:
            return None
    return None


# --------------------------------------------------------------------------------------------- rule list


def _legacy_entry(key: Any, value: Any) -> list[dict[str, Any]]:
    """Convert one legacy ``{pattern: cfg}`` pair like ModelOpt's ``normalize_quant_cfg_list``."""
    if key == DEFAULT_KEY:
        if isinstance(value, Mapping) and value.get("enable") is False:
            raise OverlayError(
                "legacy dict-form quant_cfg key 'default' with enable: False would become a TRAILING "
                "{'quantizer_name': '*', 'enable': False} rule that switches EVERY quantizer off "
                "(mtq.auto_quantize then scores every layer 0.0 and raises nothing); put a leading "
                "{'quantizer_name': '*', 'enable': False} rule first in a list-schema quant_cfg instead"
            )
        key = "*"
    if not isinstance(key, str):
        raise OverlayError(f"quant_cfg key {key!r} must be a quantizer name glob string")
    if key.startswith("nn."):
        if not isinstance(value, Mapping):
            raise OverlayError(f"quant_cfg key '{key}': an 'nn.*'-scoped entry needs a mapping value")
        out = []
        for q_name, sub in value.items():
            sub = _plain(sub)
            enable = sub.pop("enable", None) if isinstance(sub, dict) else None
            entry: dict[str, Any] = {"quantizer_name": q_name, "parent_class": key}
            if sub:
                entry["cfg"] = sub
            if enable is not None:
                entry["enable"] = enable
            out.append(entry)
        return out
    entry = {"quantizer_name": key}
    if isinstance(value, Mapping):
        cfg = {k: _plain(v) for k, v in value.items() if k != "enable"}
        if cfg:
            entry["cfg"] = cfg
        if "enable" in value:
            entry["enable"] = value["enable"]
    else:
        entry["cfg"] = _plain(value)
    return [entry]


def _check_rule(rule: Mapping[str, Any], index: int) -> dict[str, Any]:
    """A deep copy of ``rule``; only what the overlay reads is checked (ModelOpt checks the rest)."""
    name = rule.get("quantizer_name")
    if not isinstance(name, str) or not name:
        raise OverlayError(f"quant_cfg rule #{index}: 'quantizer_name' must be a non-empty string")
    return _plain(rule)


def to_rule_list(quant_cfg: list | dict) -> list[dict]:
    """Return ``quant_cfg`` as a deep-copied ModelOpt 0.47 rule list.

    Legacy single-key entries (and multi-key ``nn.*``-scoped ones) are converted; a legacy dict is
    converted in dict order like ``normalize_quant_cfg_list``. A dict-form ``"default"`` that
    disables is refused: it would append a trailing ``*`` disable rule that switches every
    quantizer off. Rule contents are not validated here (ModelOpt's schema does that).

    Example:
        >>> to_rule_list({"*": {"enable": False}, "*weight_quantizer": {"num_bits": 8, "axis": 0}})
        [{'quantizer_name': '*', 'enable': False}, {'quantizer_name': '*weight_quantizer', 'cfg': {'num_bits': 8, 'axis': 0}}]
    """  # noqa: E501
    if isinstance(quant_cfg, Mapping):
        raw: list[Any] = [{k: v} for k, v in quant_cfg.items()]
    elif isinstance(quant_cfg, Sequence) and not isinstance(quant_cfg, (str, bytes)):
        raw = list(quant_cfg)
    else:
        raise OverlayError(
            f"quant_cfg must be a list of rules (or a legacy dict), got {type(quant_cfg).__name__}"
        )
    rules: list[dict[str, Any]] = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            raise OverlayError(f"quant_cfg rule #{len(rules)} must be a mapping, got {entry!r}")
        if "quantizer_name" in entry:
            rules.append(_check_rule(entry, len(rules)))
        elif len(entry) == 1 or any(str(key).startswith("nn.") for key in entry):
            for key, value in entry.items():
                for converted in _legacy_entry(key, value):
                    rules.append(_check_rule(converted, len(rules)))
        else:
            raise OverlayError(f"quant_cfg rule #{len(rules)} is not a recognised rule: {dict(entry)!r}")
    return rules


# --------------------------------------------------------------------------------------------- validation


def normalize_block_sizes(block_sizes: Mapping, *, where: str = "block_sizes") -> dict:
    """Normalise a ``block_sizes`` mapping: ``"-1"`` -> ``-1`` (also in ``scale_block_sizes``).

    Axis keys must map to positive ints or ``None`` (``{-1: None}`` = whole axis, per token for
    inputs); ``type`` must be ``static`` or ``dynamic``; ``scale_bits`` lists become tuples. Other
    keys (``four_over_six``...) pass through unchanged: ModelOpt's schema judges them.

    Example:
        >>> normalize_block_sizes({"-1": 64, "type": "static"})
        {-1: 64, 'type': 'static'}
        >>> normalize_block_sizes({-1: 16, "type": "dynamic", "scale_bits": [4, 3], "four_over_six": True})
        {-1: 16, 'type': 'dynamic', 'scale_bits': (4, 3), 'four_over_six': True}
    """
    if not isinstance(block_sizes, Mapping):
        raise OverlayError(f"{where}: block_sizes must be a mapping like {{-1: 64}}, got {block_sizes!r}")
    out: dict[Any, Any] = {}
    for key, value in block_sizes.items():
        axis = axis_key(key)
        if key == "type":
            if value not in TYPE_VALUES:
                raise OverlayError(f"{where}: block_sizes.type={value!r}; use one of {list(TYPE_VALUES)}")
            out["type"] = value
        elif key == "scale_bits":
            out["scale_bits"] = tuple(value) if isinstance(value, (list, tuple)) else _plain(value)
        elif key == "scale_block_sizes":
            out["scale_block_sizes"] = (
                None if value is None else normalize_block_sizes(value, where=f"{where}.scale_block_sizes")
            )
        elif axis is None:
            out[key] = _plain(value)
        else:
            if value is not None and (not _is_int(value) or value <= 0):
                raise OverlayError(
                    f"{where}: block size for key {key!r} is {value!r}; use a positive int "
                    f"(group size) or null (whole axis)"
                )
            if axis in out:
                raise OverlayError(f"{where}: block_sizes key {key!r} given twice (as {axis!r})")
            out[axis] = value
    return out


def validate_overrides(overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """Validate and normalise ``quant_cfg_overrides``; return a plain, normalised copy.

    Keys: a quantizer pattern ending in ``quantizer`` (``*weight_quantizer``, ``*input_quantizer``,
    ``*q_proj.weight_quantizer``...) or ``default``. Attributes: ``axis`` (``None`` or int, not
    bool), ``block_sizes`` (mapping, normalised), ``type`` (``static``/``dynamic``, the quantizer-level
    attribute); a non-null ``axis`` and ``block_sizes`` are mutually exclusive.

    Example:
        >>> validate_overrides({"*weight_quantizer": {"block_sizes": {"-1": 64}}})
        {'*weight_quantizer': {'block_sizes': {-1: 64}}}
    """
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise OverlayError(
            f"quant_cfg_overrides must be a mapping of quantizer pattern -> attributes, got "
            f"{type(overrides).__name__}"
        )
    out: dict[str, dict] = {}
    for pattern, attrs in overrides.items():
        if not isinstance(pattern, str) or not (pattern == DEFAULT_KEY or pattern.endswith("quantizer")):
            raise OverlayError(
                f"quant_cfg_overrides key {pattern!r} is not a quantizer pattern; use '{WEIGHT}', "
                f"'{INPUT}', another glob ending in 'quantizer', or '{DEFAULT_KEY}'"
            )
        if attrs is None:
            attrs = {}
        if not isinstance(attrs, Mapping):
            raise OverlayError(
                f"quant_cfg_overrides['{pattern}'] must be a mapping of attributes, got {attrs!r}"
            )
        clean: dict[str, Any] = {}
        for attr, value in attrs.items():
            where = f"quant_cfg_overrides['{pattern}'].{attr}"
            if attr not in ALLOWED_ATTRS:
                raise OverlayError(
                    f"quant_cfg_overrides['{pattern}']: unknown attribute {attr!r}; allowed: "
                    f"{list(ALLOWED_ATTRS)} (granularity only: dtypes come from quant_pair)"
                )
            if attr == "axis":
                if value is not None and not _is_int(value):
                    raise OverlayError(f"{where}={value!r}: axis must be null (per tensor) or an int")
                clean["axis"] = value
            elif attr == "block_sizes":
                clean["block_sizes"] = normalize_block_sizes(value, where=where)
            else:
                if value not in TYPE_VALUES:
                    raise OverlayError(f"{where}={value!r}: use one of {list(TYPE_VALUES)}")
                clean["type"] = value
        if clean.get("axis") is not None and "block_sizes" in clean:
            raise OverlayError(
                f"quant_cfg_overrides['{pattern}'] sets both 'axis' and 'block_sizes'; ModelOpt rejects "
                f"that ('Axis and block_sizes are both set.'): keep one (axis: null may stand beside "
                f"block_sizes)"
            )
        out[pattern] = clean
    return out


def expand_overrides(overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """Validate ``overrides`` and expand ``default`` into :data:`WEIGHT` and :data:`INPUT`.

    Explicit pattern entries win over ``default`` attribute by attribute (an explicit ``axis`` drops
    the default's ``block_sizes`` and vice versa).
    """
    clean = validate_overrides(overrides)
    default = clean.pop(DEFAULT_KEY, None)
    if default is None:
        return clean
    out: dict[str, dict] = {}
    for pattern in STANDARD_PATTERNS:
        merged = copy.deepcopy(default)
        explicit = clean.get(pattern, {})
        if "axis" in explicit:
            merged.pop("block_sizes", None)
        if "block_sizes" in explicit:
            merged.pop("axis", None)
        merged.update(copy.deepcopy(explicit))
        out[pattern] = merged
    for pattern, attrs in clean.items():
        if pattern not in out:
            out[pattern] = attrs
    return out


# --------------------------------------------------------------------------------------------- overlay


@dataclass(frozen=True)
class OverlayResult:
    """Outcome of :func:`apply_overlay`."""

    format: dict
    changed_patterns: tuple[str, ...]
    noop_patterns: tuple[str, ...]
    notes: tuple[str, ...]
    requested_patterns: tuple[str, ...] = ()

    @property
    def is_noop(self) -> bool:
        """True when overrides were requested and nothing changed."""
        return bool(self.requested_patterns) and not self.changed_patterns


def _rule_matches(rule: Mapping[str, Any], name: str) -> bool:
    return not rule.get("parent_class") and fnmatchcase(name, rule["quantizer_name"])


def _effective_from_rules(rules: Sequence[Mapping[str, Any]], name: str) -> Any:
    cfg: Any = None
    enabled = False
    for rule in rules:
        if not _rule_matches(rule, name):
            continue
        if rule.get("cfg") is not None:
            cfg = rule["cfg"]
            enabled = rule.get("enable", True)
        elif "enable" in rule:
            enabled = rule["enable"]
    if not enabled or cfg is None:
        return None
    return copy.deepcopy(cfg)


def effective_quantizer_cfg(fmt: Mapping, pattern: str) -> dict | list | None:
    """The cfg a quantizer named ``pattern`` gets from the ordered rules; ``None`` if disabled.

    Later rules win; rules with ``parent_class`` are ignored; the name is matched with ``fnmatch``
    (a pattern such as ``*weight_quantizer`` stands for itself). Sequential quantizers return the
    list of stage cfgs.

    Example:
        >>> fmt = {"quant_cfg": [{"quantizer_name": "*", "enable": False},
        ...        {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}}]}
        >>> effective_quantizer_cfg(fmt, "model.layers.0.mlp.up_proj.weight_quantizer")
        {'num_bits': 8, 'axis': 0}
        >>> effective_quantizer_cfg(fmt, "*input_quantizer") is None
        True
    """
    return _effective_from_rules(to_rule_list(fmt["quant_cfg"]), pattern)


def _base_block_sizes(block_sizes: Any, where: str) -> Any:
    """A base format's ``block_sizes`` with axis keys as ints (``"-1"`` -> ``-1``), nested ones too.

    Lenient, unlike :func:`normalize_block_sizes`: keys and values it does not know are kept as they
    are (a base format is ModelOpt's business); only two keys naming one axis are an error. Formats
    read back from JSON or YAML (a manifest, a registry config) carry string keys, and merging
    ``{-1: 64}`` into ``{"-1": 128}`` must not leave two block sizes for one axis.

    Example:
        >>> _base_block_sizes({"-1": 128, "type": "static", "scale_block_sizes": {"-1": 32}}, "x")
        {-1: 128, 'type': 'static', 'scale_block_sizes': {-1: 32}}
    """
    if not isinstance(block_sizes, Mapping):
        return copy.deepcopy(block_sizes)
    out: dict[Any, Any] = {}
    for key, value in block_sizes.items():
        if key == "scale_block_sizes":
            value = _base_block_sizes(value, f"{where}.scale_block_sizes")
        else:
            value = copy.deepcopy(value)
        key = key if axis_key(key) is None else axis_key(key)
        if key in out:
            raise OverlayError(
                f"{where}: the base format's block_sizes name axis {key!r} twice (as an int and as a "
                f"string); fix the format so that each axis has one block size"
            )
        out[key] = value
    return out


def _apply_attrs(cfg: dict, attrs: Mapping[str, Any], pattern: str, fmt_name: str) -> dict:
    new = copy.deepcopy(cfg)
    if new.get("block_sizes") is not None:
        new["block_sizes"] = _base_block_sizes(new["block_sizes"], f"format '{fmt_name}' {pattern}")
    if "block_sizes" in attrs:
        new.pop("axis", None)
        merged = dict(new.get("block_sizes") or {})
        merged.update(copy.deepcopy(attrs["block_sizes"]))
        new["block_sizes"] = merged
        if "axis" in attrs:  # axis: null beside block_sizes, as ModelOpt's own per-token input rule
            new["axis"] = None
    elif "axis" in attrs:
        new["axis"] = attrs["axis"]
        new.pop("block_sizes", None)
    if "type" in attrs and (attrs["type"] != "static" or "type" in new):
        # the quantizer-level attribute: TensorQuantizer reads it as dynamic / static (facts 31); static is
        # ModelOpt's default, so it is written only over an explicit type. block_sizes["type"] (dynamic
        # block quantization) is left as the format or the overlay set it.
        new["type"] = attrs["type"]
    return new


def apply_overlay(
    base_format: Mapping, overrides: Mapping[str, Mapping[str, Any]], *, format_name: str = ""
) -> OverlayResult:
    """Apply a granularity overlay to a deep copy of ``base_format``.

    Example:
        >>> base = {"quant_cfg": [{"quantizer_name": "*", "enable": False},
        ...   {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 4,
        ...    "block_sizes": {-1: 128, "type": "static"}}}], "algorithm": "max"}
        >>> res = apply_overlay(base, {"*weight_quantizer": {"block_sizes": {"-1": 64}}})
        >>> res.format["quant_cfg"][1]["cfg"]
        {'num_bits': 4, 'block_sizes': {-1: 64, 'type': 'static'}}
        >>> res.changed_patterns, apply_overlay(base, {"*input_quantizer": {"axis": None}}).is_noop
        (('*weight_quantizer',), True)
    """
    if not isinstance(base_format, Mapping) or "quant_cfg" not in base_format:
        raise OverlayError("base format must be a mapping with a 'quant_cfg' key (and 'algorithm')")
    name = format_name or "<base format>"
    expanded = expand_overrides(overrides)
    fmt = {k: _plain(v) for k, v in base_format.items() if k != "quant_cfg"}
    rules = to_rule_list(base_format["quant_cfg"])
    changed: list[str] = []
    noop: list[str] = []
    notes: list[str] = []
    for pattern, attrs in expanded.items():
        present = any(r["quantizer_name"] == pattern and not r.get("parent_class") for r in rules)
        if not present and pattern not in STANDARD_PATTERNS:
            raise OverlayError(
                f"pattern '{pattern}' not in format '{name}'; use a quantizer_name that the format's "
                f"rules contain, or '{WEIGHT}' / '{INPUT}'"
            )
        if _effective_from_rules(rules, pattern) is None:
            noop.append(pattern)
            notes.append(f"{pattern}: disabled in '{name}'; overlay does nothing there (not enabled)")
            continue
        if not attrs:
            continue
        target = None
        for i in range(len(rules) - 1, -1, -1):
            rule = rules[i]
            if rule["quantizer_name"] == pattern and not rule.get("parent_class") and rule.get("cfg"):
                target = i
                break
        if target is None:
            raise OverlayError(
                f"pattern '{pattern}' has no rule of its own with a cfg in format '{name}' (it is "
                f"configured by a broader glob); add an explicit rule for it to the format"
            )
        cfg = rules[target]["cfg"]
        stage0 = cfg[0] if isinstance(cfg, list) and cfg else cfg
        if not isinstance(stage0, Mapping):
            raise OverlayError(
                f"pattern '{pattern}' in format '{name}': its cfg {cfg!r} is neither a mapping of quantizer "
                f"attributes nor a list of them; nothing to overlay"
            )
        if isinstance(cfg, list):
            stage0 = _apply_attrs(cfg[0], attrs, pattern, name)
            new_cfg: Any = [stage0, *copy.deepcopy(cfg[1:])]
            notes.append(f"sequential cfg for {pattern}: applied to stage 0 of {len(cfg)}")
        else:
            new_cfg = _apply_attrs(cfg, attrs, pattern, name)
        if canonical_json(new_cfg) == canonical_json(cfg):
            notes.append(f"{pattern}: override restates the base cfg of '{name}' (no change)")
            continue
        rules[target]["cfg"] = new_cfg
        changed.append(pattern)
    out = {"quant_cfg": rules, **fmt}
    return OverlayResult(
        format=out,
        changed_patterns=tuple(changed),
        noop_patterns=tuple(noop),
        notes=tuple(notes),
        requested_patterns=tuple(p for p, a in expanded.items() if a),
    )


def _stage_bits(cfg: Any) -> float:
    """Bits per element of one quantizer cfg, the way ModelOpt 0.47 estimates a recipe's cost."""
    if isinstance(cfg, list):
        return min((_stage_bits(stage) for stage in cfg), default=16.0)
    if not isinstance(cfg, Mapping) or not cfg.get("enable", True):
        return 16.0
    if cfg.get("effective_bits") is not None:
        return float(cfg["effective_bits"])
    num_bits = cfg.get("num_bits", 8)  # QuantizerAttributeConfig's default num_bits is 8
    if isinstance(num_bits, (list, tuple)):
        return float(sum(num_bits) + 1)
    if _is_int(num_bits):
        return float(num_bits)
    raise OverlayError(f"cannot tell the bits of num_bits={num_bits!r}")


def format_bits(fmt: Mapping) -> float:
    """Bits per weight element that AutoQuant's cost assigns to a format (pure, no ModelOpt).

    Mirrors ``estimate_quant_compression`` of ``modelopt/torch/quantization/algorithms.py`` (0.47):
    a format-level ``effective_bits`` wins; else the minimum over every enabled rule's cfg of its
    ``effective_bits``, else ``num_bits`` (``(E, M)`` counts ``E + M + 1``). Note that this minimum
    includes the input quantizers: W4A8 costs 4 bits, and INT8 inputs next to FP8 weights cost 8.

    Example:
        >>> format_bits({"quant_cfg": [{"quantizer_name": "*", "enable": False},
        ...   {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 4, "block_sizes": {-1: 128}}},
        ...   {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": (4, 3)}}]})
        4.0
    """
    if fmt.get("effective_bits") is not None:
        return float(fmt["effective_bits"])
    bits = [
        _stage_bits(rule["cfg"])
        for rule in to_rule_list(fmt["quant_cfg"])
        if rule.get("enable", True) is not False and rule.get("cfg") is not None
    ]
    return min(bits) if bits else 16.0
