"""What a sweep recommends, as text: the best-per-budget table (Markdown), the artifact files
(Markdown, CSV, JSON) and the lines the sweep prints at its end."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from autoquant_sweep.objectives import finite
from autoquant_sweep.report import dump_json
from autoquant_sweep.run_settings import EMBEDDED_MODELS
from autoquant_sweep.tracking.registry import best_row

BEST_PER_BUDGET_MD = "best_per_budget.md"
BEST_PER_BUDGET_CSV = "best_per_budget.csv"
CURVES_CSV = "curve_points.csv"
FIDELITY_JSON = "proxy_fidelity.json"


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if finite(value) else "-"


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
                    if finite(row["eval_loss_delta"]) else "-")
        if (measured == "-" and not nothing and finite(row.get("trial_eval_loss_delta"))
                and finite(row.get("trial_budget"))):
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
        + (f"{rho:.3f}" if finite(rho) else "n/a (fewer than 3 evaluated trials)")
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
                    f"{best['ppl_increase_pct']:+.2f} %)" if finite(best.get("eval_loss_delta"))
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
            + (f"{rho:.3f}" if finite(rho) else "n/a")
            + f" over {fidelity['n']} computed trials"
            # the noise floor was measured on the embedded tiny models only (facts 21)
            + (" (tiny-model eval noise ~1e-3 nats)" if rows and all(
                r.get("model") in EMBEDDED_MODELS for r in rows) else "")
        )
    return lines
