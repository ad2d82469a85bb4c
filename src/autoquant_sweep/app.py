"""The Hydra task behind ``experiments/sensitivity.py``: errors become one line, objectives go back to
the sweeper."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from autoquant_sweep.errors import SensitivityResultError, UserInputError

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


def objective_value(objectives: dict[str, float], objective: str) -> float:
    """The number a sweeper minimises for ``autoquant.objective``."""
    return float(objectives[objective])


def sensitivity_task(cfg: DictConfig) -> float:
    """Run one combination; in a single run, bad input exits 2 with one line and leaves no directory."""
    from autoquant_sweep.runner import run

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        outcome = run(cfg, run_dir)
    except (UserInputError, SensitivityResultError) as exc:
        log.error("%s", exc)
        if multirun:
            raise  # the sweeper records the failed job and goes on
        _remove_run_dir(run_dir)
        print(f"autoquant-sweep: error: {exc}", file=sys.stderr)
        sys.exit(2)
    return objective_value(outcome.objectives, cfg.autoquant.objective)
