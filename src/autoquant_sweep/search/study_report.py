"""Optuna's own plots and trial table for a finished study (PNG via matplotlib, HTML via plotly)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def load_study(storage: str, study_name: str) -> Any:
    """Open an existing study (raises ``KeyError`` when it does not exist)."""
    import optuna

    return optuna.load_study(study_name=study_name, storage=storage)


def _save_png(axes_or_fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = getattr(axes_or_fig, "figure", axes_or_fig)
    if hasattr(axes_or_fig, "flat"):  # an array of axes
        fig = axes_or_fig.flat[0].figure
    fig.set_size_inches(9, 5.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_study_artifacts(study: Any, folder: Path) -> list[Path]:
    """Write history, parameter importances and (two objectives) the Pareto front, plus trials.csv.

    A plot Optuna cannot draw for this study (e.g. importances with a single completed trial) is
    skipped with a log line rather than failing the sweep.

    Example:
        >>> study = load_study("sqlite:///optuna.db", "my-study")  # doctest: +SKIP
        >>> write_study_artifacts(study, Path("out"))  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

    folder.mkdir(parents=True, exist_ok=True)
    multi = len(study.directions) > 1
    target: dict[str, Any] = {}
    if multi:
        target = {"target": lambda t: t.values[0], "target_name": "total_sensitivity"}
    plots: list[tuple[str, Callable[..., Any], Callable[..., Any], dict[str, Any]]] = [
        ("optimization_history", vis_mpl.plot_optimization_history, vis.plot_optimization_history, target),
        ("param_importances", vis_mpl.plot_param_importances, vis.plot_param_importances, target),
    ]
    if multi:
        names = {"target_names": ["total_sensitivity", "format_bits"]}
        plots.append(("pareto_front", vis_mpl.plot_pareto_front, vis.plot_pareto_front, names))
    written = []
    for name, mpl_plot, plotly_plot, kwargs in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
                _save_png(mpl_plot(study, **kwargs), folder / f"{name}.png")
            written.append(folder / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            log.info("optuna plot %s skipped: %s", name, exc)
            continue
        try:
            plotly_plot(study, **kwargs).write_html(folder / f"{name}.html", include_plotlyjs=True)
            written.append(folder / f"{name}.html")
        except ImportError:
            log.info("plotly not installed: %s.html skipped", name)
    frame = study.trials_dataframe()
    frame.to_csv(folder / "trials.csv", index=False)
    written.append(folder / "trials.csv")
    return written
