"""The Hydra task behind ``experiments/sensitivity.py``: one job of the pipeline, errors as one line.

The job itself is :func:`autoquant_sweep.pipeline.run_job` (plan -> lookup -> compute -> write ->
record). This module adds what only Hydra knows: whether the job belongs to a sweep (``-m``), the sweep's
MLflow parent run, the signal handlers, the worker's GPU. In a single run, bad input or a refused
combination is one line on stderr and exit status 2, with no run directory and no MLflow run; in a sweep
the error goes to the sweeper (a FAILED trial, recorded as a FAILED child run). The objective value(s)
go back to the sweeper.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from autoquant_sweep.errors import (
    CapabilityRefusedError,
    DiskFullError,
    OneLineExit,
    SensitivityResultError,
    UserInputError,
)
from autoquant_sweep.search.progress import write_outcome

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


def _quiet_log_write_errors() -> None:
    """A log file that cannot be written (a full disk) is one warning line per file, not Python's
    "--- Logging error ---" traceback for every record (a sweep printed a thousand lines)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and not getattr(handler, "_aqs_quiet", False):
            def handle_error(record: logging.LogRecord, handler: logging.FileHandler = handler) -> None:
                if not getattr(handler, "_aqs_warned", False):
                    handler._aqs_warned = True  # type: ignore[attr-defined]
                    error = sys.exc_info()[1]
                    print(f"autoquant-sweep: warning: cannot write log file '{handler.baseFilename}' "
                          f"({getattr(error, 'strerror', None) or error}); later records of it are lost",
                          file=sys.stderr)
            handler.handleError = handle_error  # type: ignore[method-assign]
            handler._aqs_quiet = True  # type: ignore[attr-defined]


def _in_multirun() -> bool:
    """Whether this job belongs to a sweep (a single run never hangs under an inherited parent id)."""
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # outside Hydra (library use): the caller's environment decides
        return True


def _parent_run_id() -> str | None:
    """The sweep's MLflow parent run: the id file in this sweep's own folder, else the environment.

    The file is preferred: a reused launcher worker (joblib/loky) may carry the variable of an earlier
    sweep, while the sweep dir is this sweep process's own (``${aqs_sweep_id:}``).
    """
    from autoquant_sweep.tracking.callbacks import read_parent_run_id
    from autoquant_sweep.tracking.store import PARENT_RUN_ENV

    if not _in_multirun():
        return None
    try:
        from_file = read_parent_run_id(Path(str(HydraConfig.get().sweep.dir)))
    except ValueError:  # outside Hydra: the caller's environment
        from_file = None
    return from_file or os.environ.get(PARENT_RUN_ENV) or None


def tracked_run(cfg: DictConfig, run_dir: Path | None) -> Any:
    """:func:`~autoquant_sweep.pipeline.run_job` under this job's parent run; in a sweep (or outside Hydra)
    a failed plan is recorded as a FAILED run, in a single run it creates none.

    Returns the :class:`~autoquant_sweep.pipeline.RunOutcome`.
    """
    from autoquant_sweep.pipeline import run_job

    return run_job(cfg, run_dir, parent_run_id=_parent_run_id(), record_plan_failures=_in_multirun())


def sensitivity_task(cfg: DictConfig) -> float | list[float]:
    """Run one combination; in a single run, bad input exits 2 with one line and leaves no directory."""
    from autoquant_sweep.devices import assign_worker_gpu
    from autoquant_sweep.faults import check_stop, install_signal_handlers
    from autoquant_sweep.objectives import objective_result

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    install_signal_handlers()  # SIGTERM: the MLflow run ends KILLED, finally blocks run
    check_stop()  # a stop that arrived during the previous job (and was swallowed there) ends the sweep
    assign_worker_gpu(cfg, hydra_cfg)
    _quiet_log_write_errors()
    label = f"{cfg.quant_pair.name} x {cfg.quant_granularity.name}"
    try:
        outcome = tracked_run(cfg, run_dir)
    except DiskFullError as exc:  # every next trial would fail the same way: the sweep stops here
        log.error("%s", exc)
        print(f"autoquant-sweep: error: {exc}", file=sys.stderr)
        if multirun:
            raise OneLineExit(str(exc)) from exc
        _remove_run_dir(run_dir)
        sys.exit(2)
    except (UserInputError, SensitivityResultError) as exc:
        log.error("%s", exc)
        if multirun:
            kind = "refused" if isinstance(exc, CapabilityRefusedError) else "failed"
            write_outcome(run_dir, kind, label=label, reason=str(exc))
            raise  # the sweeper records the failed job and goes on
        _remove_run_dir(run_dir)
        print(f"autoquant-sweep: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        if multirun:
            write_outcome(run_dir, "failed", label=label, reason=str(exc))
        raise
    result = objective_result(outcome.objectives, cfg.autoquant.objective)
    if multirun:  # what the study's progress display (search.progress.StudyProgressCallback) shows
        kind = "no-op" if outcome.plan.overlay_status == "noop" else "cache hit" if outcome.cache_hit \
            else "computed"
        first = result[0] if isinstance(result, list) else result
        write_outcome(run_dir, kind, label=label, value=float(first))
    return result
