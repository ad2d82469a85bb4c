"""The summary a sweep's parent run gets: a table of every child (CSV, Markdown) and a heatmap PNG."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

OBJECTIVE_COLUMNS = ("total_sensitivity", "constrained_score", "effective_bits")
COLUMNS = (
    "run_id", "quant_pair", "granularity", "dataset_size", *OBJECTIVE_COLUMNS,
    "status", "cache_hit", "failure_reason",
)
SUMMARY_CSV = "sweep_summary.csv"
SUMMARY_MD = "sweep_summary.md"


def heatmap_name(objective: str) -> str:
    """File name of the heatmap of ``objective``."""
    return f"heatmap_{objective}.png"


def child_rows(runs: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per child run (MLflow ``Run`` objects), sorted by pair, granularity, size."""
    rows = []
    for run in runs:
        p, t, m = run.data.params, run.data.tags, run.data.metrics
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "quant_pair": p.get("quant_pair", t.get("quant_pair", "?")),
            "granularity": p.get("quant_granularity", t.get("quant_granularity", "?")),
            "dataset_size": p.get("dataset_size", t.get("dataset_size", "?")),
            "status": run.info.status,
            "cache_hit": t.get("cache_hit", ""),
            "failure_reason": t.get("failure_reason", ""),
            "model": p.get("model", t.get("model", "")),
            "dataset": p.get("dataset", ""),
        }
        for key in OBJECTIVE_COLUMNS:
            row[key] = m.get(key, math.nan) if run.info.status == "FINISHED" else math.nan
        rows.append(row)
    return sorted(rows, key=lambda r: (r["quant_pair"], r["granularity"], r["dataset_size"], r["run_id"]))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6e}"
    return str(value).replace("|", "\\|")


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Every child as a CSV row (objectives as Python float reprs, empty when not finished)."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})


def write_markdown(path: Path, rows: Sequence[dict[str, Any]], objective: str, title: str) -> None:
    """Every child as a Markdown table; the objective of the sweep is named in the heading."""
    lines = [f"# {title}", "", f"objective: `{objective}` (lower is better); {len(rows)} runs", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[c]) for c in COLUMNS) + " |")
    path.write_text("\n".join(lines) + "\n")


def write_heatmap(path: Path, rows: Sequence[dict[str, Any]], objective: str, title: str) -> None:
    """Objective over quant_pair (rows) x granularity (columns); NaN (grey, "n/a") for failed or refused.

    When a cell holds several dataset sizes the smallest value is drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pairs = sorted({r["quant_pair"] for r in rows})
    grans = sorted({r["granularity"] for r in rows})
    grid = np.full((len(pairs), len(grans)), np.nan)
    for r in rows:
        value = r.get(objective, math.nan)
        i, j = pairs.index(r["quant_pair"]), grans.index(r["granularity"])
        if isinstance(value, float) and math.isfinite(value):
            grid[i, j] = value if math.isnan(grid[i, j]) else min(grid[i, j], value)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(grans) + 2), max(2.5, 0.7 * len(pairs) + 1.5)))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(grans)), grans, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(pairs)), pairs, fontsize=8)
    for i in range(len(pairs)):
        for j in range(len(grans)):
            text = "n/a" if math.isnan(grid[i, j]) else f"{grid[i, j]:.2e}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="black" if math.isnan(grid[i, j])
                    else "white")
    fig.colorbar(image, ax=ax, label=f"{objective} (lower is better)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def write_summary(folder: Path, rows: Sequence[dict[str, Any]], objective: str, title: str) -> list[Path]:
    """CSV, Markdown and heatmap of ``rows`` into ``folder``; returns the paths."""
    paths = [folder / SUMMARY_CSV, folder / SUMMARY_MD, folder / heatmap_name(objective)]
    write_csv(paths[0], rows)
    write_markdown(paths[1], rows, objective, title)
    write_heatmap(paths[2], rows, objective, title)
    return paths
