"""Hydra callback grouping a multirun under one MLflow parent run (``hydra.callbacks.mlflow_sweep``).

``on_multirun_start`` opens the parent run and exports its id in ``AUTOQUANT_SWEEP_PARENT_RUN_ID``, so
every job (in-process or in a forked / spawned launcher worker) tags its run ``mlflow.parentRunId``.
``on_multirun_end`` writes the summary (CSV, Markdown, heatmap) to the parent, updates the registry and
closes the parent run. With ``tracking=off`` the callback does nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("autoquant_sweep.tracking")


def _task_container(config: DictConfig) -> dict[str, Any]:
    keys = ("experiment", "tracking", "autoquant", "model", "dataset")
    return {k: OmegaConf.to_container(config[k], resolve=True) if OmegaConf.is_config(config[k])
            else config[k] for k in keys if k in config}


class MlflowSweepCallback(Callback):
    """One MLflow parent run per multirun; summary and registry update at its end."""

    def __init__(self) -> None:
        self.client: Any = None
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self.settings: Any = None
        self.container: dict[str, Any] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from autoquant_sweep.tracking.store import PARENT_RUN_ENV, settings_from_cfg

        self.container = _task_container(config)
        self.settings = settings_from_cfg(self.container)
        if not self.settings.enabled:
            log.info("tracking=off: no MLflow parent run for this multirun")
            return
        from autoquant_sweep.errors import UserInputError
        from autoquant_sweep.tracking.store import connect, ensure_experiment

        try:
            self.client = connect(self.settings)
        except UserInputError as exc:  # one line, like a single run, instead of a traceback
            log.error("%s", exc)
            print(f"autoquant-sweep: error: {exc}", file=sys.stderr)
            sys.exit(2)
        self.experiment_id = ensure_experiment(self.client, self.settings)
        overrides = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
        name = f"sweep-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            "mlflow.runName": name,
            "sweep": "true",
            "sweep_dir": str(OmegaConf.select(config, "hydra.sweep.dir", default="")),
            "sweeper": str(OmegaConf.select(config, "hydra.sweeper._target_", default="")),
            "launcher": str(OmegaConf.select(config, "hydra.launcher._target_", default="")),
        })
        self.parent_run_id = run.info.run_id
        self.client.log_param(self.parent_run_id, "overrides", " ".join(map(str, overrides))[:6000])
        self.client.log_param(self.parent_run_id, "objective", self.container["autoquant"]["objective"])
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        log.info("MLflow parent run %s (experiment '%s')", self.parent_run_id, self.settings.experiment_name)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from autoquant_sweep.tracking.store import PARENT_RUN_ENV

        if self.client is None or self.parent_run_id is None:
            return
        os.environ.pop(PARENT_RUN_ENV, None)
        status = "FINISHED"
        try:
            self._summarise()
        except Exception as exc:  # the sweep's results stay in MLflow; say why the summary is missing
            status = "FAILED"
            log.error("sweep summary / registry update failed: %s", exc)
            self.client.set_tag(self.parent_run_id, "failure_reason", str(exc).splitlines()[0][:4900])
        finally:
            self.client.set_terminated(self.parent_run_id, status)

    def _summarise(self) -> None:
        from autoquant_sweep.tracking.registry import register_best
        from autoquant_sweep.tracking.summary import child_rows, write_summary

        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'",
            max_results=5000,
        )
        rows = child_rows(runs)
        objective = self.container["autoquant"]["objective"]
        title = f"{self.container.get('experiment')} sweep {self.parent_run_id[:8]}: {objective}"
        with tempfile.TemporaryDirectory(prefix="aqs-summary-") as tmp:
            write_summary(Path(tmp), rows, objective, title)
            self.client.log_artifacts(self.parent_run_id, tmp, "summary")
        finished = [r for r in rows if r["status"] == "FINISHED"]
        self.client.log_metric(self.parent_run_id, "children", float(len(rows)))
        self.client.log_metric(self.parent_run_id, "children_finished", float(len(finished)))
        self.client.log_metric(self.parent_run_id, "children_cache_hits",
                               float(sum(r["cache_hit"] == "true" for r in rows)))
        if not self.settings.registry:
            return
        result = register_best(self.client, rows, objective)
        if result is not None:
            self.client.log_metric(self.parent_run_id, f"best_{objective}", result["value"])
            self.client.set_tag(self.parent_run_id, "registered_model", result["name"])
            self.client.set_tag(self.parent_run_id, "registered_version", str(result["version"]))
            self.client.set_tag(self.parent_run_id, "best_run_id", result["run_id"])
            self.client.set_tag(self.parent_run_id, "best_alias_moved", str(result["alias_moved"]).lower())
