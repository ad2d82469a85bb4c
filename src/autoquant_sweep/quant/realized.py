"""The realized granularity: what ModelOpt instantiated, compared with what the format declares.

A granularity name is a promise (``conf/quant_granularity/<name>.yaml`` ``realizes``), the effective
format's quantizer config *declares* a granularity, and the ``TensorQuantizer`` modules that ModelOpt
inserts and calibrates *realize* one. ModelOpt's docstrings and its behaviour can differ (facts 31: its
documented per-token form ``block_sizes: {-1: None, "type": "dynamic"}`` instantiates a **static**
quantizer per (batch, position) for INT8 inputs), so a run checks all three against each other:

- :func:`declared_kind` reads a quantizer cfg the way ModelOpt documents it (pure; the plan checks the
  name's promise against it before any model is loaded);
- :func:`realize` reads every enabled weight / input quantizer of a quantized model (``num_bits``,
  ``axis``, ``block_sizes``, dynamic or static, ``amax`` shape) and :func:`check_realized` stops the run
  with one line when ModelOpt made something else of the format.

Both sides name a granularity with the same vocabulary (:func:`granularity_kind`): weights
``per_tensor``, ``per_out_channel``, ``per_in_channel``, ``group<N>``; inputs ``per_tensor_static``,
``per_tensor_dynamic``, ``per_token_dynamic``; dynamic *block* quantization (NVFP4 / MX) is
``dynamic_group<N>``. ``per_position_static`` is the static quantizer per (batch, position) that the
docstring form becomes: its ``amax`` has the calibration batch's shape, so it is never a valid answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from autoquant_sweep.errors import SensitivityResultError, UserInputError
from autoquant_sweep.quant.overlay import INPUT, WEIGHT, _effective_from_rules, axis_key, to_rule_list

__all__ = [
    "ROLES",
    "ROLE_NDIM",
    "RealizedGranularityError",
    "RealizedQuantizer",
    "check_promise",
    "check_realized",
    "declared_kind",
    "declared_kinds",
    "granularity_kind",
    "realize",
    "summarize_realized",
]

#: the quantizer roles a granularity name talks about, keyed by the name suffix of ModelOpt's modules
ROLES: dict[str, str] = {"weight": WEIGHT, "input": INPUT}
#: rank of the tensor each role quantizes in a decoder Linear: weight (out, in), input (batch, seq, in)
ROLE_NDIM: dict[str, int] = {"weight": 2, "input": 3}


class RealizedGranularityError(SensitivityResultError):
    """ModelOpt instantiated another granularity than the format declares: not the claimed result."""


def _axes(axis: Any, ndim: int) -> tuple[int, ...] | None:
    """``axis`` as a sorted tuple of non-negative dims (``None``: per tensor)."""
    if axis is None:
        return None
    items = axis if isinstance(axis, (list, tuple)) else (axis,)
    return tuple(sorted(int(a) % ndim for a in items))


def granularity_kind(role: str, *, axis: Any, block_sizes: Mapping | None, dynamic: bool) -> str:
    """Name a quantizer's granularity in the project's vocabulary (both sides of the check use it).

    ``axis`` is ModelOpt's: the dims that keep their own scale (``0`` of a weight: one per output
    channel; ``(0, 1)`` of an input: one per (batch, position), i.e. per token). ``block_sizes`` is a
    mapping with positive group sizes (block quantization); ModelOpt converts an all-``None`` one to
    ``axis`` itself (:func:`declared_kind` does that before calling this).

    Example:
        >>> granularity_kind("weight", axis=0, block_sizes=None, dynamic=False)
        'per_out_channel'
        >>> granularity_kind("input", axis=(0, 1), block_sizes=None, dynamic=True)
        'per_token_dynamic'
        >>> granularity_kind("input", axis=(0, 1), block_sizes=None, dynamic=False)
        'per_position_static'
        >>> granularity_kind("weight", axis=None, block_sizes={-1: 128, "type": "static"}, dynamic=False)
        'group128'
    """
    ndim = ROLE_NDIM[role]
    sizes = {axis_key(k): v for k, v in (block_sizes or {}).items() if axis_key(k) is not None}
    if sizes:
        block_dynamic = (block_sizes or {}).get("type") == "dynamic"
        groups = "_".join(
            f"group{v}" if k % ndim == ndim - 1 else f"axis{k % ndim}group{v}"
            for k, v in sorted(sizes.items())
        )
        return ("dynamic_" if block_dynamic or dynamic else "") + groups
    axes = _axes(axis, ndim)
    if role == "weight":
        base = {None: "per_tensor", (0,): "per_out_channel", (1,): "per_in_channel"}.get(
            axes, f"axis{axes}"
        )
        return base + ("_dynamic" if dynamic else "")
    if axes is None:
        return "per_tensor_dynamic" if dynamic else "per_tensor_static"
    if axes == tuple(range(ndim - 1)):  # one scale per (batch, position): per token
        return "per_token_dynamic" if dynamic else "per_position_static"
    return f"axis{axes}_{'dynamic' if dynamic else 'static'}"


def declared_kind(cfg: Mapping[str, Any], role: str) -> str:
    """The granularity a quantizer cfg declares, read the way ModelOpt 0.47 documents it.

    The quantizer-level ``type: dynamic`` and a ``block_sizes`` ``type: dynamic`` both declare a
    dynamic quantizer (the docstring promises per-token dynamic for ``{-1: None, "type": "dynamic"}``);
    an all-``None`` ``block_sizes`` stands for ``axis`` = the dims it does not list.

    Example:
        >>> per_token = {"num_bits": 8, "axis": None, "type": "dynamic", "block_sizes": {-1: None}}
        >>> declared_kind(per_token, "input")
        'per_token_dynamic'
        >>> declared_kind({"num_bits": 8, "block_sizes": {-1: None, "type": "dynamic"}}, "input")
        'per_token_dynamic'
        >>> declared_kind({"num_bits": 4, "block_sizes": {"-1": 64, "type": "static"}}, "weight")
        'group64'
    """
    ndim = ROLE_NDIM[role]
    block_sizes = cfg.get("block_sizes")
    axis = cfg.get("axis")
    dynamic = cfg.get("type") == "dynamic"
    if isinstance(block_sizes, Mapping):
        sizes = {axis_key(k): v for k, v in block_sizes.items() if axis_key(k) is not None}
        dynamic = dynamic or block_sizes.get("type") == "dynamic"
        if sizes and all(v is None for v in sizes.values()):
            listed = {k % ndim for k in sizes}
            axis = tuple(d for d in range(ndim) if d not in listed) or None
            block_sizes = None
    return granularity_kind(role, axis=axis, block_sizes=block_sizes, dynamic=dynamic)


def declared_kinds(fmt: Mapping[str, Any]) -> dict[str, list[str]]:
    """Per role, the declared kind of each stage of the enabled quantizer (``[]``: disabled).

    Example:
        >>> declared_kinds({"quant_cfg": [{"quantizer_name": "*", "enable": False},
        ...   {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}}]})
        {'weight': ['per_out_channel'], 'input': []}
    """
    rules = to_rule_list(fmt["quant_cfg"])
    out: dict[str, list[str]] = {}
    for role, pattern in ROLES.items():
        cfg = _effective_from_rules(rules, pattern)
        stages = cfg if isinstance(cfg, list) else ([cfg] if cfg is not None else [])
        out[role] = [
            declared_kind(stage, role)
            for stage in stages
            if isinstance(stage, Mapping) and stage.get("enable", True) is not False
        ]
    return out


@dataclass(frozen=True)
class RealizedQuantizer:
    """What one instantiated, calibrated ``TensorQuantizer`` really is."""

    name: str
    role: str
    stage: int
    kind: str
    num_bits: Any
    axis: Any
    block_sizes: dict | None
    dynamic: bool
    amax_shape: tuple[int, ...] | None


def _is_dynamic(quantizer: Any) -> bool:
    # ModelOpt 0.47 has no public flag for the quantizer-level ``type``: its ``amax`` property asserts on
    # the private ``_dynamic`` (set from ``type == "dynamic"``). tests/integration/test_realized.py pins it.
    return bool(getattr(quantizer, "_dynamic", False))


def _role_and_stage(name: str) -> tuple[str, int] | None:
    """``(role, stage)`` of a quantizer module name (``...q_proj.weight_quantizer.1``: weight, stage 1)."""
    head, _, tail = name.rpartition(".")
    stage = 0
    if tail.isdigit():  # a stage of a SequentialQuantizer
        name, stage = head, int(tail)
    for role in ROLES:
        if name.endswith(f"{role}_quantizer"):
            return role, stage
    return None


def realize(model: Any) -> list[RealizedQuantizer]:
    """Every enabled weight / input ``TensorQuantizer`` of a quantized ``model``, as ModelOpt made it.

    Read after calibration: ModelOpt converts an all-``None`` ``block_sizes`` into ``axis`` at the first
    forward, so only then does the quantizer show what it does.
    """
    from modelopt.torch.quantization.nn import TensorQuantizer

    out = []
    for name, module in model.named_modules():
        if not isinstance(module, TensorQuantizer) or not module.is_enabled:
            continue
        where = _role_and_stage(name)
        if where is None:
            continue
        role, stage = where
        dynamic = _is_dynamic(module)
        amax = None if dynamic else module.amax
        block_sizes = dict(module.block_sizes) if module.block_sizes is not None else None
        out.append(
            RealizedQuantizer(
                name=name,
                role=role,
                stage=stage,
                kind=granularity_kind(role, axis=module.axis, block_sizes=block_sizes, dynamic=dynamic),
                num_bits=module.num_bits,
                axis=module.axis,
                block_sizes=block_sizes,
                dynamic=dynamic,
                amax_shape=tuple(amax.shape) if amax is not None else None,
            )
        )
    return out


def summarize_realized(quantizers: Iterable[RealizedQuantizer]) -> dict[str, Any]:
    """Per role the realized kind(s) (stages joined by ``+``), counts and one example quantizer.

    This is the manifest's ``realized`` section and the source of the MLflow params ``realized.weight``
    / ``realized.input`` (``disabled`` when no enabled quantizer of that role exists).

    Example:
        >>> q = RealizedQuantizer("m.q_proj.weight_quantizer", "weight", 0, "group64", 4, None,
        ...                       {-1: 64, "type": "static"}, False, (2, 1))
        >>> summarize_realized([q])["weight"]
        'group64'
    """
    quantizers = list(quantizers)
    out: dict[str, Any] = {"quantizers_checked": len(quantizers)}
    for role in ROLES:
        mine = [q for q in quantizers if q.role == role]
        stages = sorted({q.stage for q in mine})
        kinds = []
        for stage in stages:
            counted = Counter(q.kind for q in mine if q.stage == stage)
            kinds.append("|".join(sorted(counted)))
        out[role] = "+".join(kinds) if kinds else "disabled"
        example = next((q for q in mine if q.stage == 0), None)
        out[f"{role}_example"] = _example(example) if example else None
    return out


def _example(q: RealizedQuantizer) -> dict[str, Any]:
    data = asdict(q)
    data["block_sizes"] = None if q.block_sizes is None else {str(k): v for k, v in q.block_sizes.items()}
    data["num_bits"] = list(q.num_bits) if isinstance(q.num_bits, tuple) else q.num_bits
    data["amax_shape"] = None if q.amax_shape is None else list(q.amax_shape)
    data["axis"] = list(q.axis) if isinstance(q.axis, tuple) else q.axis
    return data


def check_realized(
    declared: Mapping[str, list[str]], quantizers: Iterable[RealizedQuantizer], *, where: str
) -> None:
    """Raise :class:`RealizedGranularityError` (one line) when a quantizer is not what was declared.

    ``declared`` is :func:`declared_kinds` of the effective format; every enabled quantizer of a role the
    format enables must realize that role's declared kind at its stage. Quantizers that AutoQuant left
    at 16 bits are disabled and not looked at.

    Example:
        >>> q = RealizedQuantizer("l.0.q_proj.input_quantizer", "input", 0, "per_position_static", 8,
        ...                       (0, 1), None, False, (4, 32, 1))
        >>> check_realized({"weight": [], "input": ["per_token_dynamic"]}, [q], where="wint8_aint8 x g")
        Traceback (most recent call last):
        ...
        autoquant_sweep.quant.realized.RealizedGranularityError: wint8_aint8 x g: the format declares input per_token_dynamic but ModelOpt instantiated per_position_static (l.0.q_proj.input_quantizer: num_bits=8 axis=(0, 1) block_sizes=None static amax shape (4, 32, 1)); this is not the claimed granularity
    """  # noqa: E501
    quantizers = list(quantizers)
    seen = {q.role for q in quantizers}
    if quantizers:  # a quantized group has every quantizer the format enables
        for role, stages in declared.items():
            if stages and role not in seen:
                raise RealizedGranularityError(
                    f"{where}: the format declares {role} {'+'.join(stages)} but ModelOpt instantiated no "
                    f"enabled {role} quantizer; this is not the claimed format"
                )
    for q in quantizers:
        stages = declared.get(q.role) or []
        expected = stages[q.stage] if q.stage < len(stages) else None
        if expected == q.kind:
            continue
        raise RealizedGranularityError(
            f"{where}: the format declares {q.role} {expected or 'disabled'} but ModelOpt "
            f"instantiated {q.kind} ({q.name}: num_bits={q.num_bits} axis={q.axis} "
            f"block_sizes={q.block_sizes} {'dynamic' if q.dynamic else 'static'} amax shape "
            f"{q.amax_shape if q.amax_shape is not None else 'dynamic'}); this is not the claimed granularity"
        )


def check_promise(fmt: Mapping[str, Any], realizes: Mapping[str, str] | None, *, where: str) -> None:
    """Refuse (one line, before any model loads) a granularity whose name promises another kind than
    the effective format declares; a role the format leaves disabled has nothing to promise.

    Example:
        >>> fmt = {"quant_cfg": [{"quantizer_name": "*", "enable": False},
        ...   {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": 8, "block_sizes": {-1: None}}}]}
        >>> check_promise(fmt, {"input": "per_token_dynamic"}, where="a_tok on INT8")
        Traceback (most recent call last):
        ...
        autoquant_sweep.errors.UserInputError: a_tok on INT8: quant_granularity.realizes.input promises per_token_dynamic but the effective format declares per_position_static (static: amax fitted to the calibration batch shape); fix the overlay or the promise
    """  # noqa: E501
    declared = declared_kinds(fmt)
    for role, promised in (realizes or {}).items():
        if role not in ROLES:
            raise UserInputError(
                f"{where}: quant_granularity.realizes has key {role!r}; use {' / '.join(ROLES)}"
            )
        stages = declared[role]
        if stages and stages[0] != promised:
            hint = " (static: amax fitted to the calibration batch shape)" if "position" in stages[0] else ""
            raise UserInputError(
                f"{where}: quant_granularity.realizes.{role} promises {promised} but the effective format "
                f"declares {stages[0]}{hint}; fix the overlay or the promise"
            )
