"""ModelOpt's per-layer recipe at a memory budget, and the budget curve of one scoring pass.

After one ``mtq.auto_quantize`` call, ``mtq.get_auto_quantize_config(state, {"effective_bits": b})``
re-solves the per-layer choice {format, unquantized} for any budget ``b`` without recalibrating or
rescoring (facts 19). It does **not** raise on an infeasible budget (facts 20): it silently returns the
all-quantized recipe. So every recipe here is checked on its own terms: which groups it quantizes, the
effective bits it really achieves (costs from ``state["candidate_stats"]``, the same cost model
ModelOpt's search uses), its predicted score (sum of the scores of the quantized groups) and whether
it fits the budget (``satisfied``).

Budget grid (``autoquant.budget_grid``): null -> :func:`default_budget_grid`: the format's own bits,
every whole bit above it up to 12, then 14 and 16, plus the run's budget (11 points for a 4-bit
format). MLflow step of a budget ``b`` is ``round(b * 10)``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: tolerance of "achieved effective bits <= budget" (ModelOpt compares costs with 1e-12 relative)
BITS_TOLERANCE = 1e-9


def budget_step(budget: float) -> int:
    """MLflow step of a budget: ``round(budget * 10)`` (6.5 bits -> step 65).

    Example:
        >>> budget_step(6.5), budget_step(10.0)
        (65, 100)
    """
    return round(float(budget) * 10)


def default_budget_grid(format_bits: float, run_budget: float | None = None) -> list[float]:
    """Budgets from the format's bits to 16: the format's bits, each whole bit above it up to 12, then
    14 and 16, and the run's own budget. Sorted, unique, each in (0, 16].

    Example:
        >>> default_budget_grid(4.0, 10.0)
        [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 14.0, 16.0]
        >>> default_budget_grid(8.0, 10.0)
        [8.0, 9.0, 10.0, 11.0, 12.0, 14.0, 16.0]
    """
    low = max(min(float(format_bits), 16.0), 0.5)
    grid = {round(low, 4), 16.0}
    whole = math.floor(low) + 1
    while whole < 16:
        # below 12 bits every bit matters (the feasible region of 4-bit formats starts near 6);
        # above it, every other bit is enough
        if whole <= 12 or whole % 2 == 0:
            grid.add(float(whole))
        whole += 1
    if run_budget is not None and 0 < float(run_budget) <= 16:
        grid.add(round(float(run_budget), 4))
    return sorted(grid)


def resolve_budget_grid(grid: Sequence[float] | None, format_bits: float, run_budget: float) -> list[float]:
    """``autoquant.budget_grid`` (explicit list, always with the run budget added) or the default grid."""
    if not grid:
        return default_budget_grid(format_bits, run_budget)
    values = {round(float(b), 4) for b in grid} | {round(float(run_budget), 4)}
    bad = [b for b in values if not 0 < b <= 16]
    if bad:
        from autoquant_sweep.errors import UserInputError

        raise UserInputError(f"autoquant.budget_grid: budgets must be in (0, 16], got {sorted(bad)}")
    return sorted(values)


@dataclass
class Recipe:
    """The per-layer recipe ModelOpt chose for one budget, with what it really achieves."""

    budget: float
    achieved_effective_bits: float
    satisfied: bool
    predicted_score: float
    quantized_groups: list[str]
    kept_16bit_groups: list[str]
    quant_cfg: dict[str, Any] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        """The manifest's ``recipe`` section (no config: that is ``recipe/quant_cfg.json``)."""
        data = asdict(self)
        data.pop("quant_cfg")
        return data

    def curve_point(self) -> dict[str, Any]:
        """One entry of the manifest's ``budget_curve``."""
        return {
            "budget": self.budget,
            "predicted_score": self.predicted_score,
            "achieved_effective_bits": self.achieved_effective_bits,
            "satisfied": self.satisfied,
            "num_quantized_groups": len(self.quantized_groups),
        }


def _no_quant() -> Any:
    from modelopt.torch.quantization.algorithms import QuantRecipe

    return QuantRecipe(quant_cfg=None)


def _group_costs(stats: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """(quantized cost, uncompressed cost, score) of a searchable group; None for a fixed/disabled one."""
    no_quant = _no_quant()
    candidates = [i for i, fmt in enumerate(stats["formats"]) if fmt != no_quant]
    none_idx = [i for i, fmt in enumerate(stats["formats"]) if fmt == no_quant]
    uncompressed = float(stats.get("uncompressed_cost", stats["costs"][none_idx[0]] if none_idx else 0.0))
    if not candidates:
        return None
    i = candidates[0]
    return float(stats["costs"][i]), uncompressed, float(stats["scores"][i])


def quantized_modules(quant_cfg: Mapping[str, Any]) -> set[str]:
    """Module names whose weight or input quantizer a re-solved (per-module) recipe enables."""
    enabled: dict[str, bool] = {}
    for rule in quant_cfg.get("quant_cfg", []):
        name = str(rule.get("quantizer_name", ""))
        for attr in (".weight_quantizer", ".input_quantizer"):
            if name.endswith(attr) and "*" not in name:
                module = name[: -len(attr)]
                enabled[module] = enabled.get(module, False) or bool(rule.get("enable", True))
    return {m for m, on in enabled.items() if on}


def _selection(state: Mapping[str, Any], budget: float) -> set[str]:
    """Groups (``<module>.quant_recipe``) ModelOpt's solver quantizes at ``budget`` (no config built).

    The project's one private ModelOpt call, kept in this function on purpose: ModelOpt 0.47's
    ``_resolve_best_recipe`` is the solver step of the public ``mtq.get_auto_quantize_config`` without
    building the config, which halves the cost of a budget curve. ``tests/integration/test_recipe.py``
    checks that every curve point equals the public path's answer; a ModelOpt without the helper gets
    the public path.
    """
    try:
        from modelopt.torch.quantization.algorithms import _resolve_best_recipe
    except ImportError:  # a ModelOpt without the helper: read the selection off the public config
        cfg = _config(state, budget)
        on = quantized_modules(cfg)
        stats = state["candidate_stats"]
        return {name for name, s in stats.items() if any(m in on for m in s["module_names"])}
    no_quant = _no_quant()
    best = _resolve_best_recipe(state, {"effective_bits": float(budget)})
    return {name for name, fmt in best.items() if fmt != no_quant}


def _config(state: Mapping[str, Any], budget: float) -> dict[str, Any]:
    import modelopt.torch.quantization as mtq

    with warnings.catch_warnings():  # "returned config uses algorithm='max'": the format's own algorithm
        warnings.simplefilter("ignore")
        return mtq.get_auto_quantize_config(state, {"effective_bits": float(budget)})


def _measure(state: Mapping[str, Any], budget: float, selected: set[str], cfg: dict[str, Any]) -> Recipe:
    stats = state["candidate_stats"]
    total = float(state.get("cost_denominator") or 0.0) or math.fsum(
        float(s.get("uncompressed_cost", max(s["costs"]))) for s in stats.values()
    )
    cost, score = [], []
    quantized, kept = [], []
    for name, s in stats.items():
        costs = _group_costs(s)
        if costs is None:
            cost.append(float(s.get("uncompressed_cost", max(s["costs"]))))
            continue
        q_cost, u_cost, q_score = costs
        group = name.removesuffix(".quant_recipe")
        if name in selected:
            quantized.append(group)
            cost.append(q_cost)
            score.append(q_score)
        else:
            kept.append(group)
            cost.append(u_cost)
    achieved = math.fsum(cost) / total * 16 if total > 0 else 16.0
    return Recipe(
        budget=float(budget),
        achieved_effective_bits=achieved,
        satisfied=achieved <= float(budget) + BITS_TOLERANCE,
        predicted_score=math.fsum(score),
        quantized_groups=quantized,
        kept_16bit_groups=kept,
        quant_cfg=cfg,
    )


def minimum_effective_bits(state: Mapping[str, Any]) -> float:
    """Effective bits with every searchable group quantized (the lowest any recipe reaches)."""
    every = {name for name, s in state["candidate_stats"].items() if _group_costs(s) is not None}
    return _measure(state, 16.0, every, {}).achieved_effective_bits


def solve_recipe(state: Mapping[str, Any], budget: float, *, with_config: bool = True) -> Recipe:
    """Re-solve ModelOpt's recipe at ``budget`` and measure it (achieved bits, score, groups).

    ``with_config``: also build the ``mtq.quantize`` config (``mtq.get_auto_quantize_config``); the
    selection is then read off that config. Without it only ModelOpt's solver runs (half the time),
    and a budget below :func:`minimum_effective_bits` is answered without solving: the all-quantized
    recipe, which is what ModelOpt returns for an infeasible budget (facts 20; a test checks it).

    Example:
        >>> recipe = solve_recipe(state, 6.0)  # doctest: +SKIP
        >>> recipe.satisfied, recipe.achieved_effective_bits  # doctest: +SKIP
    """
    stats = state["candidate_stats"]
    if with_config:
        cfg = _config(state, budget)
        on = quantized_modules(cfg)
        selected = {name for name, s in stats.items() if any(m in on for m in s["module_names"])}
        return _measure(state, budget, selected, cfg)
    if float(budget) < minimum_effective_bits(state) - BITS_TOLERANCE:
        selected = {name for name, s in stats.items() if _group_costs(s) is not None}
    else:
        selected = _selection(state, budget)
    return _measure(state, budget, selected, {})


def budget_curve(state: Mapping[str, Any], budgets: Iterable[float], run_budget: float | None = None
                 ) -> list[Recipe]:
    """:func:`solve_recipe` at every budget; only the ``run_budget`` point builds its config, the others
    run ModelOpt's solver only."""
    return [solve_recipe(state, b, with_config=run_budget is not None and abs(b - run_budget) < 1e-9)
            for b in budgets]


def recipe_json(quant_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe form of a recipe (integer ``block_sizes`` keys become ``"-1"``; tuples lists).

    :func:`quantize_config_from_json` turns it back into a config
    that ``mtq.quantize`` takes unchanged.
    """
    from autoquant_sweep.fingerprints import canonical_json

    return json.loads(canonical_json(quant_cfg))


def _normalise_cfg(cfg: Any) -> Any:
    from autoquant_sweep.quant.overlay import normalize_block_sizes

    if isinstance(cfg, list):
        return [_normalise_cfg(stage) for stage in cfg]
    if isinstance(cfg, Mapping):
        out = dict(cfg)
        for key in ("block_sizes",):
            if isinstance(out.get(key), Mapping):
                out[key] = normalize_block_sizes(out[key], where=key)
        return out
    return cfg


def quantize_config_from_json(text: str | bytes) -> dict[str, Any]:
    """Effective quant config JSON -> a dict ready for ``mtq.quantize`` (int block_sizes keys, rule list)."""
    from autoquant_sweep.quant.overlay import to_rule_list

    raw = json.loads(text)
    out = dict(raw)
    rules = to_rule_list(raw["quant_cfg"])
    for rule in rules:
        if "cfg" in rule and rule["cfg"] is not None:
            rule["cfg"] = _normalise_cfg(rule["cfg"])
    out["quant_cfg"] = rules
    return out
