"""The memory cost of a format: bits per stored weight, scales included (``autoquant.cost_model``).

ModelOpt 0.47's AutoQuant cost counts ``num_bits`` only (facts 29): INT4 in groups of 64 and of 128
both cost 4.0 bits, so the finest granularity is free at any budget. Its cost model reads a per-entry
``effective_bits`` first (NVFP4 sets 4.5), and that is where the honest number goes:

* ``storage`` (default): every enabled weight-quantizer entry of the effective format gets
  ``effective_bits`` = :func:`storage_bits` of its cfg (element bits plus the scales its deployed form
  stores); every other enabled entry (inputs, KV cache, ...) gets 16.0, because activations are not
  stored and ModelOpt's cost takes the minimum over entries (so W8A8 costs its weights, not ``min(8, 8)``
  by accident, and an INT8 input never undercuts an FP8 weight's scales);
* ``modelopt``: the format unchanged, ModelOpt's own ``num_bits`` cost (to compare with ModelOpt).

ModelOpt's search, its constrained score, the plan's reachable-budget check
(:func:`~autoquant_sweep.quant.overlay.format_bits`) and the achieved bits of every recipe then use the
same number, because it is in the format itself. The rule, case by case (docs/granularity.md shows the
table for every pair x granularity):

* element bits: an integer ``num_bits`` n -> n; a float ``(E, M)`` -> E + M + 1;
* block scales: ``block_sizes`` with axis keys -> one scale per block (the product of the block's axis
  sizes), of ``scale_bits`` bits (``(E, M)`` -> E + M + 1, ``(E, 0)`` -> E, the unsigned E8M0 of MX
  formats; absent -> 16, the checkpoint's bf16/fp16), so
  ``scale_bits / block`` bits per weight; ``scale_block_sizes`` (scales quantized in blocks themselves)
  add one 16-bit second-level scale per ``block * scale_block`` weights;
* per-tensor and per-channel scales (``axis``): 0; their cost is one scale per row or column
  (``16 / in_features`` bits for ``axis: 0``, at most 0.016 bits for a layer 1024 wide) and depends on
  the layer's shape, which a per-format number cannot carry;
* a sequential weight quantizer (a list of stages, e.g. W4A8 AWQ): the narrowest stage's element bits
  plus the scales of every stage.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any

COST_MODELS = ("storage", "modelopt")
DEFAULT_COST_MODEL = "storage"
#: bits of a scale whose format says nothing (``scale_bits`` absent): the checkpoint's 16-bit dtype
DEFAULT_SCALE_BITS = 16.0
#: what every non-weight entry costs under ``storage``: not stored, so never the cheapest entry
NOT_STORED_BITS = 16.0


def _bits_of(num_bits: Any) -> float | None:
    if isinstance(num_bits, bool):
        return None
    if isinstance(num_bits, int):
        return float(num_bits)
    if isinstance(num_bits, (list, tuple)) and len(num_bits) == 2:
        return float(sum(num_bits) + 1)
    return None  # a backend's string format: no rule


def _block_elements(sizes: Mapping[Any, Any] | None) -> int:
    """Weights per block of a ``block_sizes`` mapping (0: no axis key with a size, i.e. no blocks)."""
    from autoquant_sweep.quant.overlay import axis_key

    if not isinstance(sizes, Mapping):
        return 0
    dims = [int(v) for k, v in sizes.items() if axis_key(k) is not None and v]
    return math.prod(dims) if dims else 0


def _scale_overhead(cfg: Mapping[str, Any]) -> float:
    block_sizes = cfg.get("block_sizes")
    block = _block_elements(block_sizes)
    if not block:
        return 0.0
    raw = block_sizes.get("scale_bits")
    if isinstance(raw, (list, tuple)) and len(raw) == 2 and raw[1] == 0:
        scale_bits = float(raw[0])  # E8M0 (MX formats): an unsigned power of two, no sign bit
    else:
        scale_bits = _bits_of(raw) or DEFAULT_SCALE_BITS
    overhead = scale_bits / block
    second = _block_elements(block_sizes.get("scale_block_sizes"))
    if second:
        overhead += DEFAULT_SCALE_BITS / (block * second)
    return overhead


def storage_bits(cfg: Any) -> float | None:
    """Bits per stored weight of one weight-quantizer cfg (or list of stages), scales included.

    None when the element bits have no rule (a string ``num_bits``) or the cfg is disabled.

    Example:
        >>> storage_bits({"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}})
        4.125
        >>> storage_bits({"num_bits": 4, "block_sizes": {"-1": 64}})
        4.25
        >>> storage_bits({"num_bits": (2, 1), "block_sizes": {-1: 16, "scale_bits": (4, 3)}})
        4.5
        >>> storage_bits({"num_bits": (4, 3), "block_sizes": {-1: 32, "scale_bits": (8, 0)}})
        8.25
        >>> storage_bits({"num_bits": 8, "axis": 0}), storage_bits({"num_bits": (4, 3), "axis": None})
        (8.0, 8.0)
        >>> storage_bits([{"num_bits": 4, "block_sizes": {-1: 128}}, {"num_bits": (4, 3), "axis": None}])
        4.125
    """
    stages = [s for s in (cfg if isinstance(cfg, list) else [cfg])
              if isinstance(s, Mapping) and s.get("enable", True) is not False]
    if not stages:
        return None
    elements = [_bits_of(s.get("num_bits", 8)) for s in stages]  # ModelOpt's default num_bits is 8
    if any(e is None for e in elements):
        return None
    return min(e for e in elements if e is not None) + math.fsum(_scale_overhead(s) for s in stages)


def _is_weight_rule(pattern: str) -> bool:
    return fnmatchcase("weight_quantizer", pattern) or pattern.endswith("weight_quantizer")


def _set_effective_bits(cfg: Any, bits: float) -> Any:
    if isinstance(cfg, list):
        return [_set_effective_bits(stage, bits) for stage in cfg]
    if isinstance(cfg, Mapping):
        return {**cfg, "effective_bits": bits}
    return cfg


def with_cost_model(fmt: Mapping[str, Any], cost_model: str = DEFAULT_COST_MODEL) -> dict[str, Any]:
    """A copy of ``fmt`` whose entries carry the ``effective_bits`` of ``cost_model`` (module docstring).

    ``modelopt`` returns the format unchanged; ``storage`` sets each enabled entry's ``effective_bits``
    (derived, replacing any value the preset had: NVFP4's own 4.5 is what the rule gives). A weight
    entry whose element bits have no rule keeps ModelOpt's own cost.

    Example:
        >>> from autoquant_sweep.quant.overlay import format_bits
        >>> fmt = {"quant_cfg": [{"quantizer_name": "*", "enable": False},
        ...   {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 4, "block_sizes": {-1: 64}}},
        ...   {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": 8, "axis": None}}]}
        >>> format_bits(with_cost_model(fmt, "storage")), format_bits(with_cost_model(fmt, "modelopt"))
        (4.25, 4.0)
        >>> with_cost_model(fmt)["quant_cfg"][2]["cfg"]["effective_bits"]
        16.0
    """
    from autoquant_sweep.quant.overlay import to_rule_list

    if cost_model not in COST_MODELS:
        from autoquant_sweep.errors import UserInputError

        raise UserInputError(f"autoquant.cost_model: unknown cost model '{cost_model}'; choose one of "
                             f"{', '.join(COST_MODELS)}")
    out = copy.deepcopy(dict(fmt))
    if cost_model == "modelopt":
        return out
    rules = to_rule_list(out["quant_cfg"])
    for rule in rules:
        if rule.get("enable", True) is False or rule.get("cfg") is None:
            continue
        if _is_weight_rule(str(rule["quantizer_name"])):
            bits = storage_bits(rule["cfg"])
            if bits is None:
                continue
        else:
            bits = NOT_STORED_BITS
        rule["cfg"] = _set_effective_bits(rule["cfg"], bits)
    out["quant_cfg"] = rules
    return out


def cost_doc_lines(pairs: list[dict], granularities: list[dict], cuda_rows: list[dict],
                   resolve: Any) -> list[str]:
    """The ``## Memory cost`` section of docs/granularity.md: the rule and, for every pair x
    granularity that runs on CUDA, the bits ``storage`` and ``modelopt`` charge per weight."""
    from autoquant_sweep.quant.overlay import apply_overlay, format_bits, validate_overrides

    status = {(r["pair"], r["granularity"]): r["status"] for r in cuda_rows}
    names = [str(g["name"]) for g in granularities]
    lines = [
        "## Memory cost (`autoquant.cost_model`)",
        "",
        "What `autoquant.effective_bits` counts, per stored weight. `storage` (default) puts the bits",
        "of the weights' deployed form, scales included, into the effective format as ModelOpt's",
        "per-entry `effective_bits` (every other enabled entry gets 16: activations are not stored and",
        "ModelOpt's cost takes the minimum over entries), so ModelOpt's search, its constrained score,",
        "the plan's reachable-budget check and every recipe's achieved bits use one number.",
        "`modelopt` keeps ModelOpt's own cost, `num_bits` only (INT4 group-64 = group-128 = 4 bits, so",
        "the finest granularity is free). The rule (`src/autoquant_sweep/quant/cost.py`):",
        "",
        "| case | bits per weight | example |",
        "|---|---|---|",
        "| element | integer `num_bits` n: n; float `(E, M)`: E + M + 1 "
        "| INT8 8, FP8 (4, 3) 8, FP4 (2, 1) 4 |",
        "| block scales | + `scale_bits` / block (`(E, M)` scale: E + M + 1; `(E, 0)`: E, MX's unsigned "
        "E8M0; no `scale_bits`: 16, the checkpoint's bf16/fp16) | INT4 g128 4 + 16/128 = 4.125, "
        "g64 4.25; NVFP4 4 + 8/16 = 4.5; MXFP8 8 + 8/32 = 8.25 |",
        "| scales of scales | + 16 / (block x `scale_block_sizes` block) | |",
        "| per tensor / per channel (`axis`) | + 0 (one scale per tensor, row or column: 16 / in_features "
        "for `axis: 0`, shape-dependent, at most 0.016 bits for a layer 1024 wide) | INT8 per channel 8 |",
        "| sequential weight quantizer (stages) | narrowest stage's element bits + every stage's scales "
        "| W4A8 AWQ (INT4 g128, FP8 per tensor) 4.125 |",
        "| inputs, KV cache | not stored: 16 (never the minimum) | W8A8 costs its weights |",
        "",
        "Bits per weight, `storage` (`modelopt`), for each pair x granularity that runs on CUDA:",
        "",
        "| pair \\ granularity | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for pair in pairs:
        base = resolve(str(pair["format_name"]))
        cells = []
        for gran in granularities:
            if status.get((str(pair["name"]), str(gran["name"]))) == "refused":
                cells.append("-")
                continue
            fmt = apply_overlay(base, validate_overrides(gran.get("quant_cfg_overrides") or {})).format
            storage, modelopt = (format_bits(with_cost_model(fmt, m)) for m in ("storage", "modelopt"))
            cells.append(f"{storage:g} ({modelopt:g})")
        lines.append(f"| `{pair['name']}` | " + " | ".join(cells) + " |")
    lines += ["", "`-`: refused on CUDA (see the compatibility tables). A trial's `format_bits` and the "
              "MLflow metric of that name are the `storage` number unless `autoquant.cost_model=modelopt`.",
              ""]
    return lines
