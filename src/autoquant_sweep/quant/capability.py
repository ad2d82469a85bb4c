"""Which (format, granularity overlay) combinations ModelOpt 0.47 can really run (pure, data-driven).

Every rule is data: an id, a one-line summary, the evidence (the measured error or behaviour, quoted
in the rule itself and in the CUDA table of ``docs/granularity.md``), the status it yields and a check
function that returns one reason line per offending quantizer pattern. :func:`check_combination` runs
the rules on the base format and on the overlay result; it never loads torch or ModelOpt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from autoquant_sweep.quant.overlay import (
    INPUT,
    OverlayError,
    OverlayResult,
    _effective_from_rules,
    apply_overlay,
    axis_key,
    expand_overrides,
    to_rule_list,
)
from autoquant_sweep.quant.realized import declared_kind

__all__ = [
    "CAPABILITY_RULES",
    "CapabilityRule",
    "CheckContext",
    "Status",
    "Verdict",
    "check_combination",
    "validation_matrix",
]

Status = Literal["ok", "noop", "refused"]

FP4_E2M1 = (2, 1)
NVFP4_SCALE_BITS = (4, 3)
MX_SCALE_BITS = (8, 0)
MX_ALLOWED_BLOCKS = frozenset({8, 16, 32})


@dataclass(frozen=True)
class Verdict:
    """Outcome of :func:`check_combination`; ``rule_ids`` names the rules that decided it."""

    status: Status
    reasons: tuple[str, ...]
    rule_ids: tuple[str, ...] = ()


def _where(format_name: str, granularity_name: str) -> str:
    return f"format '{format_name or '<base format>'}' + granularity '{granularity_name or '<overlay>'}'"


@dataclass(frozen=True)
class CheckContext:
    """Everything a rule check sees."""

    base: dict
    result: OverlayResult
    overrides: dict[str, dict]  # validated, `default` expanded
    cuda_available: bool
    format_name: str
    granularity_name: str

    @property
    def where(self) -> str:
        return _where(self.format_name, self.granularity_name)


@dataclass(frozen=True)
class CapabilityRule:
    """One capability rule: ``check`` returns reason lines (empty = rule does not fire)."""

    rule_id: str
    summary: str
    evidence: str
    status: Status = "refused"
    check: Callable[[CheckContext], list[str]] = field(default=lambda ctx: [], repr=False, compare=False)


# --------------------------------------------------------------------------------------------- predicates


def _bits(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _stages(cfg: Any) -> list[dict]:
    if cfg is None:
        return []
    return [s for s in cfg if isinstance(s, Mapping)] if isinstance(cfg, list) else [cfg]


def _scale_bits(stage: Mapping) -> Any:
    bs = stage.get("block_sizes")
    return _bits(bs.get("scale_bits")) if isinstance(bs, Mapping) else None


def _sizes(stage: Mapping) -> dict:
    bs = stage.get("block_sizes")
    if not isinstance(bs, Mapping):
        return {}
    return {k: v for k, v in bs.items() if axis_key(k) is not None}  # type, scale_bits... are no sizes


def _is_fp4(stage: Mapping) -> bool:
    return _bits(stage.get("num_bits")) == FP4_E2M1


def _is_nvfp4(stage: Mapping) -> bool:
    return _is_fp4(stage) and _scale_bits(stage) == NVFP4_SCALE_BITS


def _is_mx(stage: Mapping) -> bool:
    return _scale_bits(stage) == MX_SCALE_BITS


def _algorithm_method(fmt: Mapping) -> str:
    algo = fmt.get("algorithm")
    if isinstance(algo, Mapping):
        algo = algo.get("method")
    return str(algo).lower() if algo is not None else "none"


def _touched_stage0(ctx: CheckContext, pattern: str, which: str) -> dict | None:
    """Stage 0 (the stage an overlay edits) of ``pattern`` in the base or the overlay result."""
    fmt = ctx.base if which == "base" else ctx.result.format
    stages = _stages(_effective_from_rules(to_rule_list(fmt["quant_cfg"]), pattern))
    return stages[0] if stages else None


def _check_fp4_axis_type(ctx: CheckContext) -> list[str]:
    out = []
    for pattern, attrs in ctx.overrides.items():
        keys = sorted(k for k in ("axis", "type") if k in attrs)
        stage = _touched_stage0(ctx, pattern, "base")
        if keys and stage is not None and _is_fp4(stage):
            out.append(
                f"{ctx.where}: {pattern} is FP4 E2M1 (num_bits (2, 1)) and the overlay sets "
                f"{'/'.join(keys)}; "
                f"ModelOpt fails on CUDA with 'Only support E=4 & M=3 for now'"
            )
    return out


def _check_nvfp4_block(ctx: CheckContext) -> list[str]:
    out = []
    for pattern, attrs in ctx.overrides.items():
        before = _touched_stage0(ctx, pattern, "base")
        after = _touched_stage0(ctx, pattern, "result")
        if "block_sizes" not in attrs or before is None or after is None or not _is_nvfp4(before):
            continue
        if _sizes(after) != _sizes(before):
            out.append(
                f"{ctx.where}: {pattern} is NVFP4 with block sizes {_sizes(before)} and the overlay asks "
                f"{_sizes(after)}; ModelOpt silently ignores it on CUDA (bit-identical scores), so the run "
                f"would duplicate the base result under a new name"
            )
    return out


def _check_mx_block(ctx: CheckContext) -> list[str]:
    out = []
    for pattern in ctx.overrides:
        after = _touched_stage0(ctx, pattern, "result")
        if after is None or not _is_mx(after):
            continue
        bad = {k: v for k, v in _sizes(after).items() if v is not None and v not in MX_ALLOWED_BLOCKS}
        if bad:
            out.append(
                f"{ctx.where}: {pattern} is an MX format (scale_bits (8, 0)) with block sizes {bad}; "
                f"ModelOpt fails with 'Blocksize for fused call must be one of {{8, 16, 32}}'"
            )
    return out


def _check_dynamic_input_algorithm(ctx: CheckContext) -> list[str]:
    method = _algorithm_method(ctx.result.format)
    if not (method == "smoothquant" or method.startswith("awq")):
        return []
    out = []
    for pattern in ctx.result.changed_patterns:
        if not pattern.endswith(INPUT.lstrip("*")):
            continue
        after = _touched_stage0(ctx, pattern, "result")
        if after is not None and declared_kind(after, "input") == "per_token_dynamic":
            out.append(
                f"{ctx.where}: {pattern} becomes dynamic (per token) but the algorithm is '{method}'; "
                f"ModelOpt fails with 'Axis and block_sizes are both set.'"
            )
    return out


def _check_block_type_dynamic_per_token(ctx: CheckContext) -> list[str]:
    rules = to_rule_list(ctx.result.format["quant_cfg"])
    out = []
    names = dict.fromkeys(r["quantizer_name"] for r in rules if not r.get("parent_class") and r.get("cfg"))
    for name in names:
        for stage in _stages(_effective_from_rules(rules, name)):
            bs = stage.get("block_sizes")
            sizes = _sizes(stage)
            if isinstance(bs, Mapping) and bs.get("type") == "dynamic" and sizes and all(
                v is None for v in sizes.values()
            ):
                out.append(
                    f"{ctx.where}: {name} has block_sizes {dict(bs)}, which ModelOpt 0.47 instantiates as a "
                    f"static quantizer per (batch, position), not per token; use the quantizer-level "
                    f"type: dynamic with axis: null and block_sizes: {{-1: null}} (quant_granularity="
                    f"a_per_token_dynamic)"
                )
                break
    return out


def _check_cuda_only(ctx: CheckContext) -> list[str]:
    if ctx.cuda_available:
        return []
    rules = to_rule_list(ctx.result.format["quant_cfg"])
    out = []
    seen: set[str] = set()
    for rule in rules:
        name = rule["quantizer_name"]
        if rule.get("parent_class") or rule.get("cfg") is None or name in seen:
            continue
        seen.add(name)
        for stage in _stages(_effective_from_rules(rules, name)):
            if _is_fp4(stage) or _is_mx(stage):
                kind = "MX (scale_bits (8, 0))" if _is_mx(stage) else "FP4 E2M1 (num_bits (2, 1))"
                error = (
                    "'Skipping extension modelopt_cuda_ext_mx because CUDA is not available'"
                    if _is_mx(stage)
                    else "'amax must be a CUDA tensor for dynamic block quantization'"
                )
                out.append(
                    f"{ctx.where}: {name} is {kind}, which needs CUDA; on CPU ModelOpt fails with {error}"
                )
                break
    return out


def _check_noop(ctx: CheckContext) -> list[str]:
    result = ctx.result
    if not result.requested_patterns and not result.noop_patterns:
        return []
    if result.changed_patterns:
        return []
    if result.noop_patterns and set(result.noop_patterns) >= set(result.requested_patterns):
        return [
            f"{ctx.where}: the overlay only touches quantizers disabled in the format "
            f"({', '.join(result.noop_patterns)}); the effective config equals the base"
        ]
    return [
        f"{ctx.where}: the overlay restates the preset (effective config equals the base"
        + (f"; disabled: {', '.join(result.noop_patterns)}" if result.noop_patterns else "")
        + ")"
    ]


CAPABILITY_RULES: tuple[CapabilityRule, ...] = (
    CapabilityRule(
        rule_id="fp4-axis-or-type",
        summary="FP4 E2M1 quantizers accept no `axis` or `type` override",
        evidence="H200: NVFP4/W4A8_NVFP4_FP8/W4A16_NVFP4/MXFP4 + axis or activation overlays raise "
        "'Only support E=4 & M=3 for now'",
        check=_check_fp4_axis_type,
    ),
    CapabilityRule(
        rule_id="nvfp4-block-size",
        summary="NVFP4 block size must stay the preset's own",
        evidence="H200: NVFP4 formats + w_group64/w_group128 give bit-identical scores (override ignored)",
        check=_check_nvfp4_block,
    ),
    CapabilityRule(
        rule_id="mx-block-size",
        summary="MX formats need block sizes in {8, 16, 32}",
        evidence="H200: MXFP8/MXFP4 + w_group64/w_group128 raise 'Blocksize for fused call must be one "
        "of {8, 16, 32}'",
        check=_check_mx_block,
    ),
    CapabilityRule(
        rule_id="dynamic-input-calib-algorithm",
        summary="per-token dynamic inputs do not work with SmoothQuant or AWQ",
        evidence="H200: INT8_SMOOTHQUANT_CFG / W4A8_AWQ_BETA_CFG + a_token_dyn raise 'Axis and "
        "block_sizes are both set.'; CPU: W4A8_AWQ_BETA_CFG + per-token dynamic inputs in the "
        "quantizer-level form raise the same in mtq.quantize",
        check=_check_dynamic_input_algorithm,
    ),
    CapabilityRule(
        rule_id="block-type-dynamic-per-token",
        summary="`block_sizes: {-1: null, type: dynamic}` is not per-token dynamic: write the "
        "quantizer-level `type: dynamic`",
        evidence="CPU: INT8 inputs with that form (ModelOpt's docstring) instantiate a STATIC quantizer per "
        "(batch, position): axis (0, 1), amax shaped (4, 32, 1) like the calibration batch, +0.098 nats "
        "held-out, and a batch of 8 fails (facts 31)",
        check=_check_block_type_dynamic_per_token,
    ),
    CapabilityRule(
        rule_id="cuda-only",
        summary="FP4 (NVFP4, MXFP4) and MX formats need CUDA",
        evidence="CPU: NVFP4 raises 'amax must be a CUDA tensor for dynamic block quantization'; MX "
        "raises 'Skipping extension modelopt_cuda_ext_mx because CUDA is not available'",
        check=_check_cuda_only,
    ),
    CapabilityRule(
        rule_id="noop",
        summary="overlay changes nothing (disabled quantizers only, or restates the preset)",
        evidence="H200: activation overlays on weight-only presets and FP8 + w_tensor/a_tensor_static "
        "score exactly the base",
        status="noop",
        check=_check_noop,
    ),
)


def check_combination(
    base_format: Mapping,
    overrides: Mapping[str, Mapping],
    *,
    cuda_available: bool,
    format_name: str = "",
    granularity_name: str = "",
) -> Verdict:
    """Decide whether ``overrides`` on ``base_format`` is ``ok``, a ``noop`` or ``refused``.

    Invalid overrides (an :class:`OverlayError`) are ``refused`` with the error's message. Refusal
    rules win over the no-op rule; all firing refusal reasons are reported.

    Example:
        >>> int8 = {"quant_cfg": [{"quantizer_name": "*", "enable": False},
        ...   {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}},
        ...   {"quantizer_name": "*input_quantizer", "enable": False}], "algorithm": "max"}
        >>> check_combination(int8, {"*input_quantizer": {"axis": None}}, cuda_available=False).status
        'noop'
        >>> check_combination(int8, {"*weight_quantizer": {"axis": 1}}, cuda_available=False).status
        'ok'
    """
    try:
        expanded = expand_overrides(overrides)
        result = apply_overlay(base_format, overrides, format_name=format_name)
    except OverlayError as exc:
        where = _where(format_name, granularity_name)
        return Verdict("refused", (f"{where}: invalid overlay: {exc}",), ("invalid-overlay",))
    ctx = CheckContext(
        base=dict(base_format),
        result=result,
        overrides=expanded,
        cuda_available=cuda_available,
        format_name=format_name,
        granularity_name=granularity_name,
    )
    refused: list[str] = []
    refused_ids: list[str] = []
    noop: list[str] = []
    for rule in CAPABILITY_RULES:
        reasons = rule.check(ctx)
        if not reasons:
            continue
        if rule.status == "refused":
            refused.extend(reasons)
            refused_ids.append(rule.rule_id)
        elif rule.status == "noop":
            noop.extend(reasons)
    if refused:
        return Verdict("refused", tuple(refused), tuple(refused_ids))
    if noop:
        return Verdict("noop", tuple(noop), ("noop",))
    return Verdict("ok", tuple(result.notes), ())


def refusal_message(verdict: Verdict, pair: str, granularity: str, device: str,
                    alternatives: Mapping[str, Sequence[str]] | None = None) -> str:
    """One line for a refused combination: the keys the user set, the first reason, what to use instead.

    ``alternatives``: ``{"quant_granularity": [...], "quant_pair": [...]}``, what runs on ``device`` with
    the same pair / the same granularity (:func:`runnable_alternatives`).

    Example:
        >>> v = Verdict("refused", ("format 'X' + granularity 'default': needs CUDA", "second"))
        >>> text = refusal_message(v, "wfp4_afp4", "default", "cpu", {"quant_pair": ["wint8_aint8"]})
        >>> for part in text.split(": ", 1)[1].split("; "):  # doctest: +ELLIPSIS
        ...     print(part)
        format 'X' + granularity 'default': needs CUDA (and 1 more reason)
        use quant_pair=wint8_aint8 with quant_granularity=default instead (all verdicts: ...)
    """
    text = f"quant_pair={pair} quant_granularity={granularity} is refused on {device}: {verdict.reasons[0]}"
    if len(verdict.reasons) > 1:
        more = len(verdict.reasons) - 1
        text += f" (and {more} more reason{'s' if more > 1 else ''})"
    options = []
    for key, fixed in (("quant_granularity", f"quant_pair={pair}"),
                       ("quant_pair", f"quant_granularity={granularity}")):
        names = list((alternatives or {}).get(key) or [])
        if names:
            shown = ",".join(names[:4]) + (",..." if len(names) > 4 else "")
            options.append(f"{key}={shown} with {fixed}")
    if options:
        text += f"; use {' or '.join(options)} instead"
    else:
        text += f"; nothing with quant_pair={pair} or quant_granularity={granularity} runs on {device}"
    return text + " (all verdicts: autoquant-sweep validate)"


def runnable_alternatives(pair: str, granularity: str, *, cuda_available: bool,
                          resolve: Callable[[str], dict]) -> dict[str, list[str]]:
    """What runs (``ok``) with the same pair (other granularities) and with the same granularity (other
    pairs), among the shipped ``conf/`` options; no ModelOpt import for the stored presets."""
    from autoquant_sweep.config.groups import load_group

    pairs, grans = load_group("quant_pair"), load_group("quant_granularity")
    out: dict[str, list[str]] = {"quant_granularity": [], "quant_pair": []}
    for row in validation_matrix([p for p in pairs if p["name"] == pair] or [], grans,
                                 cuda_available=cuda_available, resolve=resolve):
        if row["status"] == "ok" and row["granularity"] != granularity:
            out["quant_granularity"].append(row["granularity"])
    for row in validation_matrix(pairs, [g for g in grans if g["name"] == granularity] or [],
                                 cuda_available=cuda_available, resolve=resolve):
        if row["status"] == "ok" and row["pair"] != pair:
            out["quant_pair"].append(row["pair"])
    return out


def validation_matrix(
    pairs: Sequence[Mapping],
    granularities: Sequence[Mapping],
    *,
    cuda_available: bool,
    resolve: Callable[[str], dict],
) -> list[dict]:
    """Check every pair x granularity; rows ``{pair, granularity, format_name, status, reason, rule_ids}``.

    ``pairs`` are ``conf/quant_pair`` mappings (``name``, ``format_name``), ``granularities`` are
    ``conf/quant_granularity`` mappings (``name``, ``quant_cfg_overrides``). A refused combination
    is a row, never an exception; ``resolve`` errors (unknown format names) propagate.
    """
    rows: list[dict] = []
    for pair in pairs:
        base = resolve(str(pair["format_name"]))
        for gran in granularities:
            verdict = check_combination(
                base,
                gran.get("quant_cfg_overrides") or {},
                cuda_available=cuda_available,
                format_name=str(pair["format_name"]),
                granularity_name=str(gran["name"]),
            )
            rows.append(
                {
                    "pair": str(pair["name"]),
                    "granularity": str(gran["name"]),
                    "format_name": str(pair["format_name"]),
                    "status": verdict.status,
                    "reason": "; ".join(verdict.reasons) if verdict.status != "ok" else "",
                    "rule_ids": list(verdict.rule_ids),
                }
            )
    return rows
