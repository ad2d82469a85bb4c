"""Pure parts of the recommendation: budget grid and steps, best per budget, Pareto set, proxy fidelity."""

from __future__ import annotations

import math

import pytest

from autoquant_sweep.objectives import OBJECTIVES, objective_result
from autoquant_sweep.recipe import budget_step, default_budget_grid, resolve_budget_grid
from autoquant_sweep.tracking.recommendation_analysis import (
    best_per_budget,
    computed_rows,
    pareto_front,
    proxy_fidelity,
)
from autoquant_sweep.tracking.recommendation_text import table_lines
from autoquant_sweep.tracking.registry import band_alias, qualifying


def _point(pair, budget, score, bits, evaluated=False, delta=math.nan):
    return {"run_id": pair, "quant_pair": pair, "granularity": "default", "budget": budget,
            "predicted_score": score, "achieved_effective_bits": bits, "satisfied": bits <= budget + 1e-9,
            "evaluated": evaluated, "eval_loss_delta": delta, "ppl_increase_pct": (math.exp(delta) - 1) * 100}


def test_budget_grid_and_steps():
    assert default_budget_grid(4.0, 9.0) == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 14.0, 16.0]
    assert default_budget_grid(8.0, 9.5) == [8.0, 9.0, 9.5, 10.0, 11.0, 12.0, 14.0, 16.0]
    assert resolve_budget_grid([6, 12], 4.0, 9.0) == [6.0, 9.0, 12.0]  # the run budget is always on it
    assert [budget_step(b) for b in (4.0, 6.5, 16.0)] == [40, 65, 160]
    from autoquant_sweep.errors import UserInputError

    with pytest.raises(UserInputError, match="budget_grid"):
        resolve_budget_grid([0, 20], 4.0, 9.0)


def test_objectives_missing_values_never_win():
    assert set(OBJECTIVES) >= {"constrained_score", "eval_loss_delta", "total_sensitivity", "pareto"}
    assert objective_result({"total_sensitivity": 1.0}, "constrained_score") == math.inf
    assert objective_result({"constrained_score": 2.0, "effective_bits": 8.8}, "pareto") == [2.0, 8.8]


def test_best_per_budget_takes_the_lowest_satisfied_point_and_measures_only_the_run_budget():
    points = [
        _point("wint8_afp16", 8.0, 1e-7, 8.8),  # infeasible at 8: never the answer there
        _point("wint4_afp16", 8.0, 2e-5, 7.9),
        _point("wint4_aint8", 8.0, 3e-5, 7.9),
        _point("wint8_afp16", 9.0, 2e-7, 9.0, evaluated=True, delta=-1e-4),
        _point("wint4_afp16", 9.0, 2e-5, 8.8, evaluated=True, delta=9e-4),
        _point("wint4_afp16", 4.0, 8e-5, 5.2),
    ]
    table = best_per_budget(points)
    by_budget = {row["budget"]: row for row in table}
    assert by_budget[4.0]["quant_pair"] is None
    assert by_budget[8.0]["quant_pair"] == "wint4_afp16" and math.isnan(by_budget[8.0]["eval_loss_delta"])
    assert by_budget[9.0]["quant_pair"] == "wint8_afp16" and by_budget[9.0]["eval_loss_delta"] == -1e-4
    text = "\n".join(table_lines(table, 9.0))
    assert "| 9 (run budget) | wint8_afp16 x default |" in text and "none fits" in text


def test_pareto_front_over_curve_points():
    points = [_point("a", 6, 5.0, 6.0), _point("a", 8, 2.0, 8.0), _point("b", 8, 3.0, 7.5),
              _point("b", 10, 2.5, 9.0), _point("c", 16, 0.0, 16.0)]
    front = pareto_front(points)
    assert [(p["quant_pair"], p["budget"]) for p in front] == [("a", 6), ("b", 8), ("a", 8), ("c", 16)]


def test_proxy_fidelity_is_scipys_spearman_over_computed_rows():
    from scipy.stats import spearmanr

    def row(run_id, pair, score, delta, computed=None, status="FINISHED", cache_hit="false"):
        return {"run_id": run_id, "computed_run_id": computed or run_id, "status": status,
                "cache_hit": cache_hit, "quant_pair": pair, "canonical_granularity": "default",
                "constrained_score": score, "eval_loss_delta": delta}

    rows = [
        row("r1", "p1", 1e-6, 1e-4),
        row("r2", "p2", 3e-6, 5e-4),
        row("r3", "p3", 2e-6, 9e-4),
        row("r4", "p1", 1e-6, 1e-4, computed="r1", cache_hit="true"),  # a cache hit of r1: counts once
        row("r5", "p4", math.nan, math.nan, status="FAILED"),
    ]
    assert [r["run_id"] for r in computed_rows(rows)] == ["r1", "r2", "r3"]
    fidelity = proxy_fidelity(rows, "constrained_score")
    expected = spearmanr([1e-6, 3e-6, 2e-6], [1e-4, 5e-4, 9e-4]).statistic
    assert fidelity["n"] == 3 and fidelity["spearman"] == pytest.approx(expected)
    assert math.isnan(proxy_fidelity(rows[:2], "constrained_score")["spearman"])  # too few points


def test_registry_skips_unsatisfied_recipes_and_names_band_aliases():
    rows = [
        {"run_id": "a", "status": "FINISHED", "constrained_score": 1e-7, "recipe_satisfied": 0.0},
        {"run_id": "b", "status": "FINISHED", "constrained_score": 2e-6, "recipe_satisfied": 1.0},
        {"run_id": "c", "status": "FINISHED", "eval_loss_delta": -1e-4, "recipe_satisfied": 1.0},
    ]
    assert [r["run_id"] for r in qualifying(rows, "constrained_score")] == ["b"]
    assert [r["run_id"] for r in qualifying(rows, "eval_loss_delta")] == ["c"]  # a negative delta counts
    assert band_alias(9.0) == "best-b9" and band_alias(6.5) == "best-b6p5"
