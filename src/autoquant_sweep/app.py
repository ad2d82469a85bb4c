"""The Hydra task behind ``experiments/sensitivity.py``: plan, cache lookup, run, MLflow logging.

Errors become one line; objectives go back to the sweeper. With ``tracking=local|server`` every job is
an MLflow run (a child of the sweep's parent run when ``-m`` is used, see
:mod:`autoquant_sweep.tracking.callbacks`); a FINISHED run with the same fingerprint is reused instead
of running AutoQuant again unless ``autoquant.cache=false``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from autoquant_sweep.errors import CapabilityRefusedError, SensitivityResultError, UserInputError

log = logging.getLogger("autoquant_sweep")


def _remove_run_dir(run_dir: Path) -> None:
    """Drop a failed single run's Hydra directory and the empty parents it created."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cwd = Path.cwd().resolve()
    parent = run_dir.resolve().parent
    while parent != cwd and cwd in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent


class _Tracker:
    """The MLflow side of one job (``None`` client when tracking is off)."""

    def __init__(self, cfg: DictConfig) -> None:
        from autoquant_sweep.tracking.store import settings_from_cfg

        self.container: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        self.settings = settings_from_cfg(self.container)
        self.client: Any = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        if not self.settings.enabled:
            log.info("tracking=off: MLflow is not used for this run")
            return
        from autoquant_sweep.tracking.run_logging import start_run
        from autoquant_sweep.tracking.store import PARENT_RUN_ENV, connect, ensure_experiment

        self.client = connect(self.settings)
        self.experiment_id = ensure_experiment(self.client, self.settings)
        parent = _parent_run_id() or (os.environ.get(PARENT_RUN_ENV) if _in_multirun() else None) or None
        run = start_run(self.client, self.experiment_id, self.container, parent)
        self.run_id = run.info.run_id
        from autoquant_sweep.faults import OWNER_TAG, owner

        self.client.set_tag(self.run_id, OWNER_TAG, owner())  # lets a later sweep clean up after a SIGKILL
        log.info("MLflow run %s in experiment '%s' (%s)", self.run_id, self.settings.experiment_name,
                 self.settings.tracking_uri)

    def fail(self, exc: BaseException) -> None:
        if self.client is None or self.run_id is None:
            return
        from autoquant_sweep.faults import interrupted, stop_text
        from autoquant_sweep.tracking.run_logging import log_failure

        if interrupted(exc):  # stopped from outside (SIGTERM, Ctrl-C): KILLED, not FAILED
            try:
                self.client.set_tag(self.run_id, "failure_reason", stop_text(exc))
                self.client.set_tag(self.run_id, "failure_kind", "killed")
                self.client.set_terminated(self.run_id, "KILLED")
            except Exception as log_exc:
                log.warning("could not mark MLflow run %s KILLED: %s", self.run_id, log_exc)
            return
        kind = "refused" if isinstance(exc, CapabilityRefusedError) else (
            "input_error" if isinstance(exc, UserInputError) else "error")
        text = str(exc) or type(exc).__name__
        try:
            log_failure(self.client, self.run_id, self.container, text, kind)
        except Exception as log_exc:  # never hide the run's own error behind a logging error
            log.warning("could not mark MLflow run %s FAILED: %s", self.run_id, log_exc)


def _in_multirun() -> bool:
    """Whether this job belongs to a sweep (a single run never hangs under an inherited parent id)."""
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # outside Hydra (library use): the caller's environment decides
        return True


def _parent_run_id() -> str | None:
    """The sweep's MLflow parent run, from the file the sweep callback writes into the sweep dir.

    Preferred over the environment variable: a reused launcher worker (joblib/loky) may carry the
    variable of an earlier sweep. The sweep dir is this sweep process's own (``${aqs_sweep_id:}``), so
    a job never reads the parent of another sweep started at the same time.
    """
    from autoquant_sweep.tracking.callbacks import PARENT_RUN_FILE

    try:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return None
        path = Path(hydra_cfg.sweep.dir) / PARENT_RUN_FILE
        if not path.is_file():
            return None
        return path.read_text().strip() or None
    except (ValueError, OSError):
        return None


def _execute(cfg: DictConfig, run_dir: Path | None, tracker: _Tracker) -> Any:
    from autoquant_sweep.runner import RunOutcome, execute_run, plan_run, report_destination

    plan = plan_run(cfg)
    hydra_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    if tracker.client is None:
        return execute_run(plan, run_dir)
    from autoquant_sweep.tracking.cache import find_cached_run, restore_report
    from autoquant_sweep.tracking.run_logging import log_outcome

    if tracker.container["autoquant"].get("cache", True):
        t0 = time.perf_counter()
        cached = find_cached_run(tracker.client, tracker.experiment_id, plan.fingerprint)
        if cached is not None:
            destination = report_destination(plan, run_dir)
            manifest = restore_report(tracker.client, cached.info.run_id, destination)
            log_outcome(tracker.client, tracker.run_id, tracker.container, plan, manifest, destination,
                        hydra_yaml=hydra_yaml, cache_hit=True,
                        extra_tags={"cache_source_run_id": cached.info.run_id})
            log.info("cache hit: fingerprint %s reused from MLflow run %s in %.3f s (AutoQuant skipped)"
                     " -> %s", plan.fingerprint, cached.info.run_id, time.perf_counter() - t0, destination)
            return RunOutcome(plan=plan, manifest=manifest, report_dir=destination)
        log.info("cache miss: fingerprint %s; running AutoQuant", plan.fingerprint)
    else:
        log.info("autoquant.cache=false: running AutoQuant")
    outcome = execute_run(plan, run_dir)
    log_outcome(tracker.client, tracker.run_id, tracker.container, plan, outcome.manifest, outcome.report_dir,
                hydra_yaml=hydra_yaml, cache_hit=False)
    return outcome


def tracked_run(cfg: DictConfig, run_dir: Path | None) -> Any:
    """Plan, reuse a cached result or run AutoQuant, and log the MLflow run (when tracking is on).

    Any error marks the MLflow run FAILED with a ``failure_reason`` tag and is re-raised.
    Returns the :class:`~autoquant_sweep.runner.RunOutcome`.
    """
    tracker: _Tracker | None = None
    try:
        tracker = _Tracker(cfg)
        return _execute(cfg, run_dir, tracker)
    except BaseException as exc:
        if tracker is not None:
            tracker.fail(exc)
        raise


def sensitivity_task(cfg: DictConfig) -> float | list[float]:
    """Run one combination; in a single run, bad input exits 2 with one line and leaves no directory."""
    from autoquant_sweep.devices import assign_worker_gpu
    from autoquant_sweep.faults import check_stop, install_signal_handlers

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    install_signal_handlers()  # SIGTERM: the MLflow run ends KILLED, finally blocks run
    check_stop()  # a stop that arrived during the previous job (and was swallowed there) ends the sweep
    assign_worker_gpu(cfg, hydra_cfg)
    try:
        outcome = tracked_run(cfg, run_dir)
    except (UserInputError, SensitivityResultError) as exc:
        log.error("%s", exc)
        if multirun:
            raise  # the sweeper records the failed job and goes on
        _remove_run_dir(run_dir)
        print(f"autoquant-sweep: error: {exc}", file=sys.stderr)
        sys.exit(2)
    from autoquant_sweep.runner import objective_result

    return objective_result(outcome.objectives, cfg.autoquant.objective)
