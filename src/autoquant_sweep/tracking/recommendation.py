"""What a sweep recommends, put in place at its end: the recommendation's files on the parent run, its
metrics and tags, and the registry update.

Called from :class:`~autoquant_sweep.tracking.callbacks.MlflowSweepCallback` (docs/recommendation.md).
What is computed lives in :mod:`~autoquant_sweep.tracking.recommendation_analysis`, how it reads in
:mod:`~autoquant_sweep.tracking.recommendation_text`, how it is drawn in
:mod:`~autoquant_sweep.tracking.recommendation_plots`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from autoquant_sweep.figures import FIGURE_SAVE
from autoquant_sweep.objectives import finite
from autoquant_sweep.tracking.recommendation_analysis import (
    best_per_budget,
    curve_points,
    enrich_rows,
    fidelity_objective,
    proxy_fidelity,
)
from autoquant_sweep.tracking.recommendation_plots import figures
from autoquant_sweep.tracking.recommendation_text import artifact_texts

ARTIFACT_DIR = "recommendation"


def log_artifacts(client: Any, run_id: str, table: Sequence[Mapping[str, Any]],
                  points: Sequence[Mapping[str, Any]], fidelity: Mapping[str, Any], run_budget: float | None,
                  title: str) -> None:
    """best_per_budget (md, csv), curve_points.csv, pareto_curves.png and proxy_fidelity (json, png),
    logged straight to ``recommendation/`` of ``run_id`` (``MlflowClient.log_text`` / ``log_figure``)."""
    for name, text in artifact_texts(table, points, fidelity, run_budget, title).items():
        client.log_text(run_id, text, f"{ARTIFACT_DIR}/{name}")
    for name, fig in figures(points, fidelity, title).items():
        client.log_figure(run_id, fig, f"{ARTIFACT_DIR}/{name}", save_kwargs=FIGURE_SAVE)


def summarise_sweep(client: Any, parent_run_id: str, runs: Sequence[Any], rows: list[dict[str, Any]],
                    objective: str, title: str, registry: bool | Callable[[], bool]) -> dict[str, Any]:
    """The recommendation part of a sweep's end: artifacts and metrics on the parent, registry update.

    ``rows`` are :func:`autoquant_sweep.tracking.summary.child_rows` of ``runs`` (enriched here).
    Returns what :func:`outcome_lines` prints.
    """
    from mlflow.entities import Metric, RunTag

    enrich_rows(rows, runs)
    points = curve_points(client, rows)
    table = best_per_budget(points)
    budgets = {r["budget"] for r in rows if finite(r.get("budget"))}
    run_budget = budgets.pop() if len(budgets) == 1 else None
    fidelity = proxy_fidelity(rows, fidelity_objective(objective))
    log_artifacts(client, parent_run_id, table, points, fidelity, run_budget, title)
    metrics = {"proxy_fidelity_n": float(fidelity["n"])}
    if finite(fidelity["spearman"]):
        metrics["proxy_fidelity_spearman"] = fidelity["spearman"]
    tags: dict[str, str] = {}
    result: dict[str, Any] = {"table": table, "fidelity": fidelity, "run_budget": run_budget,
                              "registered": None, "rows": rows}
    if registry() if callable(registry) else registry:  # a callable: asked right before registering
        from autoquant_sweep.tracking.registry import register_best

        registered = register_best(client, rows, objective)
        result["registered"] = registered
        if registered is not None:
            metrics[f"best_{objective}"] = registered["value"]
            tags.update({
                "registered_model": registered["name"],
                "registered_version": str(registered["version"]),
                "best_run_id": registered["run_id"],
                "best_selected_run_id": registered["selected_run_id"],
                "best_alias_moved": str(registered["alias_moved"]).lower(),
            })
            if registered["band_alias"]:
                tags["band_alias"] = registered["band_alias"]
                tags["band_alias_moved"] = str(registered["band_moved"]).lower()
    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])  # one request for the sweep's answer
    return result
