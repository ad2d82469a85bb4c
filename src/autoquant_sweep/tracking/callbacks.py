"""Hydra callback grouping a multirun under one MLflow parent run (``hydra.callbacks.mlflow_sweep``).

``on_multirun_start`` first checks what would make the sweep fail after it created something
(``n_trials`` < 1, the study storage, the MLflow store, the sweep folder): each is one line on stderr and
exit status 2, with nothing created. It then opens the parent run, writes its id into this process's
own sweep folder (``.mlflow_parent_run_id``, read by the jobs) and exports it in
``AUTOQUANT_SWEEP_PARENT_RUN_ID``, so every job (in-process or in a launcher worker) of *this* sweep
process tags its run ``mlflow.parentRunId``.
``on_multirun_end`` writes the summary (CSV, Markdown, heatmap) to the parent, updates the registry and
closes the parent run FINISHED. An interrupted sweep (SIGTERM, Ctrl-C) ends KILLED and a sweep that
stopped on an error FAILED, both without a registry update; a failed summary / registry update ends the
parent FAILED and the process with one line and status 2. ``on_run_start`` checks a single run's output
folder. With ``tracking=off`` only the checks run.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from autoquant_sweep.errors import disk_full
from autoquant_sweep.objectives import primary_metric

log = logging.getLogger("autoquant_sweep.tracking")

PARENT_RUN_FILE = ".mlflow_parent_run_id"  # in the sweep dir; read by jobs in launcher workers


def _task_container(config: DictConfig) -> dict[str, Any]:
    keys = ("experiment", "tracking", "autoquant", "model", "dataset")
    return {
        k: OmegaConf.to_container(config[k], resolve=True) if OmegaConf.is_config(config[k]) else config[k]
        for k in keys
        if k in config
    }


def read_parent_run_id(sweep_dir: Path) -> str | None:
    """The parent run id this sweep process wrote into its own sweep folder (None: no file)."""
    try:
        return (sweep_dir / PARENT_RUN_FILE).read_text().strip() or None
    except OSError:
        return None


def _first_line(exc: BaseException) -> str:
    from autoquant_sweep.faults import interrupted, stop_text

    if interrupted(exc):
        return stop_text(exc)
    if isinstance(exc, SystemExit):
        return getattr(exc, "message", None) or f"exit status {exc.code} (see the error line above)"
    return (str(exc).splitlines() or [type(exc).__name__])[0][:1000]


def _check_path_names(config: DictConfig) -> None:
    """The names that become folder and log file names (``layout.PATH_NAME_KEYS``), before any is created."""
    from autoquant_sweep.layout import PATH_NAME_KEYS, check_path_names

    check_path_names({key: OmegaConf.select(config, key, default=None) for key in PATH_NAME_KEYS})


def _exit_one_line(exc: BaseException | str) -> None:
    log.error("%s", exc)
    print(f"autoquant-sweep: error: {exc}", file=sys.stderr)
    sys.exit(2)


def sweep_end_status(in_flight: BaseException | None) -> tuple[str, str | None]:
    """The parent run's status and ``failure_reason`` at the sweep's end, from the exception in flight.

    A stop from outside (SIGTERM, Ctrl-C; also one swallowed earlier) -> ``KILLED``; another exception
    (not a clean ``SystemExit``) -> ``FAILED``; none -> ``FINISHED``.
    """
    from autoquant_sweep import faults

    if in_flight is not None:
        faults.record_stop(in_flight)
    if faults.stop_requested():  # finished children are summarised, the parent ends KILLED
        return "KILLED", f"sweep stopped: {faults.stop_reason() or 'interrupted'}"
    if in_flight is not None and not (isinstance(in_flight, SystemExit) and not in_flight.code):
        return "FAILED", f"sweep stopped on an error: {_first_line(in_flight)}"
    return "FINISHED", None


class MlflowSweepCallback(Callback):
    """One MLflow parent run per multirun; summary and registry update at its end."""

    def __init__(self) -> None:
        self.client: Any = None
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self.settings: Any = None
        self.container: dict[str, Any] = {}
        self._ended = True
        self._reserve: Path | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A single run: an output folder Hydra cannot create is one line, not Hydra's traceback."""
        from autoquant_sweep.errors import UserInputError
        from autoquant_sweep.layout import ensure_output_dir

        try:
            _check_path_names(config)  # before Hydra creates the run folder and its log file from them
            run_dir = OmegaConf.select(config, "hydra.run.dir", default=None)
            if run_dir:
                ensure_output_dir(Path(str(run_dir)), "hydra.run.dir")
        except UserInputError as exc:
            _exit_one_line(exc)

    def _preflight(self, config: DictConfig) -> None:
        """What would fail after the sweep created its folder and parent run, checked before (one line)."""
        from autoquant_sweep.errors import UserInputError

        _check_path_names(config)  # the sweep folder is made of them
        sweeper = OmegaConf.select(config, "hydra.sweeper", default=None)
        if sweeper is not None and "n_trials" in sweeper:
            n_trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default=None)
            if n_trials is not None and int(n_trials) < 1:
                raise UserInputError(f"hydra.sweeper.n_trials: {n_trials} asks for no trial; pass "
                                     "hydra.sweeper.n_trials=N with N >= 1 (nothing was started)")
        if "OptunaSweeper" in str(OmegaConf.select(config, "hydra.sweeper._target_", default="")):
            from autoquant_sweep.search.sweeper import check_storage

            check_storage(OmegaConf.select(config, "hydra.sweeper.storage", default=None))

    def _check_stores_apart(self, config: DictConfig) -> None:
        """The study storage and the MLflow store given as one SQLite file: each tool would write its
        tables into the other's store (checked while neither exists yet, too)."""
        from autoquant_sweep.errors import UserInputError
        from autoquant_sweep.tracking.store import sqlite_path

        storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
        if not self.settings.enabled or not isinstance(storage, str):
            return
        study_db, mlflow_db = sqlite_path(storage), sqlite_path(str(self.settings.tracking_uri))
        if study_db is not None and mlflow_db is not None and study_db.resolve() == mlflow_db.resolve():
            raise UserInputError(
                f"hydra.sweeper.storage: '{study_db}' is also the MLflow store (from "
                f"{self.settings.source}); each tool needs its own file: e.g. "
                f"hydra.sweeper.storage=sqlite:///{study_db.parent / 'optuna.db'}")

    def _stop_if_nothing_left(self, config: DictConfig) -> None:
        """A grid study that ran every combination of its space: one line, exit 0, nothing created."""
        if "OptunaSweeper" not in str(OmegaConf.select(config, "hydra.sweeper._target_", default="")):
            return
        from autoquant_sweep.search.sweeper import grid_used_up

        line = grid_used_up(config)
        if line is not None:
            log.info("%s", line)
            print(f"autoquant-sweep: {line}", file=sys.stderr)
            sys.exit(0)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from autoquant_sweep.errors import UserInputError
        from autoquant_sweep.layout import ensure_output_dir
        from autoquant_sweep.tracking.store import connect, masked_url, reserve_space, settings_from_cfg

        try:
            self._preflight(config)
            self._stop_if_nothing_left(config)
            self.container = _task_container(config)
            self.settings = settings_from_cfg(self.container)
            self._check_stores_apart(config)
            if self.settings.enabled:
                try:
                    self.client = connect(self.settings)  # a damaged SQLite store stops here, untouched
                except UserInputError:
                    raise
                except Exception as exc:  # Hydra would only warn and run the sweep without tracking
                    uri = masked_url(str(self.settings.tracking_uri))
                    raise UserInputError(f"tracking.tracking_uri: cannot open MLflow store '{uri}': "
                                         f"{_first_line(exc)}") from exc
            sweep_dir = OmegaConf.select(config, "hydra.sweep.dir", default=None)
            if sweep_dir:
                ensure_output_dir(Path(str(sweep_dir)), "hydra.sweep.dir")
        except UserInputError as exc:  # one line, like a single run, instead of a traceback
            self.client = None
            _exit_one_line(exc)
        from autoquant_sweep.pipeline import DEFERRED_PLOTS

        DEFERRED_PLOTS.start()  # this process's trials leave their PNGs for on_multirun_end
        if not self.settings.enabled:
            log.info("tracking=off: no MLflow parent run for this multirun")
            return
        try:
            self._open_parent(config)
            self._reserve = reserve_space(self.settings.tracking_uri)
        except Exception as exc:  # Hydra would only warn and run the sweep without a parent
            if self.parent_run_id is not None:
                with contextlib.suppress(Exception):
                    self.client.set_terminated(self.parent_run_id, "FAILED")
            self._ended, self.client = True, None
            _exit_one_line(f"tracking: cannot open the sweep's MLflow parent run: {_first_line(exc)}")

    def _open_parent(self, config: DictConfig) -> None:
        from autoquant_sweep.tracking.run_logging import RUN_NAME_TAG, creation_tags
        from autoquant_sweep.tracking.store import PARENT_RUN_ENV, ensure_experiment

        self.experiment_id = ensure_experiment(self.client, self.settings)
        overrides = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
        sweep_name = Path(str(OmegaConf.select(config, "hydra.sweep.dir", default="") or "")).name
        name = f"sweep-{sweep_name or time.strftime('%Y-%m-%d_%H-%M-%S')}"
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags=creation_tags({
                RUN_NAME_TAG: name,
                "sweep": "true",
                "sweep_dir": str(OmegaConf.select(config, "hydra.sweep.dir", default="")),
                "sweeper": str(OmegaConf.select(config, "hydra.sweeper._target_", default="")),
                "launcher": str(OmegaConf.select(config, "hydra.launcher._target_", default="")),
            }),
        )
        self.parent_run_id = run.info.run_id
        self._after_parent_start(config)
        self.client.log_param(self.parent_run_id, "overrides", " ".join(map(str, overrides))[:6000])
        self.client.log_param(self.parent_run_id, "objective", self.container["autoquant"]["objective"])
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        log.info("MLflow parent run %s (experiment '%s')", self.parent_run_id, self.settings.experiment_name)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Summary, registry update and the parent's status; Hydra calls it from a ``finally``.

        The exception in flight (if any) decides (:func:`sweep_end_status`): none -> FINISHED and
        registered; SIGTERM / Ctrl-C -> KILLED, nothing registered; another error -> FAILED, nothing
        registered. Finished children are summarised in every case. A failed summary / registry update of a
        sweep that otherwise ended well is one line on stderr and exit status 2 (parent FAILED,
        ``failure_reason`` tag).
        """
        from autoquant_sweep import faults

        in_flight = sys.exc_info()[1]  # set while Hydra's ``finally`` runs for a failed / stopped sweep
        # SIGTERM / Ctrl-C during the end are recorded, not raised half-way: the end runs whole with the
        # stop's contract (KILLED, nothing registered, the stop line), then the stop exits 143 / 130
        with faults.signals_deferred():
            self._end(config, in_flight)
        if in_flight is None:  # a stop swallowed on its way here (a library's ``except``): the sweep still
            faults.check_stop()  # exits 130 / 143 as it said, never 0 after "sweep stopped ... KILLED"

    def _end(self, config: DictConfig, in_flight: BaseException | None) -> None:
        from autoquant_sweep import faults
        from autoquant_sweep.pipeline import DEFERRED_PLOTS
        from autoquant_sweep.tracking.store import PARENT_RUN_ENV, release_space
        from autoquant_sweep.tracking.summary import set_parent_description

        disk_is_full = disk_full(in_flight)
        release_space(self._reserve)  # the space the closing writes need, whatever ended the sweep
        self._reserve = None
        if not disk_is_full:  # the trials' PNGs, off their critical path (tracking on or off)
            DEFERRED_PLOTS.finish()
        if self.client is None or self.parent_run_id is None:
            if faults.stop_requested() and in_flight is None:
                print(f"autoquant-sweep: sweep stopped: {faults.stop_reason()}; nothing registered",
                      file=sys.stderr)
            return
        os.environ.pop(PARENT_RUN_ENV, None)
        self._ended = True
        status, reason = sweep_end_status(in_flight)
        if status != "FINISHED" and self.settings.registry:  # nothing is registered from it
            self.settings = dataclasses.replace(self.settings, registry=False)
        self._mix_wanted = status == "FINISHED" and bool(self.container["autoquant"].get("mix", True))
        if disk_is_full:
            # The status first, and nothing else: the summary's tables and plots would take the space
            # the status update needs (measured: the parent stayed RUNNING at some disk sizes)
            log.error("sweep summary and plots skipped: the disk is full")
            close_error = self._close_parent(status, reason)
            self._tell_outcome(status if close_error is None else "still RUNNING: it could not be closed",
                               reason, close_error, in_flight)
            return
        error = self._summary_error(config)
        if status == "FINISHED" and faults.stop_requested():  # stopped during the summary: KILLED
            status, reason = sweep_end_status(None)
        if error is not None and status == "FINISHED":
            status, reason = "FAILED", error
        try:
            # the winner first
            set_parent_description(self.client, self.parent_run_id, self.container, stopped=reason)
        except Exception as exc:  # e.g. a full disk: the parent is still closed below
            log.error("could not write the sweep's description: %s", _first_line(exc))
            error = error or f"sweep summary / registry update failed: {_first_line(exc)}"
        close_error = self._close_parent(status, reason)  # always closed, whatever failed before
        error = error or close_error
        if close_error:  # say what the store holds: the next sweep marks the parent KILLED
            status = "still RUNNING: it could not be closed"
        self._tell_outcome(status, reason, error, in_flight)

    def _summary_error(self, config: DictConfig) -> str | None:
        """Summary, registry update and Optuna plots on the parent; what went wrong, if anything (the
        sweep's results stay in MLflow either way)."""
        try:
            self._summarise()
            self._optuna_artifacts(config)
        except Exception as exc:
            error = f"sweep summary / registry update failed: {_first_line(exc)}"
            log.error("%s", error)
            return error
        return None

    def _close_parent(self, status: str, reason: str | None) -> str | None:
        """End the parent run with ``status`` (and ``failure_reason``); an error message if it could not."""
        try:
            if reason:
                self.client.set_tag(self.parent_run_id, "failure_reason", reason[:4900])
            self.client.set_terminated(self.parent_run_id, status)
        except Exception as exc:
            error = f"could not close the sweep's parent run: {_first_line(exc)}"
            log.error("%s", error)
            return error
        return None

    def _tell_outcome(self, status: str, reason: str | None, error: str | None,
                      in_flight: BaseException | None) -> None:
        """The sweep's last words: the best configuration, or why it stopped (exit 2 on its own error)."""
        if status == "FINISHED" and error is None:
            self._print_outcome()
            return
        from autoquant_sweep.faults import stop_requested

        if status == "KILLED":
            registered = (getattr(self, "_recommendation", None) or {}).get("registered")
            what = (f"stopped after version {registered['version']} of {registered['name']} was registered"
                    if registered else "nothing registered")
            print(f"autoquant-sweep: {reason}: parent run {self.parent_run_id} KILLED, {what}; "
                  "finished trials are kept (rerun the same command to continue the study)", file=sys.stderr)
        # otherwise the error in flight (or the stop, raised when the sweep's end is done) says it and exits
        if error is not None and in_flight is None and not stop_requested():
            print(f"autoquant-sweep: error: {error} (parent run {self.parent_run_id} {status}; the trials "
                  "are in MLflow and the study)", file=sys.stderr)
            sys.exit(2)

    def _after_parent_start(self, config: DictConfig) -> None:
        """Fault hooks: owner tag, parent id file for launcher workers, cleanup of dead sweeps' leftovers."""
        from autoquant_sweep import faults

        faults.install_signal_handlers()
        self.client.set_tag(self.parent_run_id, faults.OWNER_TAG, faults.owner())
        sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir", default="") or "."))
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            (sweep_dir / PARENT_RUN_FILE).write_text(str(self.parent_run_id))
        except OSError as exc:
            log.warning("could not write %s: %s", sweep_dir / PARENT_RUN_FILE, exc)
        killed = faults.kill_stale_runs(self.client, self.experiment_id)
        if killed:
            log.warning("%d MLflow run(s) of dead processes marked KILLED", len(killed))
        publish_root = OmegaConf.select(config, "output_layout.publish_root", default=None)
        if publish_root and OmegaConf.select(config, "output_layout.name", default="") == "publish":
            faults.clean_stale_staging(Path(str(publish_root)).expanduser())
        self._ended = False
        atexit.register(self._close_if_interrupted)

    def _close_if_interrupted(self) -> None:
        """At exit without ``on_multirun_end`` (SIGTERM, Ctrl-C, crash): mark the parent run KILLED."""
        if self._ended or self.client is None or self.parent_run_id is None:
            return
        self._ended = True
        from autoquant_sweep.faults import stop_reason

        try:
            self.client.set_tag(self.parent_run_id, "failure_reason",
                                f"sweep stopped before it ended: {stop_reason() or 'process exit'}")
            self.client.set_terminated(self.parent_run_id, "KILLED")
        except Exception as exc:
            log.warning("could not mark parent run %s KILLED: %s", self.parent_run_id, exc)

    def _optuna_artifacts(self, config: DictConfig) -> None:
        """Optuna's history / importances / Pareto plots and trial table on the parent run."""
        if "OptunaSweeper" not in str(OmegaConf.select(config, "hydra.sweeper._target_", default="")):
            return
        storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
        study_name = OmegaConf.select(config, "hydra.sweeper.study_name", default=None)
        if not storage or not study_name:
            log.info("optuna study kept in memory only: no study plots on the parent run")
            return
        from autoquant_sweep.search.study_report import load_study, write_study_artifacts

        study = load_study(str(storage), str(study_name))
        self.client.set_tag(self.parent_run_id, "optuna_study", str(study_name))
        self.client.set_tag(self.parent_run_id, "optuna_storage", str(storage))
        self.client.log_metric(self.parent_run_id, "optuna_trials_in_study", float(len(study.trials)))
        with tempfile.TemporaryDirectory(prefix="aqs-optuna-") as tmp:
            write_study_artifacts(study, Path(tmp))
            self.client.log_artifacts(self.parent_run_id, tmp, "optuna")

    def _print_outcome(self) -> None:
        """The last lines of a sweep: best recipe (canonical names), budget, achieved bits, predicted score,
        measured loss / perplexity increase, registry entry, best-per-budget table, proxy fidelity."""
        from autoquant_sweep.tracking.recommendation_text import outcome_lines

        print(f"\nsweep parent run: {self.parent_run_id} (experiment '{self.settings.experiment_name}')")
        mix = getattr(self, "_mix", None)
        if mix is not None:  # the study's one answer first: the per-layer mix over every format
            from autoquant_sweep.tracking.mix_run import mix_lines

            print("\n".join(mix_lines(mix)))
        result = getattr(self, "_recommendation", None)
        if result is not None:
            for line in outcome_lines(result, primary_metric(self.container["autoquant"]["objective"])):
                print(line)
        from autoquant_sweep.tracking.cli import DEFAULT_UI_PORT, ui_url

        print(f"open the MLflow UI: autoquant-sweep ui  ({ui_url('127.0.0.1', DEFAULT_UI_PORT)})")

    def _summarise(self) -> None:
        from autoquant_sweep.tracking.recommendation import summarise_sweep
        from autoquant_sweep.tracking.summary import child_rows, log_summary

        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'",
            max_results=5000,
        )
        objective = primary_metric(self.container["autoquant"]["objective"])
        rows = child_rows(runs, objective)
        title = f"{self.container.get('experiment')} sweep {self.parent_run_id[:8]}: {objective}"
        log_summary(self.client, self.parent_run_id, rows, objective, title)
        finished = [r for r in rows if r["status"] == "FINISHED"]
        self.client.log_metric(self.parent_run_id, "children", float(len(rows)))
        self.client.log_metric(self.parent_run_id, "children_finished", float(len(finished)))
        self.client.log_metric(
            self.parent_run_id, "children_cache_hits", float(sum(r["cache_hit"] == "true" for r in rows))
        )
        # best recipe per budget, proxy fidelity, Pareto set of the budget curves, registry (best + band)
        from autoquant_sweep.faults import stop_requested

        # asked right before registering: a stop that arrived during the summary registers nothing
        self._recommendation = summarise_sweep(
            self.client, self.parent_run_id, runs, rows, objective, title,
            registry=lambda: bool(self.settings.registry) and not stop_requested())
        self._mix = self._run_mix(objective) if getattr(self, "_mix_wanted", False) and not stop_requested() \
            else None

    def _run_mix(self, objective: str) -> dict[str, Any] | None:
        """The per-layer mix over every format this sweep scored (autoquant.mix; a run ``mix ...`` under
        the parent, registered after the single formats). A mix that fails is a warning: the sweep's
        own results stand."""
        from autoquant_sweep.tracking.mix_run import find_runs, run_mix

        try:
            runs = find_runs(self.client, self.experiment_id, parent_run_id=self.parent_run_id)
            return run_mix(self.client, self.experiment_id, runs, parent_run_id=self.parent_run_id,
                           objective=objective, registry=bool(self.settings.registry))
        except Exception as exc:
            log.warning("mix: could not mix this sweep's formats: %s", _first_line(exc))
            return None
