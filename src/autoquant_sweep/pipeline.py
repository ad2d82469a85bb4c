"""One run, as data flows: plan -> lookup -> compute -> write -> record (docs/architecture.md).

:func:`run_job` is the orchestrator; each stage is a call into the module that owns it and returns data
to it, never calling back up:

========  ================================================  =============================================
stage     what                                              owner
========  ================================================  =============================================
plan      everything checkable without a model              :mod:`autoquant_sweep.plan`
lookup    result cache: a FINISHED MLflow run with the      :mod:`autoquant_sweep.tracking.cache`
          same run fingerprint
compute   load, tokenise, AutoQuant, recipe + budget        :mod:`autoquant_sweep.compute`
          curve, held-out evaluation
write     manifest and report files, atomically             :mod:`autoquant_sweep.manifest`,
                                                            :mod:`autoquant_sweep.report`
record    the MLflow run: params, metrics, artifacts, tags  :mod:`autoquant_sweep.tracking.run_logging`
========  ================================================  =============================================

MLflow is imported only once the plan has passed (lookup). The job's MLflow run (dated from the job's
start) is opened ``RUNNING`` just before compute (so a long trial shows in the UI, and one killed with
SIGKILL is found and marked ``KILLED`` by the next sweep) and filled in after the report is written; a
cache hit opens and fills it after its report is restored. A job that fails or is stopped after the
plan ends ``FAILED`` / ``KILLED`` with its reason. A plan failure is recorded as a ``FAILED`` run only
when ``record_plan_failures`` (a sweep's trial must leave its reason in MLflow); a refused single run
creates no run at all.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from autoquant_sweep.compute import MODEL_CACHE, ModelCache, compute
from autoquant_sweep.errors import CapabilityRefusedError, DiskFullError, UserInputError, disk_full
from autoquant_sweep.plan import RunPlan, plan_run, report_destination

log = logging.getLogger("autoquant_sweep")


@dataclass
class RunOutcome:
    """A finished run: where its report is and what it measured."""

    plan: RunPlan
    manifest: dict[str, Any]
    report_dir: Path
    run_id: str | None = None  # its MLflow run (None: tracking=off or no MLflow)
    cache_hit: bool = False
    cache_source_run_id: str | None = None  # the run a cache hit reused

    @property
    def objectives(self) -> dict[str, float]:
        return self.manifest["objectives"]


# --------------------------------------------------------------------------------------------- write


def write_report_atomically(destination: Path, manifest: dict[str, Any], recipe_quant_cfg: dict, *,
                            plots: bool = True, scoring: dict[str, Any] | None = None) -> None:
    """The write stage: manifest, per-layer files, recipe and budget curve into ``destination``, whole or
    not at all (staging folder renamed into place). ``plots=False``: without the two PNGs
    (:class:`DeferredPlots` draws them after the sweep's last trial). ``scoring``: the trial's scoring
    record, ``recipe/scoring.json`` (:mod:`autoquant_sweep.scoring`)."""
    from autoquant_sweep.layout import write_dir_atomically
    from autoquant_sweep.report import RECIPE_DIR, write_report
    from autoquant_sweep.scoring import write_record

    def write(folder: Path) -> None:
        write_report(folder, manifest, recipe_quant_cfg, plots=plots)
        if scoring is not None:
            write_record(folder / RECIPE_DIR, scoring)

    write_dir_atomically(destination, write)
    log.info("report -> %s", destination)


def _compute_and_write(plan: RunPlan, destination: Path, cache: ModelCache, *, plots: bool = True
                       ) -> RunOutcome:
    from autoquant_sweep.manifest import build_manifest

    computed = compute(plan, cache)
    manifest = build_manifest(plan, computed)
    write_report_atomically(destination, manifest, computed.recipe.quant_cfg, plots=plots,
                            scoring=computed.scoring)
    return RunOutcome(plan=plan, manifest=manifest, report_dir=destination)


class DeferredPlots:
    """A sweep's per-trial PNGs (``per_layer.png``, ``recipe/budget_curve.png``), drawn after its last
    trial instead of on each trial's critical path (~0.2 s of a ~1.6 s tiny-model trial on CPU; the
    next trial needs neither).

    The sweep callback switches it on in the sweep's own process (:meth:`start`) and draws at the sweep's
    end, whatever the end (:meth:`finish`). Jobs of other processes (joblib, SLURM launchers) never see it
    on and draw their PNGs inline, as single runs do. Until the end, a sweep job's report folder holds
    every file but the two PNGs; each PNG then appears whole (drawn under a hidden name, renamed).
    """

    def __init__(self) -> None:
        self.active = False
        self._pending: list[tuple[Path, dict[str, Any], Any, str | None]] = []

    def start(self) -> None:
        """Defer the PNGs of the jobs this process runs from now on."""
        self.active, self._pending = True, []

    def reset(self) -> None:
        """Stop deferring and drop what is pending, undrawn (a sweep that ended without its end)."""
        self.active, self._pending = False, []

    def add(self, report_dir: Path, manifest: dict[str, Any], client: Any = None, run_id: str | None = None
            ) -> None:
        """Draw ``report_dir``'s PNGs at the end, and log them to MLflow run ``run_id`` (when given)."""
        self._pending.append((report_dir, manifest, client, run_id))

    def finish(self) -> int:
        """Draw every pending PNG into its report folder and its MLflow run; stop deferring.

        Returns the number of reports drawn. A report whose PNGs cannot be drawn is a warning (its other
        files and results stand).
        """
        from autoquant_sweep.report import RECIPE_DIR, render_plots
        from autoquant_sweep.tracking.run_logging import REPORT_ARTIFACT_DIR

        pending, self._pending, self.active = self._pending, [], False
        t0 = time.perf_counter()
        for report_dir, manifest, client, run_id in pending:
            try:
                for path in render_plots(report_dir, manifest):
                    if client is not None and run_id is not None:
                        folder = RECIPE_DIR if path.parent.name == RECIPE_DIR else REPORT_ARTIFACT_DIR
                        client.log_artifact(run_id, str(path), folder)
            except Exception as exc:
                log.warning("could not draw the plots of %s: %s", report_dir, exc)
        if pending:
            log.info("drew the plots of %d trial reports after the last trial in %.2f s", len(pending),
                     time.perf_counter() - t0)
        return len(pending)


#: the sweep process's deferred PNGs (switched on by the sweep callback,
#: :class:`~autoquant_sweep.tracking.callbacks.MlflowSweepCallback`)
DEFERRED_PLOTS = DeferredPlots()


def _defer_plots_if_missing(outcome: RunOutcome, client: Any = None, run_id: str | None = None) -> None:
    """A deferring sweep draws a report's PNGs at its end: a computed one (written without them) and a
    cache hit whose source run, from the same sweep, has not got its PNGs yet."""
    from autoquant_sweep.report import PER_LAYER_PNG

    if DEFERRED_PLOTS.active and not (outcome.report_dir / PER_LAYER_PNG).is_file():
        DEFERRED_PLOTS.add(outcome.report_dir, outcome.manifest, client, run_id)


def run(cfg: DictConfig | dict, run_dir: Path | None = None, cache: ModelCache = MODEL_CACHE) -> RunOutcome:
    """Plan, compute and write one run, without MLflow (no lookup, no record): tests and benchmarks."""
    plan = plan_run(cfg)
    return _compute_and_write(plan, report_destination(plan, run_dir), cache)


# ----------------------------------------------------------------------------------- lookup and record


def failure_kind(exc: BaseException) -> str:
    """``refused`` / ``input_error`` / ``error``: the ``failure_kind`` tag of a failed run."""
    if isinstance(exc, CapabilityRefusedError):
        return "refused"
    return "input_error" if isinstance(exc, UserInputError) else "error"


class _Store:
    """The MLflow store of one job: connected at lookup (never before the plan passed)."""

    def __init__(self, settings: Any, parent_run_id: str | None, started: float) -> None:
        self.settings = settings
        self.parent_run_id = parent_run_id
        self.started_ms = int(started * 1000)  # the job's start (epoch ms): its run's start time
        self.client: Any = None
        self.experiment_id: str | None = None

    def connect(self) -> None:
        """Open the store and the experiment; a store that cannot be used is one line naming it."""
        from autoquant_sweep.tracking.store import connect, ensure_experiment, masked_url

        try:
            self.client = connect(self.settings)  # a damaged or unreachable store says so itself
            self.experiment_id = ensure_experiment(self.client, self.settings)
        except UserInputError:
            raise
        except Exception as exc:  # MLflow's own error: its first line, with the store it concerns
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:1000]
            raise UserInputError(f"tracking.tracking_uri: cannot open MLflow store "
                                 f"'{masked_url(str(self.settings.tracking_uri))}': {first}") from exc

    def open_run(self, c: dict[str, Any]) -> str:
        """Create the job's run (a child of the sweep's parent), tagged with its owner process: a later
        sweep can mark it KILLED if this process dies without closing it, and every run says who made it
        (a cache hit's run too: it is RUNNING while its results are logged)."""
        from autoquant_sweep.faults import owner
        from autoquant_sweep.tracking.run_logging import start_run

        # dated from the job's start, not from after the plan and the lookup: the UI shows the job's duration;
        # the owner is written with the run (one write: a stop can never leave it RUNNING without one)
        run_id = start_run(self.client, self.experiment_id, c, self.parent_run_id,
                           start_time=self.started_ms, owner=owner()).info.run_id
        log.info("MLflow run %s in experiment '%s' (%s)", run_id, self.settings.experiment_name,
                 self.settings.tracking_uri)
        return run_id

    def record_failure(self, run_id: str | None, c: dict[str, Any] | None, exc: BaseException) -> None:
        """End the job's run (created now when it has none) FAILED, or KILLED when stopped from outside.

        Never raises: the job's own error matters more than a logging error.
        """
        from autoquant_sweep.faults import interrupted, stop_text
        from autoquant_sweep.tracking.run_logging import log_failure

        try:
            if self.client is None:
                self.connect()
            if run_id is None:
                run_id = self.open_run(c) if c else self._bare_run()
            if interrupted(exc):  # SIGTERM, Ctrl-C: KILLED, not FAILED
                self.client.set_tag(run_id, "failure_reason", stop_text(exc))
                self.client.set_tag(run_id, "failure_kind", "killed")
                self.client.set_terminated(run_id, "KILLED")
                return
            log_failure(self.client, run_id, c, str(exc) or type(exc).__name__, failure_kind(exc))
        except Exception as log_exc:
            log.warning("could not record the failure in MLflow run %s: %s", run_id, log_exc)

    def drop_artifacts(self, run_id: str | None) -> None:
        """Remove a failed run's local artifact folder (the part of its report a full disk let it copy)."""
        import shutil
        from urllib.parse import unquote, urlparse

        if self.client is None or run_id is None:
            return
        try:
            uri = urlparse(self.client.get_run(run_id).info.artifact_uri)
            if uri.scheme in ("", "file"):
                shutil.rmtree(unquote(uri.path), ignore_errors=True)
        except Exception as exc:  # the failure itself matters more
            log.warning("could not remove the artifacts of failed run %s: %s", run_id, exc)

    def _bare_run(self) -> str:
        """A run for a job whose config could not even be resolved (its reason is all there is)."""
        from autoquant_sweep.faults import OWNER_TAG, owner

        tags = {OWNER_TAG: owner()}
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        return self.client.create_run(self.experiment_id, start_time=self.started_ms, tags=tags).info.run_id


def _container(cfg: DictConfig | dict) -> dict[str, Any] | None:
    """The resolved config for a failure record (None when it does not resolve)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    except Exception:
        return None


def _record_plan_failure(cfg: DictConfig | dict, exc: BaseException, parent_run_id: str | None,
                         started: float) -> None:
    from autoquant_sweep.tracking.store import settings_from_cfg

    c = _container(cfg)
    try:
        settings = settings_from_cfg(c or {})
    except UserInputError:  # the tracking settings are what failed: there is no store to record in
        return
    if settings.enabled:
        _Store(settings, parent_run_id, started).record_failure(None, c, exc)


def run_job(
    cfg: DictConfig | dict,
    run_dir: Path | None,
    *,
    parent_run_id: str | None = None,
    record_plan_failures: bool = True,
    cache: ModelCache = MODEL_CACHE,
) -> RunOutcome:
    """One job: plan -> lookup -> compute -> write -> record. Errors are re-raised after recording.

    ``run_dir``: the Hydra run / job directory (``output_layout=tmp`` puts the report there).
    ``parent_run_id``: the sweep's MLflow parent run. ``record_plan_failures``: record a plan that
    failed as a FAILED run (sweeps); False for a single run, whose refusal creates no MLflow run.
    """
    started = time.time()
    # plan (no MLflow, torch or model until the plan's last gate)
    try:
        plan = plan_run(cfg)
        destination = report_destination(plan, run_dir)
    except BaseException as exc:
        if record_plan_failures:
            _record_plan_failure(cfg, exc, parent_run_id, started)
        raise
    from autoquant_sweep.tracking.store import settings_from_cfg

    settings = settings_from_cfg(plan.cfg)
    plots = not DEFERRED_PLOTS.active
    if not settings.enabled:
        log.info("tracking=off: MLflow is not used for this run")
        outcome = _compute_and_write(plan, destination, cache, plots=plots)
        _defer_plots_if_missing(outcome)
        return outcome
    store = _Store(settings, parent_run_id, started)
    store.connect()  # a store that cannot be used is one line; nothing can be recorded in it
    run_id: str | None = None
    try:
        from autoquant_sweep.faults import signals_deferred

        outcome = _lookup(plan, destination, store)
        if outcome is None:
            with signals_deferred():  # a stop while the run is created is raised once its id is known here
                run_id = store.open_run(plan.cfg)
            why = f"cache miss: fingerprint {plan.fingerprint}" if plan.cfg["autoquant"].get("cache", True) \
                else "autoquant.cache=false"
            log.info("%s; running AutoQuant", why)  # after the run is open: tests stop the job from here
            outcome = _compute_and_write(plan, destination, cache, plots=plots)
        else:
            with signals_deferred():
                run_id = store.open_run(plan.cfg)
        hydra_yaml = OmegaConf.to_yaml(cfg, resolve=True) if isinstance(cfg, DictConfig) else None
        _record(store, run_id, plan, outcome, hydra_yaml)
        outcome.run_id = run_id
        _defer_plots_if_missing(outcome, store.client, run_id)
        return outcome
    except BaseException as exc:
        if disk_full(exc):
            # this failed run's half-copied artifacts go first: their space lets the store record FAILED
            store.drop_artifacts(run_id)
            full = exc if isinstance(exc, DiskFullError) else disk_full_error(exc, settings.tracking_uri)
            store.record_failure(run_id, plan.cfg, full)
            raise full from exc
        store.record_failure(run_id, plan.cfg, exc)
        raise


def disk_full_error(exc: BaseException, tracking_uri: str | None) -> DiskFullError:
    """One line for a write that failed on a full disk: the file it wrote (an ``OSError``'s ``filename``),
    else the MLflow store (a SQLite ``database or disk is full``).

    Example:
        >>> import errno
        >>> str(disk_full_error(OSError(errno.ENOSPC, "No space left on device", "/d/mlruns/x"), None))
        ... # doctest: +ELLIPSIS
        "'/d/mlruns/x': no space left on device (...); the run was ended FAILED: free space there, then ..."
    """
    from autoquant_sweep.tracking.store import sqlite_path

    cause: BaseException | None = exc
    path = None
    while cause is not None and path is None:
        path = getattr(cause, "filename", None) if isinstance(cause, OSError) else None
        cause = cause.__cause__ or cause.__context__
    if path is None and tracking_uri:
        path = str(sqlite_path(tracking_uri) or tracking_uri)
    first = (str(getattr(exc, "orig", None) or exc).splitlines() or [type(exc).__name__])[0][:300]
    return DiskFullError(f"'{path}': no space left on device ({first}); the run was ended FAILED: free "
                         "space there, then rerun the same command")


def _lookup(plan: RunPlan, destination: Path, store: _Store) -> RunOutcome | None:
    """The lookup stage and, on a hit, its write: the cached run's report restored into ``destination``."""
    if not plan.cfg["autoquant"].get("cache", True):
        return None
    from autoquant_sweep.tracking.cache import find_cached_run, restore_report

    t0 = time.perf_counter()
    cached = find_cached_run(store.client, store.experiment_id, plan.fingerprint)
    if cached is None:
        return None
    source = cached.info.run_id
    manifest = restore_report(store.client, source, destination)
    log.info("cache hit: fingerprint %s reused from MLflow run %s in %.3f s (AutoQuant skipped) -> %s",
             plan.fingerprint, source, time.perf_counter() - t0, destination)
    return RunOutcome(plan=plan, manifest=manifest, report_dir=destination, cache_hit=True,
                      cache_source_run_id=source)


def _record(store: _Store, run_id: str, plan: RunPlan, outcome: RunOutcome, hydra_yaml: str | None) -> None:
    """The record stage: params, metrics, tags and artifacts of the finished run, then FINISHED."""
    from autoquant_sweep.tracking.run_logging import log_outcome

    extra = {"cache_source_run_id": outcome.cache_source_run_id} if outcome.cache_source_run_id else None
    log_outcome(store.client, run_id, plan.cfg, plan, outcome.manifest, outcome.report_dir,
                hydra_yaml=hydra_yaml, cache_hit=outcome.cache_hit, extra_tags=extra)
