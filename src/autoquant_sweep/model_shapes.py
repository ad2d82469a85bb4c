"""Shapes of a checkpoint's quantizable modules, from its ``config.json`` alone (no weights, no torch).

Used by the plan stage to check a granularity against the tensors it will quantize (an ``axis`` or a
block-size key outside a tensor's dimensions is not rejected by ModelOpt 0.47: it silently runs per
tensor, facts 24) and to compute the effective-bits range AutoQuant can reach (facts 7: layers in
``disabled_layers`` still count at 16 bits).

Known ``model_type`` values: ``qwen3`` (``Qwen3ForCausalLM``) and ``qwen3_vl``
(``Qwen3VLForConditionalGeneration``: text tower from ``text_config``, vision tower from
``vision_config``). For anything else :func:`quantizable_modules` returns ``None`` and the caller skips
the shape checks. Module names are the ones ``model.named_modules()`` yields, so ``disabled_layers``
patterns match them exactly as ModelOpt matches them (``fnmatch``).

Example (the embedded tiny Qwen3's dimensions):
    >>> cfg = {"model_type": "qwen3", "hidden_size": 128, "intermediate_size": 256,
    ...        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
    ...        "head_dim": 32, "vocab_size": 512}
    >>> mods = quantizable_modules(cfg)
    >>> [(m.name, m.weight_shape) for m in mods[:3]]
    [('model.layers.0.self_attn.q_proj', (128, 128)), ('model.layers.0.self_attn.k_proj', (64, 128)), ('model.layers.0.self_attn.v_proj', (64, 128))]
    >>> round(min_effective_bits(mods, ["*lm_head*"], 8.0), 4)  # INT8: every searchable group at 8 bits
    8.8
"""  # noqa: E501

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from typing import Any

from autoquant_sweep.quant.overlay import BLOCK_SIZE_SPECIAL_KEYS, axis_key

__all__ = [
    "KNOWN_MODEL_TYPES",
    "QuantModuleShape",
    "ShapeUnknown",
    "axis_problem",
    "block_sizes_problem",
    "common_divisors",
    "cost_excluded_groups",
    "disabled_groups",
    "max_position_embeddings",
    "min_effective_bits",
    "quant_group",
    "quantizable_modules",
    "searchable_modules",
    "text_config",
]

KNOWN_MODEL_TYPES: tuple[str, ...] = ("qwen3", "qwen3_vl")


class ShapeUnknown(ValueError):
    """``config.json`` lacks a key the shape formulas need (the message names it)."""


@dataclass(frozen=True)
class QuantModuleShape:
    """One module ModelOpt quantizes (``nn.Linear`` or ``nn.Conv*``) and its weight's shape.

    ``input_shape`` uses ``None`` for sizes not known from the config (batch, sequence): a Linear's
    input is ``(batch, seq, in_features)``.
    """

    name: str
    kind: str  # "linear" | "conv"
    weight_shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Weight elements (what AutoQuant's cost counts)."""
        return math.prod(self.weight_shape)

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """``(batch, seq, in_features)`` for a Linear; for a conv only the rank is meaningful."""
        if self.kind == "linear":
            return (None, None, self.weight_shape[1])
        return (None,) * len(self.weight_shape)


def _need(cfg: Mapping[str, Any], key: str, where: str) -> Any:
    value = cfg.get(key)
    if value is None:
        raise ShapeUnknown(f"config.json has no '{where}{key}'")
    return value


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's config: ``text_config`` for Qwen3-VL, else the config itself.

    Example:
        >>> text_config({"model_type": "qwen3_vl", "text_config": {"hidden_size": 8}})
        {'hidden_size': 8}
    """
    if config.get("model_type") == "qwen3_vl":
        inner = config.get("text_config")
        if not isinstance(inner, Mapping):
            raise ShapeUnknown("config.json of model_type qwen3_vl has no 'text_config' mapping")
        return inner
    return config


def max_position_embeddings(config: Mapping[str, Any]) -> int | None:
    """The language model's ``max_position_embeddings`` (``None`` when the config does not say).

    Example:
        >>> max_position_embeddings({"model_type": "qwen3", "max_position_embeddings": 256})
        256
    """
    try:
        value = text_config(config).get("max_position_embeddings")
    except ShapeUnknown:
        return None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _decoder_linears(text: Mapping[str, Any], prefix: str, where: str) -> list[QuantModuleShape]:
    hidden = int(_need(text, "hidden_size", where))
    inter = int(_need(text, "intermediate_size", where))
    layers = int(_need(text, "num_hidden_layers", where))
    heads = int(_need(text, "num_attention_heads", where))
    kv_heads = int(_need(text, "num_key_value_heads", where))
    head_dim = int(_need(text, "head_dim", where))
    shapes = {
        "self_attn.q_proj": (heads * head_dim, hidden),
        "self_attn.k_proj": (kv_heads * head_dim, hidden),
        "self_attn.v_proj": (kv_heads * head_dim, hidden),
        "self_attn.o_proj": (hidden, heads * head_dim),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }
    return [
        QuantModuleShape(f"{prefix}.{i}.{leaf}", "linear", shape)
        for i in range(layers)
        for leaf, shape in shapes.items()
    ]


def _vision_modules(vision: Mapping[str, Any]) -> list[QuantModuleShape]:
    where = "vision_config."
    hidden = int(_need(vision, "hidden_size", where))
    inter = int(_need(vision, "intermediate_size", where))
    depth = int(_need(vision, "depth", where))
    out_hidden = int(_need(vision, "out_hidden_size", where))
    patch = int(_need(vision, "patch_size", where))
    temporal = int(_need(vision, "temporal_patch_size", where))
    channels = int(_need(vision, "in_channels", where))
    merged = hidden * int(_need(vision, "spatial_merge_size", where)) ** 2
    deepstack = len(vision.get("deepstack_visual_indexes") or [])
    patch_embed = (hidden, channels, temporal, patch, patch)
    out = [QuantModuleShape("model.visual.patch_embed.proj", "conv", patch_embed)]
    for i in range(depth):
        block = f"model.visual.blocks.{i}"
        out += [
            QuantModuleShape(f"{block}.attn.qkv", "linear", (3 * hidden, hidden)),
            QuantModuleShape(f"{block}.attn.proj", "linear", (hidden, hidden)),
            QuantModuleShape(f"{block}.mlp.linear_fc1", "linear", (inter, hidden)),
            QuantModuleShape(f"{block}.mlp.linear_fc2", "linear", (hidden, inter)),
        ]
    mergers = ["model.visual.merger"] + [f"model.visual.deepstack_merger_list.{j}" for j in range(deepstack)]
    for merger in mergers:
        out += [
            QuantModuleShape(f"{merger}.linear_fc1", "linear", (merged, merged)),
            QuantModuleShape(f"{merger}.linear_fc2", "linear", (out_hidden, merged)),
        ]
    return out


def quantizable_modules(config: Mapping[str, Any]) -> list[QuantModuleShape] | None:
    """Every module ModelOpt would quantize in this checkpoint, in ``named_modules()`` order.

    Returns ``None`` for a ``model_type`` outside :data:`KNOWN_MODEL_TYPES`; raises
    :class:`ShapeUnknown` when a known type's config lacks a key the formulas need.

    Example:
        >>> quantizable_modules({"model_type": "llama"}) is None
        True
    """
    model_type = config.get("model_type")
    if model_type == "qwen3":
        text = text_config(config)
        mods = _decoder_linears(text, "model.layers", "")
    elif model_type == "qwen3_vl":
        text = text_config(config)
        vision = config.get("vision_config")
        if not isinstance(vision, Mapping):
            raise ShapeUnknown("config.json of model_type qwen3_vl has no 'vision_config' mapping")
        mods = _vision_modules(vision) + _decoder_linears(text, "model.language_model.layers", "text_config.")
    else:
        return None
    hidden = int(_need(text, "hidden_size", "text_config." if model_type == "qwen3_vl" else ""))
    vocab = int(_need(text, "vocab_size", "text_config." if model_type == "qwen3_vl" else ""))
    return [*mods, QuantModuleShape("lm_head", "linear", (vocab, hidden))]


# ModelOpt 0.47's AutoQuant grouping rules for these models (q/k/v share a recipe, so do gate/up)
_GROUP_RULES = (re.compile(r"^(.*?)\.(q_proj|k_proj|v_proj)$"), re.compile(r"^(.*?)\.(gate_proj|up_proj)$"))


def quant_group(name: str) -> str:
    """AutoQuant's decision group of a module (``...self_attn`` for q/k/v, ``...mlp`` for gate/up).

    Example:
        >>> quant_group("model.layers.0.self_attn.k_proj"), quant_group("model.layers.0.mlp.down_proj")
        ('model.layers.0.self_attn', 'model.layers.0.mlp.down_proj')
    """
    for rule in _GROUP_RULES:
        match = rule.match(name)
        if match:
            return match.group(1)
    return name


def disabled_groups(modules: Sequence[QuantModuleShape], disabled_layers: Sequence[str]) -> set[str]:
    """Groups AutoQuant never quantizes: a group is disabled when any member matches a pattern."""
    return {
        quant_group(m.name)
        for m in modules
        if any(fnmatch(m.name, pattern) for pattern in disabled_layers)
    }


def searchable_modules(
    modules: Sequence[QuantModuleShape], disabled_layers: Sequence[str]
) -> list[QuantModuleShape]:
    """The modules AutoQuant searches (their group is not disabled).

    Example:
        >>> mods = [QuantModuleShape("a.q_proj", "linear", (4, 4)), QuantModuleShape("lm_head", "linear", (8, 4))]
        >>> [m.name for m in searchable_modules(mods, ["*lm_head*"])]
        ['a.q_proj']
    """  # noqa: E501
    off = disabled_groups(modules, disabled_layers)
    return [m for m in modules if quant_group(m.name) not in off]


def cost_excluded_groups(modules: Sequence[QuantModuleShape], patterns: Sequence[str]) -> set[str]:
    """Groups outside the effective-bits cost (``model.cost_excluded_modules``): ModelOpt 0.47 gives a
    group zero cost when *every* member matches one of ``constraints["cost"]
    ["excluded_module_name_patterns"]`` (``AutoQuantizeCostModel.module_cost_weight``, facts 30).

    Example:
        >>> mods = [QuantModuleShape("model.visual.blocks.0.attn.qkv", "linear", (96, 32)),
        ...         QuantModuleShape("model.language_model.layers.0.mlp.down_proj", "linear", (128, 256))]
        >>> sorted(cost_excluded_groups(mods, ["*visual*"]))
        ['model.visual.blocks.0.attn.qkv']
    """
    members: dict[str, list[str]] = {}
    for m in modules:
        members.setdefault(quant_group(m.name), []).append(m.name)
    return {group for group, names in members.items()
            if patterns and all(any(fnmatch(n, p) for p in patterns) for n in names)}


def min_effective_bits(
    modules: Sequence[QuantModuleShape], disabled_layers: Sequence[str], format_bits: float,
    cost_excluded: Sequence[str] = (),
) -> float:
    """The lowest effective bits AutoQuant can reach: every searchable group at ``format_bits``,
    every disabled one at 16 (ModelOpt's cost: weight elements x bits, over all quantizable modules but
    the groups ``cost_excluded`` takes out of the cost, :func:`cost_excluded_groups`).

    Example:
        >>> mods = [QuantModuleShape("a.q_proj", "linear", (4, 4)), QuantModuleShape("lm_head", "linear", (4, 4))]
        >>> min_effective_bits(mods, ["*lm_head*"], 4.0)
        10.0
        >>> min_effective_bits(mods, ["*lm_head*"], 4.0, cost_excluded=["lm_head"])
        4.0
    """  # noqa: E501
    excluded = cost_excluded_groups(modules, cost_excluded)
    counted = [m for m in modules if quant_group(m.name) not in excluded]
    total = sum(m.numel for m in counted)
    if total == 0:
        raise ShapeUnknown("the checkpoint has no quantizable weights that count in the effective bits")
    off = disabled_groups(modules, disabled_layers)
    cost = sum(m.numel * (16.0 if quant_group(m.name) in off else float(format_bits)) for m in counted)
    return cost / total


# --------------------------------------------------------------------------------------------- granularity


def _axis_range(ndim: int) -> str:
    return "{" + ", ".join(str(a) for a in range(-ndim, ndim)) + "}"


def axis_problem(axis: Any, shape: Sequence[int | None], meaning: str = "") -> str | None:
    """Why ``axis`` cannot apply to a tensor of ``shape`` (``None`` when it can).

    ``axis`` is ``None`` (per tensor), an int or a sequence of ints; valid ints are ``-ndim .. ndim-1``.
    ``meaning`` (e.g. ``" (0 = per output channel)"``) follows the valid range in the message.

    Example:
        >>> axis_problem(5, (128, 64))
        'axis 5 is outside the 2 dims; use one of {-2, -1, 0, 1} or null (per tensor)'
        >>> axis_problem(-1, (128, 64)) is None
        True
    """
    if axis is None:
        return None
    ndim = len(shape)
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    for a in axes:
        if not isinstance(a, int) or isinstance(a, bool):
            return f"axis {a!r} is not an int; use one of {_axis_range(ndim)}{meaning} or null (per tensor)"
        if not -ndim <= a < ndim:
            return (
                f"axis {a} is outside the {ndim} dims; use one of {_axis_range(ndim)}{meaning} "
                "or null (per tensor)"
            )
    return None


def common_divisors(sizes: Sequence[int], limit: int = 3) -> list[int]:
    """The largest ``limit`` divisors (> 1) shared by every size, biggest first.

    Example:
        >>> common_divisors([128, 256, 96])
        [32, 16, 8]
    """
    g = 0
    for size in sizes:
        g = math.gcd(g, int(size))
    return [d for d in range(g, 1, -1) if g % d == 0][:limit]


def block_sizes_problem(block_sizes: Any, shape: Sequence[int | None]) -> tuple[Any, str] | None:
    """Why ``block_sizes`` cannot apply to a tensor of ``shape``: ``(key, reason)``, or ``None``.

    Axis keys (ints, or strings like ``"-1"``) must name one of the tensor's dims, at most one key per
    dim; a block size must fit the dim it blocks and divide it (ModelOpt pads a last, partial block).
    Sizes given as ``None`` in ``shape`` (batch, sequence) are not checked.

    Example:
        >>> block_sizes_problem({-1: 64, "type": "static"}, (256, 128)) is None
        True
        >>> block_sizes_problem({2: 64}, (256, 128))
        (2, 'block_sizes key 2 is outside the 2 dims; use one of {-2, -1, 0, 1}')
        >>> block_sizes_problem({-1: 96}, (256, 128))
        (-1, 'block size 96 does not divide dim -1 (size 128)')
    """
    if not isinstance(block_sizes, Mapping):
        return None
    ndim = len(shape)
    seen: dict[int, Any] = {}
    for key, value in block_sizes.items():
        if key in BLOCK_SIZE_SPECIAL_KEYS:
            continue
        axis = axis_key(key)
        if axis is None:
            special = list(BLOCK_SIZE_SPECIAL_KEYS)
            return key, f"block_sizes key {key!r} is neither an axis index nor one of {special}"
        if not -ndim <= axis < ndim:
            return key, f"block_sizes key {axis} is outside the {ndim} dims; use one of {_axis_range(ndim)}"
        positive = axis % ndim
        if positive in seen:
            return key, f"block_sizes keys {seen[positive]!r} and {key!r} both name dim {positive}; keep one"
        seen[positive] = key
        size = shape[positive]
        if value is None or size is None or not isinstance(value, int):
            continue
        if value > size:
            return key, f"block size {value} is larger than dim {axis} (size {size})"
        if size % value:
            return key, f"block size {value} does not divide dim {axis} (size {size})"
    return None
