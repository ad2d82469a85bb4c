"""Plots and trial table of a finished Optuna study, for the sweep's MLflow parent run (``optuna/``).

* ``optimization_history.png``: every trial on a log axis named after the objective, coloured by
  ``quant_pair`` and labelled with its granularity, the best-so-far line, failed / refused trials marked;
* ``param_importances.png`` and, for two objectives, ``pareto_front.png`` (Optuna's matplotlib plots);
* ``trials.csv``: Optuna's trial table plus ``run_id`` / ``run_name`` / ``parent_run_id``, the MLflow child
  run of each trial (see :func:`link_trials_to_runs`, :func:`stamp_trial_job`).

PNG only (Optuna's matplotlib backend): its plotly HTML would embed the whole plotly.js (4.6 MB per plot).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autoquant_sweep.figures import FIGURE_SAVE
from autoquant_sweep.objectives import OBJECTIVES

log = logging.getLogger(__name__)

#: Optuna trial user attrs naming the job a trial ran as: the sweep's MLflow parent run and the Hydra job
#: number (the job's run has the same parent and the tag ``run_logging.JOB_NUM_TAG``)
TRIAL_PARENT_ATTR = "aqs_parent_run_id"
TRIAL_JOB_ATTR = "aqs_job_num"


def load_study(storage: str, study_name: str) -> Any:
    """Open an existing study (raises ``KeyError`` when it does not exist)."""
    import optuna

    return optuna.load_study(study_name=study_name, storage=storage)


def objective_names(study: Any) -> list[str]:
    """The objective name(s) of a study: its metric names, else the tail of the project's study name
    (``<experiment>-<model>-<dataset>-<size>-<objective>``), else ``objective``.
    """
    names = getattr(study, "metric_names", None)
    if names:
        return list(names)
    if len(study.directions) > 1:
        return ["total_sensitivity", "format_bits"]
    tail = str(getattr(study, "study_name", "")).rsplit("-", 1)[-1]
    return [tail if tail in OBJECTIVES else "objective"]


def _save_png(axes_or_fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = getattr(axes_or_fig, "figure", axes_or_fig)
    if hasattr(axes_or_fig, "flat"):  # an array of axes
        fig = axes_or_fig.flat[0].figure
    fig.set_size_inches(9, 5.5)
    fig.tight_layout()
    fig.savefig(path, **FIGURE_SAVE)
    plt.close(fig)


def _ms(value: Any) -> float | None:
    return value.timestamp() * 1000.0 if value is not None else None


def stamp_trial_job(trial: Any) -> None:
    """Stamp a just-asked trial with the sweep's parent run and the Hydra job number it will run as.

    The Optuna plugin launches a sweep's trials as jobs 0, 1, 2, ... in the order it asks for them, so the
    job number is the count of this sweep's trials asked before this one. Nothing is stamped outside a
    tracked sweep (no parent run).
    """
    from autoquant_sweep.tracking.store import PARENT_RUN_ENV

    parent = os.environ.get(PARENT_RUN_ENV)
    if not parent:
        return
    asked = trial.study.get_trials(deepcopy=False)
    job = sum(1 for t in asked if t.user_attrs.get(TRIAL_PARENT_ATTR) == parent)
    trial.set_user_attr(TRIAL_PARENT_ATTR, parent)
    trial.set_user_attr(TRIAL_JOB_ATTR, job)


def link_trials_to_runs(trials: Sequence[Any], runs: Sequence[Any]) -> dict[int, Any]:
    """Trial number -> the MLflow run of its job: the run under the trial's parent run
    (:data:`TRIAL_PARENT_ATTR`) whose Hydra job number (tag ``JOB_NUM_TAG``) is the trial's
    (:data:`TRIAL_JOB_ATTR`, :func:`stamp_trial_job`). Trials of untracked sweeps link to nothing."""
    from autoquant_sweep.tracking.run_logging import JOB_NUM_TAG

    by_job = {(r.data.tags.get("mlflow.parentRunId"), r.data.tags.get(JOB_NUM_TAG)): r for r in runs}
    out: dict[int, Any] = {}
    for trial in trials:
        key = (trial.user_attrs.get(TRIAL_PARENT_ATTR), str(trial.user_attrs.get(TRIAL_JOB_ATTR)))
        if key in by_job:
            out[trial.number] = by_job[key]
    return out


def mlflow_runs_for(study: Any, client: Any = None) -> list[Any]:
    """The child runs of every sweep parent the study's trials name (:data:`TRIAL_PARENT_ATTR`), from the
    current store (any experiment)."""
    parents = sorted({p for t in study.trials if (p := t.user_attrs.get(TRIAL_PARENT_ATTR))})
    if not parents:
        return []
    try:
        if client is None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient()
        experiments = [e.experiment_id for e in client.search_experiments()]
        if not experiments:
            return []
        return [run for parent in parents for run in client.search_runs(
            experiments, f"tags.mlflow.parentRunId = '{parent}'", max_results=5000)]
    except Exception as exc:  # the table is still useful without run ids
        log.info("trials.csv: no MLflow runs to link (%s)", exc)
        return []


def _short(name: str) -> str:
    from autoquant_sweep.config.groups import short_granularity

    return short_granularity(name)


def plot_history(study: Any, path: Path, objective: str) -> None:
    """Objective per trial on a log axis (when positive), coloured by pair, labelled by granularity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    multi = len(study.directions) > 1
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    value = (lambda t: t.values[0]) if multi else (lambda t: t.value)
    done = [t for t in done if value(t) is not None and math.isfinite(value(t))]
    if not done:
        raise ValueError("no completed trial with a finite value")
    others = [t for t in study.trials if t not in done and t.state != optuna.trial.TrialState.RUNNING]
    pairs = sorted({str(t.params.get("quant_pair", "?")) for t in study.trials})
    colours = {p: matplotlib.colormaps["tab10"](i % 10) for i, p in enumerate(pairs)}
    fig, ax = plt.subplots(figsize=(9, 5.5))
    positive = all(value(t) > 0 for t in done)
    for pair in pairs:
        mine = [t for t in done if str(t.params.get("quant_pair", "?")) == pair]
        if mine:
            ax.scatter([t.number for t in mine], [value(t) for t in mine], color=colours[pair], s=36,
                       label=pair, zorder=3, edgecolors="black", linewidths=0.4)
    if len(study.trials) <= 60:
        for t in done:
            ax.annotate(_short(str(t.params.get("quant_granularity", ""))), (t.number, value(t)),
                        textcoords="offset points", xytext=(4, 3), fontsize=7, color="0.25")
    best_x, best_y, current = [], [], math.inf
    for t in sorted(done, key=lambda t: t.number):
        current = min(current, value(t))
        best_x.append(t.number)
        best_y.append(current)
    ax.step(best_x, best_y, where="post", color="red", lw=1.2, label="best so far", zorder=2)
    best = min(done, key=value)
    ax.annotate(f"best: {best.params.get('quant_pair')} / {best.params.get('quant_granularity')}\n"
                f"{objective} = {value(best):.3e} (trial {best.number})", (best.number, value(best)),
                textcoords="axes fraction", xytext=(0.98, 0.14), ha="right", fontsize=8, color="red",
                arrowprops={"arrowstyle": "->", "color": "red", "lw": 0.8})
    if others:
        ax.scatter([t.number for t in others], [0.97] * len(others), marker="x", color="0.4",
                   transform=ax.get_xaxis_transform(), label="failed / refused (no value)", zorder=3)
    if positive:
        ax.set_yscale("log")
    ax.margins(x=0.08)  # room for the last point's label
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"{objective} ({'log scale, ' if positive else ''}lower is better)")
    ax.set_title(f"Optuna study {study.study_name}: {len(study.trials)} trials", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="quant_pair", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, **FIGURE_SAVE)
    plt.close(fig)


def trials_frame(study: Any, runs_by_trial: Mapping[int, Any]) -> Any:
    """Optuna's trial table with the MLflow ``run_id``, ``run_name`` and ``parent_run_id`` of each trial."""
    frame = study.trials_dataframe()
    numbers = list(frame["number"]) if "number" in frame else []

    def col(get: Callable[[Any], str]) -> list[str]:
        return [get(runs_by_trial[n]) if n in runs_by_trial else "" for n in numbers]

    frame.insert(1, "run_id", col(lambda r: r.info.run_id))
    frame.insert(2, "run_name", col(lambda r: r.info.run_name or ""))
    frame.insert(3, "parent_run_id", col(lambda r: r.data.tags.get("mlflow.parentRunId", "")))
    return frame


def write_study_artifacts(study: Any, folder: Path, *, runs: Sequence[Any] | None = None) -> list[Path]:
    """Write history, parameter importances and (two objectives) the Pareto front, plus trials.csv.

    ``runs``: the MLflow runs to link trials to (default: the children of the sweeps that ran the study's
    trials, from the current MLflow store). A plot that cannot be drawn for this study (e.g. importances
    with a single completed trial) is skipped with a log line rather than failing the sweep.

    Example:
        >>> study = load_study("sqlite:///optuna.db", "my-study")  # doctest: +SKIP
        >>> write_study_artifacts(study, Path("out"))  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as vis_mpl

    folder.mkdir(parents=True, exist_ok=True)
    names = objective_names(study)
    multi = len(study.directions) > 1
    target: dict[str, Any] = {"target_name": names[0]}
    if multi:
        target = {"target": lambda t: t.values[0], "target_name": names[0]}
    linked = link_trials_to_runs(study.trials, mlflow_runs_for(study) if runs is None else runs)
    written = []
    try:
        plot_history(study, folder / "optimization_history.png", names[0])
        written.append(folder / "optimization_history.png")
    except (ValueError, RuntimeError) as exc:
        log.info("optuna plot optimization_history skipped: %s", exc)
    plots: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
        ("param_importances", vis_mpl.plot_param_importances, target),
    ]
    if multi:
        plots.append(("pareto_front", vis_mpl.plot_pareto_front, {"target_names": names[:2]}))
    for name, plot, kwargs in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
                _save_png(plot(study, **kwargs), folder / f"{name}.png")
            written.append(folder / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            log.info("optuna plot %s skipped: %s", name, exc)
    trials_frame(study, linked).to_csv(folder / "trials.csv", index=False)
    written.append(folder / "trials.csv")
    return written
