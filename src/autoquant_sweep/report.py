"""Report files of one run: manifest, per-layer table (JSON / Markdown / CSV) and a bar chart."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autoquant_sweep.figures import FIGURE_SAVE

MANIFEST = "manifest.json"
PER_LAYER_JSON = "per_layer.json"
PER_LAYER_MD = "per_layer.md"
PER_LAYER_CSV = "per_layer.csv"
PER_LAYER_PNG = "per_layer.png"
RECIPE_DIR = "recipe"
RECIPE_CFG = "quant_cfg.json"
RECIPE_CURVE_JSON = "budget_curve.json"
RECIPE_CURVE_PNG = "budget_curve.png"
REPORT_FILES = (MANIFEST, PER_LAYER_JSON, PER_LAYER_MD, PER_LAYER_CSV, PER_LAYER_PNG)
#: files of the report's ``recipe/`` folder (also the MLflow artifact folder ``recipe/``)
RECIPE_FILES = (RECIPE_CFG, RECIPE_CURVE_JSON, RECIPE_CURVE_PNG)
#: the report's images, relative to the report folder (``write_report(..., plots=False)`` leaves them out)
PLOT_FILES = (PER_LAYER_PNG, f"{RECIPE_DIR}/{RECIPE_CURVE_PNG}")
CSV_COLUMNS = ("rank", "group", "modules", "score", "cost", "uncompressed_cost", "bits", "chosen_in_budget")


def dump_json(obj: Any) -> str:
    """Stable, human-readable JSON (sorted keys, trailing newline)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str]) -> list[str]:
    """A Markdown (pipe) table as lines, columns padded to their width; ``align``: ``left`` / ``right`` /
    ``center`` per column. Cells are taken as given (no number parsing: ``1.0`` stays ``1.0``).

    Example:
        >>> markdown_table(["rank", "group"], [["1", "mlp"]], ["right", "left"])
        ['|   rank | group   |', '|-------:|:--------|', '|      1 | mlp     |']
    """
    from tabulate import tabulate

    text = tabulate(rows, headers=header, tablefmt="pipe", colalign=align, disable_numparse=True)
    return text.splitlines()


def ranked_layers(layers: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Layers from most to least sensitive, with a 1-based ``rank``."""
    ordered = sorted(layers, key=lambda layer: (-layer["score"], layer["group"]))
    return [{"rank": i + 1, **layer} for i, layer in enumerate(ordered)]


def render_markdown(manifest: Mapping[str, Any]) -> str:
    """A Markdown page: what ran, the objectives, and the ranked per-layer table."""
    q = manifest["quantization"]
    obj = manifest["objectives"]
    lines = [
        f"# Sensitivity: {manifest['model']['name']} / {q['pair']} / {q['granularity']} / "
        f"{manifest['dataset']['size']}",
        "",
        f"- base format: `{q['base_format']}`; granularity `{q['granularity']}` ({q['status']})",
        f"- effective quantizers: {q['summary']}",
        f"- config fingerprint: `{q['fingerprint']}`",
        f"- AutoQuant: method {manifest['autoquant']['method']}, {manifest['autoquant']['num_calib_steps']} "
        f"calibration + {manifest['autoquant']['num_score_steps']} scoring steps of batch "
        f"{manifest['autoquant']['batch_size']}, device {manifest['autoquant']['device']}",
        f"- total_sensitivity: {obj['total_sensitivity']:.6e}",
        *_recipe_lines(manifest),
        "",
    ]
    rows = [[str(layer["rank"]), f"`{layer['group']}`",
             ", ".join(m.rsplit(".", 1)[-1] for m in layer["modules"]), f"{layer['score']:.6e}",
             f"{layer['cost']:.0f}", f"{layer['bits']:g}",
             "yes" if layer["chosen_in_budget"] else "no"]
            for layer in ranked_layers(manifest["per_layer"])]
    lines += markdown_table(
        ["rank", "layer group", "modules", "score", "cost", "bits", "kept quantized in budget"], rows,
        ["right", "left", "left", "right", "right", "right", "center"])
    return "\n".join(lines) + "\n"


def _recipe_lines(manifest: Mapping[str, Any]) -> list[str]:
    recipe = manifest.get("recipe")
    if not recipe:  # a manifest written before recipes existed
        obj = manifest["objectives"]
        return [f"- constrained_score: {obj.get('constrained_score', float('nan')):.6e} at effective bits "
                f"{obj['effective_bits']:.3f} (budget {manifest['autoquant']['effective_bits']})"]
    n = len(recipe["quantized_groups"]) + len(recipe["kept_16bit_groups"])
    lines = [
        f"- recipe at {recipe['budget']:g} bits (`recipe/quant_cfg.json`): predicted score "
        f"{recipe['predicted_score']:.6e}, achieved {recipe['achieved_effective_bits']:.3f} effective bits, "
        + ("fits the budget" if recipe["satisfied"] else "**does not fit the budget** (all quantized)")
        + f"; {len(recipe['quantized_groups'])}/{n} groups quantized, kept at 16 bits: "
        + (", ".join(f"`{g}`" for g in recipe["kept_16bit_groups"]) or "none"),
    ]
    ev = manifest.get("evaluation")
    if ev:
        lines.append(
            f"- measured on {ev['num_samples']} held-out captions: loss {ev['eval_loss']:.4f} vs "
            f"{ev['eval_loss_unquantized']:.4f} unquantized ({ev['eval_loss_delta']:+.4f} nats, perplexity "
            f"{ev['ppl_increase_pct']:+.2f} %)"
        )
    return lines


def write_csv(path: Path, layers: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for layer in ranked_layers(layers):
            row = {key: layer[key] for key in CSV_COLUMNS}
            row["modules"] = " ".join(layer["modules"])
            row["score"] = repr(float(layer["score"]))
            writer.writerow(row)


def _figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` on its own Agg canvas: no pyplot state, nothing kept after the save."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Any, path: Path) -> None:
    # No Software metadata: the PNG bytes do not depend on the matplotlib build.
    fig.savefig(path, **FIGURE_SAVE)


def plot_sensitivity(path: Path, manifest: Mapping[str, Any]) -> None:
    """Horizontal bars of per-layer score in model order (log scale when all scores are positive).

    Drawn for every sweep trial, so it is built for speed (``benchmarks/README.md``): the object API on an
    Agg canvas (no pyplot state, no ``tight_layout``), fixed margins, layer names as plain texts rather
    than y ticks (a tick is five artists), no minor ticks, and the title and axis label placed at fixed
    positions (an axes title or label is moved clear of the tick labels, which measures every one of
    them). What is left is mostly FreeType drawing the ~25 texts and the PNG encoding.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    layers = manifest["per_layer"]
    names = [layer["group"] for layer in layers]
    scores = [layer["score"] for layer in layers]
    q = manifest["quantization"]
    height = max(3.0, 0.28 * len(names) + 1.2)
    fig = _figure(8, height)
    label_width = max((len(n) for n in names), default=10) * 0.055  # inches at fontsize 7
    left, right = min(0.6, (label_width + 0.15) / 8), 0.97
    fig.subplots_adjust(left=left, right=right, top=1 - 0.45 / height, bottom=0.6 / height)
    ax = fig.add_subplot()
    ax.barh(range(len(names)), scores, color="tab:blue")
    ax.set_ylim(len(names) - 0.5, -0.5)  # first layer on top
    ax.yaxis.set_major_locator(NullLocator())
    label_at = ax.get_yaxis_transform()  # x in axes fraction, y in data (bar index)
    for index, name in enumerate(names):
        ax.text(-0.01, index, name, transform=label_at, ha="right", va="center", fontsize=7)
    if scores and all(s > 0 for s in scores):
        ax.set_xscale("log")
        # labelled ticks at 1, 2, 5 x 10^k (1 x 10^k only over many decades), short labels: none overlap
        decades = math.log10(max(scores)) - math.log10(min(scores))
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 2.5 else (1.0,),
                                              numticks=12))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.tick_params(axis="x", labelsize=8)
    middle = (left + right) / 2
    fig.text(middle, 0.08 / height, f"AutoQuant {manifest['autoquant']['method']} sensitivity "
             "(higher = more sensitive)", ha="center", va="bottom", fontsize=10)
    title = f"{manifest['model']['name']} | {q['pair']} | {q['granularity']} | {manifest['dataset']['size']}"
    fig.text(middle, 1 - 0.12 / height, title, ha="center", va="top", fontsize=9)
    _save_png(fig, path)


def plot_budget_curve(path: Path, curve: Sequence[Mapping[str, Any]], title: str, run_budget: float) -> None:
    """Predicted score against achieved effective bits, one marker per budget (hollow: unsatisfied).

    Built for speed like :func:`plot_sensitivity`: fixed legend corner (``loc="best"`` tries every
    position against every point), no minor ticks, title and axis labels at fixed positions.
    """
    from matplotlib.ticker import NullLocator

    fig = _figure(6, 3.6)
    left, right, bottom, top = 0.14, 0.97, 0.15, 0.88
    fig.subplots_adjust(left=left, right=right, top=top, bottom=bottom)
    ax = fig.add_subplot()
    ok = [p for p in curve if p["satisfied"]]
    bad = [p for p in curve if not p["satisfied"]]
    ax.plot([p["achieved_effective_bits"] for p in ok], [p["predicted_score"] for p in ok], "o-",
            color="tab:blue", label="recipe fits the budget")
    if bad:
        ax.plot([p["achieved_effective_bits"] for p in bad], [p["predicted_score"] for p in bad], "o",
                mfc="none", color="tab:red", label="budget infeasible (all quantized)")
    ax.axvline(run_budget, color="grey", lw=0.8, ls="--", label=f"run budget {run_budget:g}")
    positive = [p["predicted_score"] for p in curve if p["predicted_score"] > 0]
    if positive:
        ax.set_yscale("symlog", linthresh=max(1e-12, min(positive)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_locator(NullLocator())
    ax.tick_params(labelsize=8)
    # fewer bits never cost less damage: the lower left corner (few bits, little damage) stays empty
    ax.legend(fontsize=7, loc="lower left")
    fig.text((left + right) / 2, 0.02, "achieved effective bits", ha="center", va="bottom", fontsize=9)
    fig.text(0.01, (bottom + top) / 2, "predicted damage (AutoQuant score)", rotation=90, ha="left",
             va="center", fontsize=9)
    fig.text((left + right) / 2, 0.97, title, ha="center", va="top", fontsize=9)
    _save_png(fig, path)


def write_report(
    folder: Path, manifest: Mapping[str, Any], recipe_cfg: Mapping[str, Any] | None = None, *,
    plots: bool = True,
) -> None:
    """Write every report file of ``manifest`` into ``folder`` (which must exist); ``recipe_cfg`` (the
    recipe at the run's budget, a ModelOpt config) goes to ``recipe/quant_cfg.json`` with the curve.

    ``plots=False`` leaves out the two PNGs (:data:`PLOT_FILES`) for a caller that draws them later with
    :func:`render_plots`, off a sweep trial's critical path.
    """
    (folder / MANIFEST).write_text(dump_json(manifest))
    render_per_layer_files(folder, manifest, plot=plots)
    if recipe_cfg is not None:
        write_recipe_files(folder / RECIPE_DIR, manifest, recipe_cfg, plot=plots)


def _curve_title(manifest: Mapping[str, Any]) -> str:
    q = manifest["quantization"]
    return f"{manifest['model']['name']} | {q['pair']} | {q['granularity']}: budget curve"


def render_plots(folder: Path, manifest: Mapping[str, Any]) -> list[Path]:
    """Draw the PNGs of a report written with ``plots=False`` into that (existing) ``folder``.

    Each PNG is drawn under a hidden temporary name and renamed into place, so a reader never sees a
    half-written image. The budget curve is drawn only when the report has its ``recipe/`` folder.
    Returns the files written.
    """
    import os

    jobs: list[tuple[Path, Any]] = [(folder / PER_LAYER_PNG, lambda path: plot_sensitivity(path, manifest))]
    if (folder / RECIPE_DIR).is_dir():
        curve = manifest.get("budget_curve") or []
        jobs.append((folder / RECIPE_DIR / RECIPE_CURVE_PNG, lambda path: plot_budget_curve(
            path, curve, _curve_title(manifest), float(manifest["autoquant"]["effective_bits"]))))
    written = []
    for target, draw in jobs:
        temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}.png")
        try:
            draw(temporary)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        written.append(target)
    return written


def write_recipe_files(folder: Path, manifest: Mapping[str, Any], recipe_cfg: Mapping[str, Any], *,
                       plot: bool = True) -> None:
    """``quant_cfg.json`` (JSON-safe, loads back into ``mtq.quantize``), ``budget_curve.json`` / ``.png``."""
    from autoquant_sweep.recipe import recipe_json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECIPE_CFG).write_text(dump_json(recipe_json(recipe_cfg)))
    curve = manifest.get("budget_curve") or []
    (folder / RECIPE_CURVE_JSON).write_text(dump_json({"recipe": manifest.get("recipe"), "curve": curve}))
    if plot:
        plot_budget_curve(folder / RECIPE_CURVE_PNG, curve, _curve_title(manifest),
                          float(manifest["autoquant"]["effective_bits"]))


def render_per_layer_files(folder: Path, manifest: Mapping[str, Any], *, plot: bool = True) -> None:
    """(Re)write the per-layer JSON / Markdown / CSV / PNG (``plot=False``: no PNG) from a manifest."""
    per_layer = {
        "model": manifest["model"]["name"],
        "quant_pair": manifest["quantization"]["pair"],
        "granularity": manifest["quantization"]["granularity"],
        "fingerprint": manifest["quantization"]["fingerprint"],
        "layers": ranked_layers(manifest["per_layer"]),
    }
    (folder / PER_LAYER_JSON).write_text(dump_json(per_layer))
    (folder / PER_LAYER_MD).write_text(render_markdown(manifest))
    write_csv(folder / PER_LAYER_CSV, manifest["per_layer"])
    if plot:
        plot_sensitivity(folder / PER_LAYER_PNG, manifest)


def regenerate_report(folder: Path) -> Path:
    """Re-render the per-layer files from an existing ``manifest.json`` (the manifest is kept as is).

    Example:
        >>> regenerate_report(Path("results/.../qwen3_tiny_wint8_aint8_small"))  # doctest: +SKIP
    """
    from autoquant_sweep.errors import UserInputError
    from autoquant_sweep.layout import write_dir_atomically

    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise UserInputError(f"report: '{folder}' has no {MANIFEST}")
    manifest = json.loads(manifest_path.read_text())
    if "quantization" not in manifest:
        raise UserInputError(f"report: '{manifest_path}' has no 'quantization' section")
    recipe_path = folder / RECIPE_DIR / RECIPE_CFG
    recipe_cfg = json.loads(recipe_path.read_text()) if recipe_path.is_file() else None  # kept, re-plotted
    return write_dir_atomically(folder, lambda staging: write_report(staging, manifest, recipe_cfg))
