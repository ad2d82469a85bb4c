"""The summary a sweep's parent run gets: a table of every child (CSV, Markdown), a heatmap PNG and the
parent's MLflow description (``mlflow.note.content``: the answer of the sweep, first).

Rows are sorted by the sweep's objective (best first); numbers are formatted per column (scientific
with three significant digits for sensitivities, two decimals for bits and percentages) and each row
says how its number came about (``computed``, ``cache hit``, ``no-op``, ``refused``, ``failed``).
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from autoquant_sweep.figures import FIGURE_SAVE, new_figure
from autoquant_sweep.objectives import finite
from autoquant_sweep.tracking.run_logging import NOTE_TAG

OBJECTIVE_COLUMNS = ("total_sensitivity", "constrained_score", "effective_bits")
# metrics other helpers log when they are measured (shown only when at least one row has them)
OPTIONAL_COLUMNS = ("ppl_increase_pct", "eval_loss_delta", "recipe_effective_bits", "recipe_satisfied")
COLUMNS = (
    "run_id", "quant_pair", "quant_granularity", "dataset_size", *OBJECTIVE_COLUMNS,
    "status", "outcome", "cache_hit", "cache_source_run_id", "run_name", "failure_reason",
)
SUMMARY_CSV = "sweep_summary.csv"
SUMMARY_MD = "sweep_summary.md"
SCIENTIFIC = {"total_sensitivity", "constrained_score", "eval_loss_delta", "format_bits"}
PERCENT = {"ppl_increase_pct"}
# cell states of the heatmap besides a value
REFUSED, FAILED, NOT_TRIED = "refused", "failed", "not tried"


def heatmap_name(objective: str) -> str:
    """File name of the heatmap of ``objective``."""
    return f"heatmap_{objective}.png"


def _granularity(row: Mapping[str, Any]) -> str:
    return str(row.get("quant_granularity", row.get("granularity", "?")))


def outcome(row: Mapping[str, Any]) -> str:
    """How a row's number came about: computed / cache hit / no-op (= <canonical>) / refused / failed.

    Example:
        >>> outcome({"status": "FINISHED", "cache_hit": "true", "overlay_status": "noop",
        ...          "canonical_granularity": "default"})
        'no-op (= default), cache hit'
        >>> outcome({"status": "FAILED", "failure_kind": "refused"})
        'refused'
    """
    status = row.get("status", "")
    if status == "FAILED":
        return REFUSED if row.get("failure_kind") == "refused" else FAILED
    if status != "FINISHED":
        return str(status).lower()
    parts = []
    if row.get("overlay_status") == "noop":
        canonical = row.get("canonical_granularity")
        parts.append(f"no-op (= {canonical})" if canonical and canonical != _granularity(row) else "no-op")
    if row.get("cache_hit") == "true":
        parts.append("cache hit")
    return ", ".join(parts) or "computed"


def _sort_key(objective: str) -> Any:
    def key(r: Mapping[str, Any]) -> tuple:
        v = r.get(objective, math.nan)
        counts = finite(v)
        return (not counts, v if counts else 0.0, r.get("quant_pair", ""), _granularity(r),
                r.get("dataset_size", ""), r.get("run_id", ""))
    return key


def sort_rows(rows: Sequence[Mapping[str, Any]], objective: str) -> list[dict[str, Any]]:
    """Rows best first by ``objective`` (lower is better); rows without a value last, by name."""
    return [dict(r) for r in sorted(rows, key=_sort_key(objective))]


def _child_row(info: Mapping[str, Any], p: Mapping[str, str], t: Mapping[str, str], m: Mapping[str, float]
               ) -> dict[str, Any]:
    gran = p.get("quant_granularity", t.get("quant_granularity", "?"))
    row: dict[str, Any] = {
        "run_id": info["run_id"],
        "run_name": info.get("run_name") or t.get("mlflow.runName", ""),
        "quant_pair": p.get("quant_pair", t.get("quant_pair", "?")),
        "quant_granularity": gran,
        "granularity": gran,  # older key, kept for callers that still read it
        "dataset_size": p.get("dataset_size", t.get("dataset_size", "?")),
        "status": info["status"],
        "cache_hit": t.get("cache_hit", ""),
        "cache_source_run_id": t.get("cache_source_run_id", ""),
        "overlay_status": t.get("overlay_status", ""),
        "canonical_granularity": t.get("canonical_granularity", ""),
        "failure_kind": t.get("failure_kind", ""),
        "failure_reason": t.get("failure_reason", ""),
        "model": p.get("model", t.get("model", "")),
        "dataset": p.get("dataset", ""),
        "start_time": info.get("start_time"),
    }
    for key in (*OBJECTIVE_COLUMNS, *OPTIONAL_COLUMNS):
        row[key] = float(m.get(key, math.nan)) if info["status"] == "FINISHED" else math.nan
    row["outcome"] = outcome(row)
    return row


def _frame_runs(frame: Any) -> list[tuple[dict, dict, dict, dict]]:
    """(info, params, tags, metrics) of each row of an ``mlflow.search_runs`` DataFrame (missing cells
    dropped: a column exists when any run has the key)."""
    out = []
    for record in frame.to_dict("records"):
        def group(prefix: str, record: dict = record) -> dict:
            return {k[len(prefix):]: v for k, v in record.items()
                    if k.startswith(prefix) and v is not None and v == v}  # v == v: not NaN
        start = record.get("start_time")
        info = {"run_id": record["run_id"], "status": record["status"],
                "start_time": int(start.timestamp() * 1000) if hasattr(start, "timestamp") else start}
        out.append((info, group("params."), group("tags."), group("metrics.")))
    return out


def child_rows(runs: Any, objective: str = "total_sensitivity") -> list[dict[str, Any]]:
    """One row per child run, best ``objective`` first: ``runs`` are MLflow ``Run`` objects or the
    DataFrame of ``mlflow.search_runs`` (:func:`search_children`)."""
    if hasattr(runs, "to_dict"):  # a pandas DataFrame
        rows = [_child_row(info, p, t, m) for info, p, t, m in _frame_runs(runs)]
    else:
        rows = [_child_row({"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
                            "start_time": r.info.start_time}, r.data.params, r.data.tags, r.data.metrics)
                for r in runs]
    return sort_rows(rows, objective)


def search_children(client: Any, experiment_id: str, parent_run_id: str) -> Any:
    """The child runs of a sweep as MLflow's own runs table (``mlflow.search_runs``, pandas DataFrame:
    ``run_id``, ``status``, ``params.*``, ``metrics.*``, ``tags.*``) from ``client``'s store."""
    import mlflow

    from autoquant_sweep.tracking.store import use_store

    use_store(client.tracking_uri)  # mlflow.search_runs reads the module-level store
    return mlflow.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=5000, output_format="pandas")


def format_value(column: str, value: Any) -> str:
    """A cell as a person reads it: ``2.47e-07`` for sensitivities, ``10.00`` for bits, ``1.25 %``.

    Example:
        >>> format_value("total_sensitivity", 2.473e-07), format_value("effective_bits", 10.0)
        ('2.47e-07', '10.00')
    """
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
        if math.isnan(v):
            return ""
        if column == "recipe_satisfied":
            return "yes" if v >= 0.5 else "no"
        if column in PERCENT:
            return f"{v:+.2f} %"
        if column in SCIENTIFIC:
            return f"{v:.2e}"
        return f"{v:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def summary_frame(rows: Sequence[dict[str, Any]], objective: str = "total_sensitivity") -> Any:
    """Every child as one DataFrame row, best first: :data:`COLUMNS`, then the optional metrics some run
    measured; unfinished values are empty cells (what ``sweep_summary.csv`` holds)."""
    import pandas as pd

    extra = [c for c in OPTIONAL_COLUMNS if any(finite(r.get(c)) for r in rows)]
    records = []
    for row in sort_rows(rows, objective):
        record = {**row, "quant_granularity": _granularity(row),
                  "outcome": row.get("outcome") or outcome(row)}
        records.append({c: record.get(c, "") for c in (*COLUMNS, *extra)})
    frame = pd.DataFrame.from_records(records, columns=[*COLUMNS, *extra]).astype(object)
    return frame.where(frame.notna(), "")


def csv_text(rows: Sequence[dict[str, Any]], objective: str = "total_sensitivity") -> str:
    """``sweep_summary.csv``: numbers as Python float reprs, empty when not finished."""
    return summary_frame(rows, objective).to_csv(index=False, lineterminator="\n")


def markdown_text(rows: Sequence[dict[str, Any]], objective: str, title: str) -> str:
    """``sweep_summary.md``: every child as a Markdown table, best ``objective`` first, with its ratio to
    the best value."""
    from autoquant_sweep.report import markdown_table

    rows = sort_rows(rows, objective)
    others = [c for c in OBJECTIVE_COLUMNS if c != objective]
    extra = [c for c in OPTIONAL_COLUMNS if any(finite(r.get(c)) for r in rows)]
    values = [r.get(objective) for r in rows if finite(r.get(objective))]
    best = min(values) if values else math.nan
    header = ["#", "quant_pair", "quant_granularity", "dataset_size", objective, "x best", *others, *extra,
              "outcome", "run", "failure_reason"]
    align = ["right", "left", "left", "left", "right", "right", *["right"] * (len(others) + len(extra)),
             "left", "left", "left"]
    counts: dict[str, int] = {}
    for r in rows:
        o = r.get("outcome") or outcome(r)
        counts[o] = counts.get(o, 0) + 1
    table = []
    for i, r in enumerate(rows, 1):
        v = r.get(objective)
        ratio = f"{v / best:.1f}" if finite(v) and finite(best) and best > 0 else ""
        table.append([str(i), format_value("", r.get("quant_pair", "")), format_value("", _granularity(r)),
                      format_value("", r.get("dataset_size", "")), format_value(objective, v), ratio,
                      *[format_value(c, r.get(c, math.nan)) for c in [*others, *extra]],
                      format_value("", r.get("outcome") or outcome(r)), f"`{str(r.get('run_id', ''))[:8]}`",
                      format_value("", r.get("failure_reason", ""))])
    lines = [f"# {title}", "",
             f"objective: `{objective}` (lower is better), best first; {len(rows)} runs ("
             + ", ".join(f"{n} {o}" for o, n in sorted(counts.items())) + ")", "",
             *markdown_table(header, table, align)]
    return "\n".join(lines) + "\n"


def heatmap_cells(rows: Sequence[Mapping[str, Any]], objective: str) -> tuple[list, list, dict]:
    """(pairs, granularities, {(pair, gran): (value or state, noop)}) of the heatmap.

    A cell holds the smallest finished value (several dataset sizes or repeats); else ``refused`` when a
    run was refused, ``failed`` when one failed, and ``not tried`` when no run asked for it.
    """
    pairs = sorted({str(r.get("quant_pair", "?")) for r in rows})
    grans = sorted({_granularity(r) for r in rows}, key=lambda g: (g != "default", g))
    cells: dict[tuple[str, str], tuple[Any, bool]] = {}
    for p in pairs:
        for g in grans:
            mine = [r for r in rows if r.get("quant_pair") == p and _granularity(r) == g]
            done = [r for r in mine if r.get("status") == "FINISHED" and finite(r.get(objective))]
            if done:
                best = min(done, key=lambda r: r[objective])
                cells[(p, g)] = (float(best[objective]), best.get("overlay_status") == "noop")
            elif any(outcome(r) == REFUSED for r in mine):
                cells[(p, g)] = (REFUSED, False)
            elif mine:
                cells[(p, g)] = (FAILED, False)
            else:
                cells[(p, g)] = (NOT_TRIED, False)
    return pairs, grans, cells


def heatmap_figure(rows: Sequence[dict[str, Any]], objective: str, title: str) -> Any:
    """Objective over quant_pair (rows) x quant_granularity (columns) on a log colour scale (a matplotlib
    ``Figure``, no pyplot state).

    Each cell reads its value and its ratio to the best; the best cell is framed; refused (hatched),
    failed (cross-hatched), never tried (blank) and no-op (dashed frame, "no-op") cells differ.
    """
    import matplotlib
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.patches import Rectangle

    pairs, grans, cells = heatmap_cells(rows, objective)
    grid = np.full((len(pairs), len(grans)), np.nan)
    for (p, g), (value, _) in cells.items():
        if isinstance(value, float):
            grid[pairs.index(p), grans.index(g)] = value
    finite = grid[np.isfinite(grid)]
    positive = finite[finite > 0]
    if len(positive) == len(finite) and len(positive) and positive.max() > positive.min():
        norm: Any = LogNorm(vmin=positive.min(), vmax=positive.max())
        scale = "log scale"
    else:
        norm = Normalize(vmin=finite.min() if len(finite) else 0, vmax=finite.max() if len(finite) else 1)
        scale = "linear scale"
    best = float(finite.min()) if len(finite) else math.nan
    fig = new_figure(max(5.5, 1.35 * len(grans) + 3.2), max(3.2, 0.62 * len(pairs) + 2.2))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(len(grans)), grans, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(pairs)), pairs, fontsize=8)
    ax.set_xlabel("quant_granularity", fontsize=9)
    ax.set_ylabel("quant_pair (weight / activation dtype)", fontsize=9)
    best_cell = None
    for (p, g), (value, noop) in cells.items():
        i, j = pairs.index(p), grans.index(g)
        if isinstance(value, float):
            r, gc, b, _ = cmap(norm(value))
            dark = 0.299 * r + 0.587 * gc + 0.114 * b < 0.5
            ratio = "best" if value == best else f"x{value / best:.1f}" if best > 0 else ""
            text = f"{value:.2e}\n{ratio}" + ("\nno-op" if noop else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
            if noop:
                ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, ls="--", lw=1,
                                       ec="white" if dark else "black"))
            if value == best and best_cell is None:
                best_cell = (i, j)
        else:
            hatch = {REFUSED: "///", FAILED: "xxx"}.get(value)
            face = "0.85" if hatch else "white"
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fc=face, ec="0.6", lw=0.5, hatch=hatch))
            ax.text(j, i, value, ha="center", va="center", fontsize=7,
                    color="0.55" if value == NOT_TRIED else "black",
                    bbox={"fc": "white", "ec": "none", "pad": 1} if hatch else None)
    if best_cell is not None:
        i, j = best_cell
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
    fig.colorbar(image, ax=ax, label=f"{objective} ({scale}; lower is better)")
    ax.set_title(f"{title}\nbest = red frame; x N = N times the best; refused ///, failed xxx", fontsize=9)
    fig.tight_layout()
    return fig


def log_summary(client: Any, run_id: str, rows: Sequence[dict[str, Any]], objective: str, title: str,
                artifact_dir: str = "summary") -> None:
    """``sweep_summary.csv`` / ``.md`` and the heatmap PNG of ``rows``, logged straight to
    ``<artifact_dir>/`` of ``run_id`` (``MlflowClient.log_text`` / ``log_figure``: no local folder)."""
    client.log_text(run_id, csv_text(rows, objective), f"{artifact_dir}/{SUMMARY_CSV}")
    client.log_text(run_id, markdown_text(rows, objective, title), f"{artifact_dir}/{SUMMARY_MD}")
    client.log_figure(run_id, heatmap_figure(rows, objective, title),
                      f"{artifact_dir}/{heatmap_name(objective)}", save_kwargs=FIGURE_SAVE)


# ------------------------------------------------------------------------------- parent description


def _run_link(experiment_id: str, run_id: str, text: str) -> str:
    return f"[{text}](#/experiments/{experiment_id}/runs/{run_id})"


def parent_description(
    rows: Sequence[Mapping[str, Any]],
    objective: str,
    *,
    experiment_id: str,
    parent_tags: Mapping[str, str],
    best_run: Any = None,
    budget: Any = None,
    command: str | None = None,
) -> str:
    """Markdown for the parent run's description: the winner first, then how the sweep went.

    ``best_run`` is the MLflow run of the winner (for its description and measured metrics); without a
    registered winner the best finished row is named.
    """
    rows = sort_rows(rows, objective)
    finished = [r for r in rows if r.get("status") == "FINISHED" and finite(r.get(objective))]
    counts: dict[str, int] = {}
    for r in rows:
        o = r.get("outcome") or outcome(r)
        counts[o] = counts.get(o, 0) + 1
    tally = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
    lines: list[str] = []
    best_id = parent_tags.get("best_run_id") or (finished[0]["run_id"] if finished else None)
    best = next((r for r in rows if r.get("run_id") == best_id), None)
    if best is None or not finite(best.get(objective)):
        lines.append(f"No finished run with a value of {objective} ({len(rows)} runs: {tally}).")
        failed = [r for r in rows if r.get("failure_reason")]
        if failed:
            lines.append(f"First failure: {failed[0]['failure_reason'][:300]}")
    else:
        value = float(best[objective])
        worst = max(float(r[objective]) for r in finished)
        log10 = f" (log10 {math.log10(value):.2f})" if value > 0 else ""
        where = f"{best['quant_pair']} / {_granularity(best)} on {best.get('dataset_size')}"
        lines.append(f"Best: {where}: {objective} = {value:.3e}{log10}"
                     + (f", {worst / value:.0f}x lower than the worst finished run" if value > 0
                        and worst / value >= 1.5 else ""))
        lines.append("")
        link = _run_link(experiment_id, best["run_id"], best.get("run_name") or best["run_id"])
        how = f"; {best['outcome']}" if best.get("outcome") not in (None, "computed") else ""
        lines.append(f"- winner run: {link} (`{best['run_id']}`){how}")
        name, version = parent_tags.get("registered_model"), parent_tags.get("registered_version")
        if name:
            moved = parent_tags.get("best_alias_moved") == "true"
            lines.append(f"- registered: `{name}` v{version}; alias `best` "
                         + ("now points here" if moved else "kept on an earlier, better version")
                         + f" (`autoquant-sweep lookup {name}`)")
        metrics = dict(best_run.data.metrics) if best_run is not None else {}
        if budget is not None:
            recipe = ""
            if "recipe_effective_bits" in metrics:
                ok = metrics.get("recipe_satisfied")
                recipe = f"; its recipe reaches {metrics['recipe_effective_bits']:.2f} effective bits" + (
                    "" if ok is None else " (budget met)" if ok >= 0.5 else " (budget NOT met)")
            lines.append(f"- budget: `autoquant.effective_bits` = {float(budget):g}{recipe}")
        measured = []
        if "ppl_increase_pct" in metrics:
            measured.append(f"perplexity {metrics['ppl_increase_pct']:+.2f} %")
        if "eval_loss_delta" in metrics:
            measured.append(f"eval loss {metrics['eval_loss_delta']:+.3e}")
        if measured:
            lines.append("- measured on the quantized model: " + ", ".join(measured))
        if best_run is not None:
            summary = best_run.data.tags.get("effective_config_summary")
            if summary:
                lines.append(f"- effective config: `{summary}`")
        lines.append("- runners-up: " + "; ".join(
            f"`{r['quant_pair']}` / `{_granularity(r)}` {float(r[objective]):.2e}"
            for r in _distinct(finished)[1:4]) if len(_distinct(finished)) > 1 else "- no runner-up")
    lines.append("")
    lines.append(f"{len(rows)} child runs ({tally}); objective `{objective}`, lower is better. "
                 f"Table and heatmap: Artifacts > `summary/`"
                 + ("; study plots: `optuna/`" if parent_tags.get("optuna_study") else "") + ".")
    if command:
        lines.append("")
        lines.append(f"Command: `{command}`")
    return "\n".join(lines) + "\n"


def _distinct(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """First row of each (pair, granularity, size) in order."""
    seen, out = set(), []
    for r in rows:
        key = (r.get("quant_pair"), _granularity(r), r.get("dataset_size"))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def sweep_command(argv: Sequence[str] | None = None) -> str:
    """The command line of this sweep as a person would type it."""
    args = list(sys.argv if argv is None else argv)
    return "python " + shlex.join(args) if args else ""


def set_parent_description(client: Any, parent_run_id: str, container: Mapping[str, Any],
                           stopped: str | None = None) -> None:
    """Write the parent run's description (``mlflow.note.content``), its ``sweep_command`` param and the
    ``log10_best_<objective>`` metric. Called once at the end of a sweep (``stopped``: why it did not end
    normally); never raises.
    """
    import logging

    log = logging.getLogger("autoquant_sweep.tracking")
    try:
        from mlflow.entities import Metric, Param, RunTag

        from autoquant_sweep.objectives import primary_metric

        objective = primary_metric(container["autoquant"]["objective"])
        parent = client.get_run(parent_run_id)
        experiment_id = parent.info.experiment_id
        rows = child_rows(search_children(client, experiment_id, parent_run_id), objective)
        tags = parent.data.tags
        finished = [r for r in rows if r.get("status") == "FINISHED" and finite(r.get(objective))]
        best_id = tags.get("best_run_id") or (finished[0]["run_id"] if finished else None)
        best_run = client.get_run(best_id) if best_id else None
        command = sweep_command()
        text = parent_description(rows, objective, experiment_id=experiment_id, parent_tags=tags,
                                  best_run=best_run, budget=container["autoquant"].get("effective_bits"),
                                  command=command)
        if stopped:
            text = f"{stopped} (nothing registered from this sweep)\n\n{text}"
        params = [Param("sweep_command", command[:6000])] if command and \
            "sweep_command" not in parent.data.params else []
        metrics = []
        value = best_run.data.metrics.get(objective) if best_run is not None else None
        if finite(value) and value > 0:
            metrics.append(Metric(f"log10_best_{objective}", round(math.log10(value), 3),
                                  int(time.time() * 1000), 0))
        client.log_batch(parent_run_id, metrics=metrics, params=params, tags=[RunTag(NOTE_TAG, text)])
    except Exception as exc:  # a description must never fail a sweep
        log.warning("could not write the sweep's description: %s", exc)
