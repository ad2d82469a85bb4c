"""What a sweep recommends: best recipe per budget, proxy fidelity, Pareto set of the budget curves.

Called from :class:`~autoquant_sweep.tracking.callbacks.MlflowSweepCallback` at the end of a sweep
(docs/recommendation.md):

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
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autoquant_sweep.report import dump_json
from autoquant_sweep.run_settings import EMBEDDED_MODELS

BEST_PER_BUDGET_MD = "best_per_budget.md"
BEST_PER_BUDGET_CSV = "best_per_budget.csv"
CURVES_CSV = "curve_points.csv"
PARETO_PNG = "pareto_curves.png"
FIDELITY_JSON = "proxy_fidelity.json"
FIDELITY_PNG = "proxy_fidelity.png"
ARTIFACT_DIR = "recommendation"
_ROW_METRICS = ("recipe_satisfied", "recipe_effective_bits", "recipe_predicted_score", "eval_loss",
                "eval_loss_unquantized", "eval_loss_delta", "ppl_increase_pct", "constrained_score",
                "total_sensitivity", "effective_bits")
TOLERANCE = 1e-9
FIGURE_SAVE = {"dpi": 100, "metadata": {"Software": None}}  # reproducible PNG bytes


def band_alias(budget: float) -> str:
    """Registry alias of a budget band: ``best-b9`` for 9 bits, ``best-b6p5`` for 6.5 bits.

    Example:
        >>> band_alias(9.0), band_alias(6.5)
        ('best-b9', 'best-b6p5')
    """
    text = f"{float(budget):g}".replace(".", "p")
    return f"best-b{text}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def enrich_rows(rows: list[dict[str, Any]], runs: Sequence[Any]) -> list[dict[str, Any]]:
    """Add recipe / evaluation metrics, budget and the computing run to each row (in place)."""
    by_id = {run.info.run_id: run for run in runs}
    for row in rows:
        run = by_id.get(row["run_id"])
        if run is None:
            continue
        m, t, p = run.data.metrics, run.data.tags, run.data.params
        for key in _ROW_METRICS:
            if key not in row or not _finite(row.get(key)):
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
                "satisfied": bits[step] <= budget + TOLERANCE,
                "evaluated": _finite(row.get("budget")) and abs(row["budget"] - budget) < 1e-6,
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
              if _finite(r.get(objective)) and _finite(r.get("eval_loss_delta"))]
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


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if _finite(value) else "-"


def table_lines(table: Sequence[Mapping[str, Any]], run_budget: float | None = None) -> list[str]:
    """The best-per-budget table as Markdown lines (also what the sweep prints)."""
    lines = ["| budget | best pair x granularity | predicted score | achieved bits | "
             "measured loss increase |", "|---:|---|---:|---:|---:|"]
    for row in table:
        mark = " (run budget)" if run_budget is not None and abs(row["budget"] - run_budget) < 1e-6 else ""
        name = f"{row['quant_pair']} x {row['granularity']}" if row["quant_pair"] else "none fits"
        nothing = (bool(row["quant_pair"]) and row["predicted_score"] == 0
                   and row["achieved_effective_bits"] >= 16)
        if nothing:
            name = "nothing quantized (the 16-bit model fits)"
        measured = (f"{row['eval_loss_delta']:+.4f} nats ({row['ppl_increase_pct']:+.2f} % ppl)"
                    if _finite(row["eval_loss_delta"]) else "-")
        if (measured == "-" and not nothing and _finite(row.get("trial_eval_loss_delta"))
                and _finite(row.get("trial_budget"))):
            measured = (f"(this trial at {row['trial_budget']:g} bits: "
                        f"{row['trial_eval_loss_delta']:+.4f} nats)")
        lines.append(f"| {row['budget']:g}{mark} | {name} | {_fmt(row['predicted_score'], '.3e')} | "
                     f"{_fmt(row['achieved_effective_bits'], '.3f')} | {measured} |")
    return lines


def artifact_texts(table: Sequence[Mapping[str, Any]], points: Sequence[Mapping[str, Any]],
                   fidelity: Mapping[str, Any], run_budget: float | None, title: str) -> dict[str, str]:
    """``{file name: text}``: best_per_budget (md, csv), curve_points.csv, proxy_fidelity.json."""
    import pandas as pd

    rho = fidelity["spearman"]
    texts = {BEST_PER_BUDGET_MD: "\n".join([
        f"# {title}: best recipe per budget", "",
        "Predicted score: AutoQuant's damage estimate of the recipe ModelOpt re-solves at each budget "
        "from one scoring pass per trial; measured loss increase: held-out evaluation, only at the budget "
        "each trial ran at.", "",
        *table_lines(table, run_budget), "",
        f"Proxy fidelity (Spearman, {fidelity['objective']} vs eval_loss_delta, n={fidelity['n']}): "
        + (f"{rho:.3f}" if _finite(rho) else "n/a (fewer than 3 evaluated trials)")
        + ". On the tiny model the measured deltas are within ~1e-3 nats of noise.", ""])}
    for name, rows, cols in (
        (BEST_PER_BUDGET_CSV, table, ["budget", "quant_pair", "granularity", "predicted_score",
                                      "achieved_effective_bits", "eval_loss_delta", "ppl_increase_pct",
                                      "run_id"]),
        (CURVES_CSV, points, ["run_id", "quant_pair", "granularity", "budget", "predicted_score",
                              "achieved_effective_bits", "satisfied"]),
    ):
        # NaN and None as empty cells; floats as Python writes them (repr), as the csv module did
        frame = pd.DataFrame(list(rows), columns=cols).astype(object)
        texts[name] = frame.where(frame.notna(), "").to_csv(index=False, lineterminator="\n")
    texts[FIDELITY_JSON] = dump_json(fidelity)
    return texts


def figures(points: Sequence[Mapping[str, Any]], fidelity: Mapping[str, Any], title: str) -> dict[str, Any]:
    """``{file name: matplotlib Figure}``: the Pareto set of the budget curves and the proxy fidelity
    scatter, each when there is something to draw."""
    out = {}
    if points:
        out[PARETO_PNG] = _plot_pareto(points, title)
    if fidelity["points"]:
        out[FIDELITY_PNG] = _plot_fidelity(fidelity, title)
    return out


def write_artifacts(folder: Path, table: Sequence[Mapping[str, Any]], points: Sequence[Mapping[str, Any]],
                    fidelity: Mapping[str, Any], run_budget: float | None, title: str) -> list[Path]:
    """best_per_budget (md, csv), curve_points.csv, pareto_curves.png, proxy_fidelity (json, png) as files."""
    paths = []
    for name, text in artifact_texts(table, points, fidelity, run_budget, title).items():
        (folder / name).write_text(text)
        paths.append(folder / name)
    for name, fig in figures(points, fidelity, title).items():
        fig.savefig(folder / name, **FIGURE_SAVE)
        paths.append(folder / name)
    return paths


def log_artifacts(client: Any, run_id: str, table: Sequence[Mapping[str, Any]],
                  points: Sequence[Mapping[str, Any]], fidelity: Mapping[str, Any], run_budget: float | None,
                  title: str) -> None:
    """The files of :func:`write_artifacts`, logged straight to ``recommendation/`` of ``run_id``
    (``MlflowClient.log_text`` / ``log_figure``: no local folder)."""
    for name, text in artifact_texts(table, points, fidelity, run_budget, title).items():
        client.log_text(run_id, text, f"{ARTIFACT_DIR}/{name}")
    for name, fig in figures(points, fidelity, title).items():
        client.log_figure(run_id, fig, f"{ARTIFACT_DIR}/{name}", save_kwargs=FIGURE_SAVE)


def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _plot_pareto(points: Sequence[Mapping[str, Any]], title: str) -> Any:
    fig = _figure()
    fig.subplots_adjust(left=0.13, right=0.72, top=0.9, bottom=0.12)
    ax = fig.add_subplot()
    series: dict[tuple, list] = {}
    for p in points:
        if p["satisfied"]:
            series.setdefault((p["quant_pair"], p["granularity"]), []).append(p)
    for (pair, gran), pts in sorted(series.items()):
        pts = sorted(pts, key=lambda p: p["achieved_effective_bits"])
        ax.plot([p["achieved_effective_bits"] for p in pts], [p["predicted_score"] for p in pts], ".-",
                lw=0.8, label=f"{pair} x {gran}")
    front = pareto_front([p for p in points if p["satisfied"]])
    ax.plot([p["achieved_effective_bits"] for p in front], [p["predicted_score"] for p in front], "k--",
            lw=1.2, label="Pareto set")
    positive = [p["predicted_score"] for p in points if p["predicted_score"] > 0]
    if positive:
        ax.set_yscale("symlog", linthresh=min(positive))
    ax.set_xlabel("achieved effective bits")
    ax.set_ylabel("predicted damage (AutoQuant score)")
    ax.set_title(f"{title}: budget curves", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _plot_fidelity(fidelity: Mapping[str, Any], title: str) -> Any:
    fig = _figure(6.0, 4.2)
    fig.subplots_adjust(left=0.15, right=0.97, top=0.88, bottom=0.13)
    ax = fig.add_subplot()
    objective = fidelity["objective"]
    xs = [p[objective] for p in fidelity["points"]]
    ys = [p["eval_loss_delta"] for p in fidelity["points"]]
    ax.scatter(xs, ys, s=18)
    for p, x, y in zip(fidelity["points"], xs, ys, strict=True):
        ax.annotate(f"{p['quant_pair']} x {p['granularity']}", (x, y), fontsize=5)
    ax.axhspan(-1e-3, 1e-3, color="grey", alpha=0.15, label="~1e-3 nats: tiny-model eval noise")
    if all(x > 0 for x in xs):
        ax.set_xscale("log")
    rho = fidelity["spearman"]
    ax.set_xlabel(f"{objective} (AutoQuant prediction)")
    ax.set_ylabel("eval_loss_delta (nats, measured)")
    ax.set_title(f"{title}: proxy fidelity" + (f", Spearman {rho:.3f}" if _finite(rho) else ""), fontsize=9)
    ax.legend(fontsize=7)
    return fig


def fidelity_objective(objective: str) -> str:
    """The AutoQuant prediction a study's proxy fidelity ranks: its objective, or ``constrained_score``
    when the study optimises the measured ``eval_loss_delta`` itself."""
    return "constrained_score" if objective == "eval_loss_delta" else objective


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
    budgets = {r["budget"] for r in rows if _finite(r.get("budget"))}
    run_budget = budgets.pop() if len(budgets) == 1 else None
    fidelity = proxy_fidelity(rows, fidelity_objective(objective))
    log_artifacts(client, parent_run_id, table, points, fidelity, run_budget, title)
    metrics = {"proxy_fidelity_n": float(fidelity["n"])}
    if _finite(fidelity["spearman"]):
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


def best_row(rows: Sequence[Mapping[str, Any]], objective: str) -> Mapping[str, Any] | None:
    """The row the registry would pick (qualifying, lowest objective), also without a registry."""
    from autoquant_sweep.tracking.registry import qualifying

    candidates = qualifying(rows, objective)
    if not candidates:
        return None
    return min(candidates, key=lambda r: (r[objective], r.get("cache_hit") == "true", r["run_id"]))


def outcome_lines(result: Mapping[str, Any], objective: str) -> list[str]:
    """The sweep's printed answer: best recipe (canonical names), budget, bits, predicted score, measured
    loss / perplexity increase, registry entry, best-per-budget table, proxy fidelity."""
    lines: list[str] = []
    rows = result.get("rows") or []
    best = best_row(rows, objective)
    registered = result.get("registered")
    if best is not None:
        computed = best.get("computed_run_id") or best["run_id"]
        measured = (f"measured held-out loss {best['eval_loss_delta']:+.4f} nats (perplexity "
                    f"{best['ppl_increase_pct']:+.2f} %)" if _finite(best.get("eval_loss_delta"))
                    else "not evaluated")
        lines.append(
            f"best config: quant_pair={best['quant_pair']} quant_granularity={best['canonical_granularity']} "
            f"{objective}={best[objective]:.6e} (run {computed})"
        )
        lines.append(
            f"  recipe at {best['budget']:g} effective bits: achieves "
            f"{best['recipe_effective_bits']:.3f} bits, predicted score "
            f"{best['recipe_predicted_score']:.4e}, {measured}"
        )
        if best["canonical_granularity"] != best.get("granularity"):
            lines.append(f"  (asked as quant_granularity={best.get('granularity')}: same effective config)")
    else:
        lines.append(f"best config: none (no finished trial with a finite {objective} whose recipe fits its "
                     "budget)")
    if registered is not None:
        band = registered.get("band_alias")
        kept = "alias best kept on a better earlier version"
        lines.append(
            f"registered: {registered['name']} version {registered['version']} "
            f"({'now alias best' if registered['alias_moved'] else kept}"
            + (f"; {band} {'moved here' if registered['band_moved'] else 'kept'}" if band else "")
            + f"); look it up with: autoquant-sweep lookup {registered['name']}"
            + (f" --alias {band}" if band else "")
        )
    table = result.get("table") or []
    if table:
        lines.append("best per budget (from every trial's budget curve; measured only at the run budget):")
        lines += ["  " + line for line in table_lines(table, result.get("run_budget"))]
    fidelity = result.get("fidelity")
    if fidelity is not None:
        rho = fidelity["spearman"]
        lines.append(
            f"proxy fidelity: Spearman {fidelity['objective']} vs eval_loss_delta = "
            + (f"{rho:.3f}" if _finite(rho) else "n/a")
            + f" over {fidelity['n']} computed trials"
            # the noise floor was measured on the embedded tiny models only (facts 21)
            + (" (tiny-model eval noise ~1e-3 nats)" if rows and all(
                r.get("model") in EMBEDDED_MODELS for r in rows) else "")
        )
    return lines
