"""What a sweep recommends, drawn: the Pareto set of the budget curves and the proxy-fidelity scatter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from autoquant_sweep.figures import new_figure
from autoquant_sweep.objectives import finite
from autoquant_sweep.tracking.recommendation_analysis import pareto_front

PARETO_PNG = "pareto_curves.png"
FIDELITY_PNG = "proxy_fidelity.png"


def figures(points: Sequence[Mapping[str, Any]], fidelity: Mapping[str, Any], title: str) -> dict[str, Any]:
    """``{file name: matplotlib Figure}``: the Pareto set of the budget curves and the proxy fidelity
    scatter, each when there is something to draw."""
    out = {}
    if points:
        out[PARETO_PNG] = pareto_figure(points, title)
    if fidelity["points"]:
        out[FIDELITY_PNG] = fidelity_figure(fidelity, title)
    return out


def pareto_figure(points: Sequence[Mapping[str, Any]], title: str) -> Any:
    fig = new_figure()
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


def fidelity_figure(fidelity: Mapping[str, Any], title: str) -> Any:
    fig = new_figure(6.0, 4.2)
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
    ax.set_title(f"{title}: proxy fidelity" + (f", Spearman {rho:.3f}" if finite(rho) else ""), fontsize=9)
    ax.legend(fontsize=7)
    return fig
