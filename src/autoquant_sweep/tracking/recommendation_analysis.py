"""What a sweep recommends, computed: budget-curve points, best recipe per budget, Pareto set, proxy
fidelity (pure functions of the children's rows; :func:`curve_points` reads the curves' metric history).

* **rows** of the sweep's children are enriched with the recipe, evaluation and cache-source data
  every child logged (:func:`enrich_rows`);
* **budget curves**: every computed child's ``curve_predicted_score`` / ``curve_effective_bits``
  (step = round(budget * 10)) become points (:func:`curve_points`);
* **best per budget**: for each budget of the grid, the satisfied point with the lowest predicted
  score (ties: fewer achieved bits, then names), with the measured loss increase where the child was
  evaluated at that budget (its run budget) (:func:`best_per_budget`);
* **proxy fidelity**: Spearman rank correlation between the study's AutoQuant objective and the
  measured ``eval_loss_delta`` over its computed children (:func:`proxy_fidelity`); on the tiny model
  the measured deltas sit near the ~1e-3 nats noise floor, so read it as a sanity check;
* **Pareto set**: predicted score vs achieved effective bits over all curve points of all children.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from autoquant_sweep.objectives import finite
from autoquant_sweep.recipe import BITS_TOLERANCE

_ROW_METRICS = ("recipe_satisfied", "recipe_effective_bits", "recipe_predicted_score", "eval_loss",
                "eval_loss_unquantized", "eval_loss_delta", "ppl_increase_pct", "constrained_score",
                "total_sensitivity", "effective_bits")


def enrich_rows(rows: list[dict[str, Any]], runs: Sequence[Any]) -> list[dict[str, Any]]:
    """Add recipe / evaluation metrics, budget and the computing run to each row (in place)."""
    by_id = {run.info.run_id: run for run in runs}
    for row in rows:
        run = by_id.get(row["run_id"])
        if run is None:
            continue
        m, t, p = run.data.metrics, run.data.tags, run.data.params
        for key in _ROW_METRICS:
            if key not in row or not finite(row.get(key)):
                row[key] = m.get(key, math.nan) if run.info.status == "FINISHED" else math.nan
        row["cache_source_run_id"] = t.get("cache_source_run_id", "")
        row["computed_run_id"] = t.get("cache_source_run_id") or row["run_id"]
        row["canonical_granularity"] = t.get("canonical_granularity") or row.get("granularity", "")
        try:
            row["budget"] = float(p.get("effective_bits_budget", "nan"))
        except ValueError:
            row["budget"] = math.nan
    return rows


def computed_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """FINISHED rows, one per computing run (a cache hit of a run in the list is dropped)."""
    seen: set[str] = set()
    out = []
    for row in sorted(rows, key=lambda r: (r.get("cache_hit") == "true", r["run_id"])):
        if row.get("status") != "FINISHED" or row.get("computed_run_id", row["run_id"]) in seen:
            continue
        seen.add(row.get("computed_run_id", row["run_id"]))
        out.append(row)
    return out


def curve_points(client: Any, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Budget-curve points of every computed row: budget, predicted score, achieved bits, satisfied."""
    points = []
    for row in computed_rows(rows):
        scores = {h.step: h.value for h in client.get_metric_history(row["run_id"], "curve_predicted_score")}
        bits = {h.step: h.value for h in client.get_metric_history(row["run_id"], "curve_effective_bits")}
        for step in sorted(scores.keys() & bits.keys()):
            budget = step / 10
            points.append({
                "run_id": row["computed_run_id"],
                "quant_pair": row["quant_pair"],
                "granularity": row["canonical_granularity"],
                "budget": budget,
                "predicted_score": scores[step],
                "achieved_effective_bits": bits[step],
                "satisfied": bits[step] <= budget + BITS_TOLERANCE,
                "evaluated": finite(row.get("budget")) and abs(row["budget"] - budget) < 1e-6,
                "run_budget": row.get("budget", math.nan),
                "eval_loss_delta": row.get("eval_loss_delta", math.nan),
                "ppl_increase_pct": row.get("ppl_increase_pct", math.nan),
            })
    return points


def best_per_budget(points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each budget: the satisfied point with the lowest predicted score (ties: fewer bits, names)."""
    out = []
    for budget in sorted({p["budget"] for p in points}):
        ok = [p for p in points if p["budget"] == budget and p["satisfied"]]
        if not ok:
            out.append({"budget": budget, "quant_pair": None, "granularity": None,
                        "predicted_score": math.nan, "achieved_effective_bits": math.nan,
                        "eval_loss_delta": math.nan, "ppl_increase_pct": math.nan, "run_id": None})
            continue
        best = min(ok, key=lambda p: (p["predicted_score"], p["achieved_effective_bits"], p["quant_pair"],
                                      p["granularity"]))
        out.append({
            "budget": budget,
            "quant_pair": best["quant_pair"],
            "granularity": best["granularity"],
            "predicted_score": best["predicted_score"],
            "achieved_effective_bits": best["achieved_effective_bits"],
            "eval_loss_delta": best["eval_loss_delta"] if best["evaluated"] else math.nan,
            "ppl_increase_pct": best["ppl_increase_pct"] if best["evaluated"] else math.nan,
            "run_id": best["run_id"],
            # what the same trial measured at the budget it ran at (another recipe of the same scores)
            "trial_eval_loss_delta": best.get("eval_loss_delta", math.nan),
            "trial_budget": best.get("run_budget", math.nan),
        })
    return out


def pareto_front(points: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Points no other point beats on both predicted score and achieved bits (duplicates kept once)."""
    front = []
    for p in points:
        key = (p["predicted_score"], p["achieved_effective_bits"])
        dominated = any(
            q["predicted_score"] <= key[0] and q["achieved_effective_bits"] <= key[1]
            and (q["predicted_score"], q["achieved_effective_bits"]) != key
            for q in points
        )
        if not dominated and key not in {(f["predicted_score"], f["achieved_effective_bits"]) for f in front}:
            front.append(p)
    return sorted(front, key=lambda p: p["achieved_effective_bits"])


def proxy_fidelity(rows: Sequence[Mapping[str, Any]], objective: str) -> dict[str, Any]:
    """Spearman rank correlation of ``objective`` against ``eval_loss_delta`` over the computed rows.

    ``spearman`` is NaN with fewer than 3 usable rows or constant values.
    """
    from scipy.stats import spearmanr

    usable = [r for r in computed_rows(rows)
              if finite(r.get(objective)) and finite(r.get("eval_loss_delta"))]
    x = [float(r[objective]) for r in usable]
    y = [float(r["eval_loss_delta"]) for r in usable]
    rho = math.nan
    if len(usable) >= 3 and len(set(x)) > 1 and len(set(y)) > 1:
        rho = float(spearmanr(x, y).statistic)
    return {
        "objective": objective,
        "spearman": rho,
        "n": len(usable),
        "points": [{"run_id": r["computed_run_id"], "quant_pair": r["quant_pair"],
                    "granularity": r["canonical_granularity"], objective: a, "eval_loss_delta": b}
                   for r, a, b in zip(usable, x, y, strict=True)],
    }


def fidelity_objective(objective: str) -> str:
    """The AutoQuant prediction a study's proxy fidelity ranks: its objective, or ``constrained_score``
    when the study optimises the measured ``eval_loss_delta`` itself."""
    return "constrained_score" if objective == "eval_loss_delta" else objective
