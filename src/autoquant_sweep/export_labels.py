"""Deployment labels: which ModelOpt unified-checkpoint ``quant_algo`` describes a layer group's format.

ModelOpt 0.47's ``export_hf_checkpoint`` picks the label from the weight quantizer alone (facts 28):
INT4 weights become ``W4A16_AWQ`` whatever their granularity or input quantizer, INT8 weights
``W8A8_SQ_PER_CHANNEL`` or ``W8A16``, so a granularity the label does not describe is exported under
a name that says something else (or fails deep inside the export). A serving engine trusts the label,
so here every quantized layer group's (weight, input) quantizer cfgs must map to a label that
**describes** them (quant algo, group size, weight / input granularity), read the way
:func:`autoquant_sweep.quant.realized.declared_kind` reads a cfg, before any model is loaded:

============================  =====================================  ===================================
label (``quant_algo``)        weights                                inputs
============================  =====================================  ===================================
``FP8``                       FP8 E4M3 per tensor                    FP8 per tensor, static
``FP8_PER_CHANNEL_PER_TOKEN`` FP8 E4M3 per output channel            FP8 per token, dynamic
``W8A8_SQ_PER_CHANNEL``       INT8 per output channel                INT8 per tensor, static
``W8A16``                     INT8 per output channel                not quantized
``W4A16_AWQ``                 INT4 groups of 64 / 128                not quantized
``W4A8_AWQ``                  INT4 groups of 128, then FP8 per tensor FP8 per tensor, static
``NVFP4``                     NVFP4 (E2M1, dynamic blocks of 16)     NVFP4 (dynamic blocks of 16)
``W4A16_NVFP4``               NVFP4 (E2M1, dynamic blocks of 16)     not quantized
``W4A8_NVFP4_FP8``            NVFP4 (E2M1, dynamic blocks of 32)     FP8 per tensor, static
============================  =====================================  ===================================

The NVFP4 rows are ModelOpt's CUDA-only formats (facts 8): labelled, never exported on CPU here.
Everything else is refused in one line (:class:`ExportLabelError`). A checkpoint whose groups carry
different labels is ModelOpt's ``MIXED_PRECISION`` with a per-layer map (:func:`checkpoint_label`).
Pure: imports neither torch nor ModelOpt (``autoquant-sweep validate`` uses it for "exports as").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoquant_sweep.errors import UserInputError
from autoquant_sweep.quant.overlay import _effective_from_rules, to_rule_list
from autoquant_sweep.quant.realized import declared_kind

__all__ = [
    "INT4_GROUP_SIZES",
    "MIXED",
    "DeployLabel",
    "ExportLabelError",
    "checkpoint_label",
    "exports_as",
    "format_label",
    "group_labels",
    "group_quantizers",
    "label_for",
]

MIXED = "MIXED_PRECISION"
#: INT4 group sizes the W4A16_AWQ label is deployed with (ModelOpt's INT4 presets use 128, the
#: project's w_group64 64; TensorRT-LLM's INT4 AWQ kernels take 64 and 128): others are refused
INT4_GROUP_SIZES = (64, 128)
W4A8_GROUP_SIZES = (128,)  # ModelOpt's W4A8_AWQ_BETA preset and its serving kernels
FP8 = (4, 3)
FP4 = (2, 1)


class ExportLabelError(UserInputError):
    """A quantized layer group's format has no deployment label that describes it."""


@dataclass(frozen=True)
class DeployLabel:
    """The label of one layer group: ModelOpt's ``quant_algo`` and what it stands for."""

    quant_algo: str
    group_size: int | None
    weight: str  # declared weight kind(s), stages joined by "+"
    input: str  # declared input kind, or "disabled"

    def as_dict(self) -> dict[str, Any]:
        return {"quant_algo": self.quant_algo, "group_size": self.group_size, "weight": self.weight,
                "input": self.input}


def _bits(cfg: Mapping[str, Any] | None) -> Any:
    bits = None if cfg is None else cfg.get("num_bits", 8)
    return tuple(bits) if isinstance(bits, (list, tuple)) else bits


def _dtype(bits: Any) -> str:
    return {8: "INT8", 4: "INT4", FP8: "FP8", FP4: "FP4"}.get(bits, f"num_bits={bits}")


def _stages(cfg: Any) -> list[Mapping[str, Any]]:
    stages = cfg if isinstance(cfg, list) else ([cfg] if cfg is not None else [])
    return [s for s in stages if isinstance(s, Mapping) and s.get("enable", True) is not False]


def _group(kind: str) -> int | None:
    """The group size of a ``group<N>`` / ``dynamic_group<N>`` kind, else ``None``."""
    bare = kind.removeprefix("dynamic_")
    return int(bare[5:]) if bare.startswith("group") and bare[5:].isdigit() else None


def _docstring_per_token(cfg: Mapping[str, Any]) -> bool:
    """ModelOpt's documented per-token form ``block_sizes {-1: None, "type": "dynamic"}`` without the
    quantizer-level ``type: dynamic``: declared dynamic, realized static per (batch, position)."""
    block = cfg.get("block_sizes")
    if not isinstance(block, Mapping) or block.get("type") != "dynamic" or cfg.get("type") == "dynamic":
        return False
    sizes = [v for k, v in block.items() if k not in ("type", "scale_bits", "scale_block_sizes")]
    return bool(sizes) and all(v is None for v in sizes)


def describe(weight: Any, inputs: Any) -> str:
    """``INT8 per_in_channel weights + inputs disabled``: a format in the words of the refusals.

    Example:
        >>> describe({"num_bits": 8, "axis": 1}, None)
        'INT8 per_in_channel weights + inputs disabled'
    """
    ws, xs = _stages(weight), _stages(inputs)
    w = "+".join(f"{_dtype(_bits(s))} {declared_kind(s, 'weight')}" for s in ws) or "16-bit"
    x = " + ".join(f"{_dtype(_bits(s))} {declared_kind(s, 'input')}" for s in xs) or "disabled"
    return f"{w} weights + inputs {x}"


def label_for(weight: Any, inputs: Any) -> DeployLabel | None:
    """The label of a (weight cfg, input cfg) pair (``None``: a group kept at 16 bits); refuses with
    :class:`ExportLabelError` (message: the format and why, without the group) when none describes it.

    Example:
        >>> label_for({"num_bits": 8, "axis": 0}, {"num_bits": 8, "axis": None}).quant_algo
        'W8A8_SQ_PER_CHANNEL'
        >>> label_for({"num_bits": 4, "block_sizes": {-1: 64, "type": "static"}}, None).group_size
        64
        >>> label_for({"num_bits": 4, "axis": 0}, None)
        Traceback (most recent call last):
        ...
        autoquant_sweep.export_labels.ExportLabelError: INT4 per_out_channel weights + inputs disabled: INT4 weights are deployed in groups (W4A16_AWQ, group size 64 / 128); per_out_channel INT4 has no label
    """  # noqa: E501
    ws, xs = _stages(weight), _stages(inputs)
    what = describe(weight, inputs)
    if not ws:
        if xs:
            raise ExportLabelError(f"{what}: quantized inputs with 16-bit weights have no deployment label")
        return None
    if len(xs) > 1:
        raise ExportLabelError(f"{what}: sequential input quantizers have no deployment label")
    x = xs[0] if xs else None
    xbits, xkind = _bits(x), (declared_kind(x, "input") if x is not None else "disabled")
    if x is not None and _docstring_per_token(x):
        raise ExportLabelError(f"{what}: this per-token form (block_sizes type dynamic, no quantizer-level "
                               "type) is instantiated static per (batch, position) by ModelOpt 0.47 (facts "
                               "31); static per-token inputs have no deployment label")
    wkinds = [declared_kind(s, "weight") for s in ws]
    wbits = [_bits(s) for s in ws]

    def refuse(why: str) -> ExportLabelError:
        return ExportLabelError(f"{what}: {why}")

    def make(algo: str, group: int | None = None) -> DeployLabel:
        return DeployLabel(algo, group, "+".join(wkinds), xkind)

    if len(ws) == 2:  # ModelOpt's W4A8 AWQ: INT4 groups, then FP8 per tensor
        group = _group(wkinds[0])
        if wbits != [4, FP8] or group is None or wkinds[1] != "per_tensor":
            raise refuse("the only two-stage weight label is W4A8_AWQ (INT4 groups, then FP8 per tensor)")
        if group not in W4A8_GROUP_SIZES:
            raise refuse(f"W4A8_AWQ is deployed with group size {W4A8_GROUP_SIZES[0]}, not {group}")
        if xbits != FP8 or xkind != "per_tensor_static":
            raise refuse("W4A8_AWQ carries FP8 per-tensor static inputs only")
        return make("W4A8_AWQ", group)
    if len(ws) > 2:
        raise refuse("more than two weight stages have no deployment label")
    bits, kind = wbits[0], wkinds[0]
    if bits == 4:
        group = _group(kind)
        if group is None or kind.startswith("dynamic_"):
            raise refuse("INT4 weights are deployed in groups (W4A16_AWQ, group size "
                         f"{' / '.join(map(str, INT4_GROUP_SIZES))}); {kind} INT4 has no label")
        if group not in INT4_GROUP_SIZES:
            raise refuse(f"W4A16_AWQ is deployed with group size {' / '.join(map(str, INT4_GROUP_SIZES))}, "
                         f"not {group}")
        if x is not None:
            raise refuse(f"W4A16_AWQ says 16-bit inputs; {_dtype(xbits)} inputs would be dropped "
                         "(W4A8_AWQ needs FP8 inputs and INT4-then-FP8 weights)")
        return make("W4A16_AWQ", group)
    if bits == 8:
        if kind != "per_out_channel":
            raise refuse(f"W8A8_SQ_PER_CHANNEL / W8A16 carry one INT8 weight scale per output channel; "
                         f"{kind} weights are stored under it wrongly")
        if x is None:
            return make("W8A16")
        if xbits == 8 and xkind == "per_tensor_static":
            return make("W8A8_SQ_PER_CHANNEL")
        raise refuse(f"W8A8_SQ_PER_CHANNEL carries INT8 per-tensor static inputs; {_dtype(xbits)} "
                     f"{xkind} inputs have no INT8-weight label")
    if bits == FP8:
        if kind == "per_tensor" and xbits == FP8 and xkind == "per_tensor_static":
            return make("FP8")
        if kind == "per_out_channel" and xbits == FP8 and xkind == "per_token_dynamic":
            return make("FP8_PER_CHANNEL_PER_TOKEN")
        raise refuse("FP8 labels are FP8 (per-tensor weights, FP8 per-tensor static inputs) and "
                     "FP8_PER_CHANNEL_PER_TOKEN (per-channel weights, FP8 per-token dynamic inputs); "
                     f"{kind} weights with {xkind} inputs would be labelled as one of them")
    if bits == FP4:
        block = ws[0].get("block_sizes") or {}
        size = _group(kind)
        if block.get("scale_bits") not in (FP8, list(FP8)) or not kind.startswith("dynamic_"):
            raise refuse("FP4 weights are deployed as NVFP4 (dynamic blocks, FP8 scales) only")
        if x is None and size == 16:
            return make("W4A16_NVFP4", 16)
        if xbits == FP4 and size == 16 and xkind.startswith("dynamic_group16"):
            return make("NVFP4", 16)
        if xbits == FP8 and size == 32 and xkind == "per_tensor_static":
            return make("W4A8_NVFP4_FP8", 32)
        raise refuse("NVFP4 labels carry weight blocks of 16 with NVFP4 or no inputs (NVFP4 / W4A16_NVFP4), "
                     f"or of 32 with FP8 per-tensor static inputs (W4A8_NVFP4_FP8); {kind} weights with "
                     f"{xkind} inputs have none")
    raise refuse(f"no deployment label for {_dtype(bits)} weights")


def group_quantizers(quant_cfg: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Per layer group (module) the effective (weight cfg, input cfg) of a quant_cfg (``None``: disabled).

    A recipe names its modules (``model.layers.0.mlp.up_proj.weight_quantizer``); a uniform config only
    has patterns, so it is one group ``*`` (every linear the patterns enable).

    Example:
        >>> cfg = {"quant_cfg": [{"quantizer_name": "*", "enable": False},
        ...   {"quantizer_name": "m.0.q_proj.weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}},
        ...   {"quantizer_name": "m.0.k_proj.weight_quantizer", "enable": False}]}
        >>> group_quantizers(cfg)
        {'m.0.q_proj': ({'num_bits': 8, 'axis': 0}, None), 'm.0.k_proj': (None, None)}
    """
    rules = to_rule_list(quant_cfg["quant_cfg"])
    modules: dict[str, None] = {}  # in the recipe's order (the model's), for the refusal's "first group"
    for rule in rules:
        name = str(rule.get("quantizer_name", ""))
        for attr in (".weight_quantizer", ".input_quantizer"):
            if name.endswith(attr) and not any(c in name for c in "*?["):
                modules.setdefault(name[: -len(attr)])
    if not modules:
        return {"*": (_effective_from_rules(rules, "*weight_quantizer"),
                      _effective_from_rules(rules, "*input_quantizer"))}
    return {m: (_effective_from_rules(rules, f"{m}.weight_quantizer"),
                _effective_from_rules(rules, f"{m}.input_quantizer")) for m in modules}


def group_labels(quant_cfg: Mapping[str, Any], *, where: str = "export") -> dict[str, DeployLabel]:
    """The label of every quantized layer group (groups kept at 16 bits are left out); the first group
    without one is refused in one line naming it, its format, why, and how many more share the problem.

    Example:
        >>> cfg = {"quant_cfg": [{"quantizer_name": "*", "enable": False},
        ...   {"quantizer_name": "m.0.q_proj.weight_quantizer", "cfg": {"num_bits": 8, "axis": 1}}]}
        >>> group_labels(cfg)
        Traceback (most recent call last):
        ...
        autoquant_sweep.export_labels.ExportLabelError: export: layer group 'm.0.q_proj' has no deployment label: INT8 per_in_channel weights + inputs disabled: W8A8_SQ_PER_CHANNEL / W8A16 carry one INT8 weight scale per output channel; per_in_channel weights are stored under it wrongly; export a recipe of another granularity
    """  # noqa: E501
    labels: dict[str, DeployLabel] = {}
    refused: list[tuple[str, str]] = []
    for group, (weight, inputs) in group_quantizers(quant_cfg).items():
        try:
            label = label_for(weight, inputs)
        except ExportLabelError as exc:
            refused.append((group, str(exc)))
            continue
        if label is not None:
            labels[group] = label
    if refused:
        group, why = refused[0]
        more = f" (and {len(refused) - 1} more groups)" if len(refused) > 1 else ""
        raise ExportLabelError(f"{where}: layer group '{group}'{more} has no deployment label: {why}; "
                               "export a recipe of another granularity")
    if not labels:
        raise ExportLabelError(f"{where}: the recipe quantizes no layer group; nothing to export")
    return labels


def checkpoint_label(labels: Mapping[str, DeployLabel]) -> str:
    """The checkpoint's ``quant_algo``: the one label of every group, else ``MIXED_PRECISION``.

    Example:
        >>> fp8 = DeployLabel("FP8", None, "per_tensor", "per_tensor_static")
        >>> w8 = DeployLabel("W8A16", None, "per_out_channel", "disabled")
        >>> checkpoint_label({"a": fp8, "b": fp8}), checkpoint_label({"a": fp8, "b": w8})
        ('FP8', 'MIXED_PRECISION')
    """
    algos = {(lab.quant_algo, lab.group_size) for lab in labels.values()}
    return next(iter(algos))[0] if len(algos) == 1 else MIXED


def format_label(fmt: Mapping[str, Any]) -> str:
    """``validate``'s "exports as": the label of a uniform format, or ``refused: <why>``.

    Example:
        >>> format_label({"quant_cfg": [{"quantizer_name": "*", "enable": False},
        ...   {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": (4, 3), "axis": None}},
        ...   {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": (4, 3), "axis": None}}]})
        'FP8'
    """
    weight, inputs = group_quantizers(fmt)["*"] if "quant_cfg" in fmt else (None, None)
    try:
        label = label_for(weight, inputs)
    except ExportLabelError as exc:
        return f"refused: {str(exc).split(': ', 1)[-1]}"
    if label is None:
        return "refused: nothing quantized"
    return label.quant_algo + (f" (group {label.group_size})" if label.group_size else "")


def exports_as(base_format: Mapping[str, Any], overrides: Mapping[str, Any]) -> str:
    """The "exports as" of a pair x granularity: :func:`format_label` of the overlaid format (``-``
    when the overlay itself is refused).

    Example:
        >>> base = {"quant_cfg": [{"quantizer_name": "*", "enable": False},
        ...   {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 4, "block_sizes": {-1: 128}}}]}
        >>> exports_as(base, {"*weight_quantizer": {"block_sizes": {-1: 32}}})
        'refused: W4A16_AWQ is deployed with group size 64 / 128, not 32'
    """
    from autoquant_sweep.quant.overlay import OverlayError, apply_overlay

    try:
        fmt = apply_overlay(base_format, overrides).format
    except (OverlayError, UserInputError):
        return "-"
    return format_label(fmt)

