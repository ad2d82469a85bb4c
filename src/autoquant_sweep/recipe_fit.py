"""Whether a registered recipe fits the checkpoint it is applied to (``autoquant-sweep apply``).

A per-layer recipe names modules (``model.layers.3.mlp.up_proj.weight_quantizer``) and assumes their
shapes (a block size, an axis). ``mtq.quantize`` takes any config on any model: a recipe made for a
4-layer, 128-wide model applied to a 6-layer, 96-wide one left layers 4-5 unquantized (no rule names
them, the leading ``*`` rule disables them) and padded 64-blocks over 96-wide rows, and the command
exited 0. The checks here use the target's ``config.json`` only (the plan's shape formulas,
:mod:`autoquant_sweep.model_shapes`), before the model is loaded or ModelOpt imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

_GLOB = set("*?[")
_QUANTIZERS = ("weight_quantizer", "input_quantizer", "output_quantizer")


def named_modules(quant_cfg: Sequence[Mapping[str, Any]]) -> list[str]:
    """The modules a rule list names exactly (not by a pattern), in rule order, each once.

    Example:
        >>> named_modules([{"quantizer_name": "*", "enable": False},
        ...                {"quantizer_name": "model.layers.0.mlp.up_proj.weight_quantizer", "cfg": {}},
        ...                {"quantizer_name": "model.layers.0.mlp.up_proj.input_quantizer", "cfg": {}}])
        ['model.layers.0.mlp.up_proj']
    """
    names: dict[str, None] = {}
    for rule in quant_cfg:
        name = str(rule.get("quantizer_name", ""))
        module, _, quantizer = name.rpartition(".")
        if module and quantizer in _QUANTIZERS and not _GLOB & set(name) and not rule.get("parent_class"):
            names.setdefault(module)
    return list(names)


def _disabled_by_pattern(quant_cfg: Sequence[Mapping[str, Any]], module: str) -> bool:
    """Whether a pattern other than the leading catch-all ``*`` switches the module's weight off
    (``*lm_head*``: a module the recipe leaves alone on purpose)."""
    quantizer = f"{module}.weight_quantizer"
    return any(rule.get("enable") is False and rule.get("quantizer_name") not in (None, "*")
               and _GLOB & set(str(rule["quantizer_name"])) and fnmatchcase(quantizer, rule["quantizer_name"])
               for rule in quant_cfg)


def recipe_mismatch(fmt: Mapping[str, Any], config: Mapping[str, Any], decided: Sequence[str] | None = None
                    ) -> str | None:
    """The first way the quant config ``fmt`` does not fit a checkpoint with ``config`` (its
    ``config.json``), None when it fits or the model type has no shape formulas.

    ``decided``: the layer groups the recipe decided on (its manifest's ``quantized_groups`` and
    ``kept_16bit_groups``; a recipe names only the modules it quantizes, the kept ones fall under its
    leading ``*`` rule). Checked in the target's module order: a module of a group the recipe did not
    decide on (it would stay unquantized), the axis and block sizes of every enabled quantizer against
    the module's tensors; then modules or groups the recipe names that the target lacks.

    Example:
        >>> cfg = {"model_type": "qwen3", "hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 1,
        ...        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 48, "vocab_size": 64}
        >>> fmt = {"quant_cfg": [{"quantizer_name": "*", "enable": False},
        ...        {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 4, "block_sizes": {"-1": 64}}}]}
        >>> recipe_mismatch(fmt, cfg)
        "block_sizes['-1']=64 of model.layers.0.self_attn.q_proj.weight_quantizer does not fit the weight (out, in) = (96, 96): block size 64 does not divide dim -1 (size 96)"
        >>> recipe_mismatch({"quant_cfg": []}, cfg, decided=["model.layers.0.self_attn.q_proj"])
        "model.layers.0.self_attn.o_proj is in none of the recipe's 1 layer groups (a recipe of another model); it would stay unquantized"
    """  # noqa: E501
    from autoquant_sweep.model_shapes import (
        axis_problem,
        block_sizes_problem,
        quant_group,
        quantizable_modules,
    )
    from autoquant_sweep.quant.overlay import effective_quantizer_cfg, to_rule_list

    modules = quantizable_modules(config)
    if modules is None:
        return None
    rules = to_rule_list(fmt["quant_cfg"])
    named = named_modules(rules)
    groups = list(dict.fromkeys(quant_group(n) for n in [*(decided or ()), *named])) if decided else None
    for module in modules:
        group = quant_group(module.name)
        if groups is not None and group not in groups and not _disabled_by_pattern(rules, module.name):
            return (f"{module.name} is in none of the recipe's {len(groups)} layer groups (a recipe of "
                    "another model); it would stay unquantized")
        for tensor, shape in (("weight", module.weight_shape), ("input", module.input_shape)):
            quantizer = f"{module.name}.{tensor}_quantizer"
            cfg = effective_quantizer_cfg({"quant_cfg": rules}, quantizer)
            for stage in cfg if isinstance(cfg, list) else [cfg]:
                if not isinstance(stage, Mapping) or stage.get("enable", True) is False:
                    continue
                what = (f"the weight (out, in) = {module.weight_shape}" if tensor == "weight"
                        else f"the input (batch, seq, in) = (*, *, {shape[-1]})")
                problem = axis_problem(stage.get("axis"), shape)
                if problem:
                    return f"axis={stage.get('axis')} of {quantizer} does not fit {what}: {problem}"
                found = block_sizes_problem(stage.get("block_sizes"), shape)
                if found:
                    key, problem = found
                    size = stage["block_sizes"][key]
                    return f"block_sizes[{key!r}]={size} of {quantizer} does not fit {what}: {problem}"
    target_groups = {quant_group(m.name) for m in modules}
    missing = [name for name in named if name not in {m.name for m in modules}]
    missing += [g for g in groups or () if g not in target_groups and g not in missing]
    if missing:
        return (f"the recipe names {missing[0]}, which the checkpoint does not have "
                f"({len(missing)} such modules or groups)")
    return None
