"""Which MLflow store a run talks to: ``off``, ``local`` (embedded SQLite + ``mlruns/``) or ``server``."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from autoquant_sweep.errors import UserInputError

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "AUTOQUANT_SWEEP_PARENT_RUN_ID"
MODES = ("off", "local", "server")
HEALTH_TIMEOUT_S = 3.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def store_root() -> Path:
    """The project root (source checkout), else the current directory."""
    from autoquant_sweep.paths import project_root

    return project_root() or Path.cwd()


def default_tracking_uri() -> str:
    """``sqlite:///<project root>/mlflow.db`` (MLflow's own default, anchored at the project root)."""
    return f"sqlite:///{store_root() / 'mlflow.db'}"


def default_artifact_location() -> str:
    """``<project root>/mlruns``."""
    return str(store_root() / "mlruns")


@dataclass(frozen=True)
class TrackingSettings:
    """A resolved ``tracking`` config group."""

    mode: str
    tracking_uri: str | None
    artifact_location: str | None
    experiment_name: str
    registry: bool

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


def settings_from_cfg(cfg: Mapping[str, Any]) -> TrackingSettings:
    """Read ``cfg.tracking`` (a resolved container or DictConfig) into :class:`TrackingSettings`."""
    t = cfg.get("tracking") or {}
    mode = str(t.get("mode") or "off")
    if mode not in MODES:
        raise UserInputError(f"tracking.mode: unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    uri = t.get("tracking_uri")
    artifacts = t.get("artifact_location")
    if mode == "local":
        uri = uri or default_tracking_uri()
        artifacts = artifacts or default_artifact_location()
    elif mode == "server" and not uri:
        raise UserInputError(
            "tracking=server: no tracking URI; export MLFLOW_TRACKING_URI=http://host:5000 "
            "or pass tracking.tracking_uri=..."
        )
    return TrackingSettings(
        mode=mode,
        tracking_uri=str(uri) if uri else None,
        artifact_location=str(artifacts) if artifacts else None,
        experiment_name=str(t.get("experiment_name") or cfg.get("experiment") or "sensitivity"),
        registry=bool(t.get("registry", True)),
    )


def check_server(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Fail fast with one line when an HTTP tracking server does not answer ``/health``."""
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status >= 400:
                raise UserInputError(f"tracking server {uri} answered HTTP {response.status} on /health")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserInputError(
            f"tracking server {uri} is unreachable ({reason}); start it, fix MLFLOW_TRACKING_URI, "
            "or use tracking=local / tracking=off"
        ) from exc


def connect(settings: TrackingSettings) -> Any:
    """Point MLflow at the store and return an ``MlflowClient`` (HTTP: health-checked, no long retries)."""
    assert settings.tracking_uri is not None
    scheme = urlparse(settings.tracking_uri).scheme
    if scheme in ("http", "https"):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        check_server(settings.tracking_uri)
    elif scheme == "sqlite":
        db = Path(settings.tracking_uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def ensure_experiment(client: Any, settings: TrackingSettings) -> str:
    """The id of experiment ``settings.experiment_name``, created with the configured artifact location."""
    experiment = client.get_experiment_by_name(settings.experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if settings.artifact_location:
        location = settings.artifact_location
        # one folder per experiment: <mlruns>/<experiment name>/<run_id>/artifacts
        folder = _UNSAFE.sub("_", settings.experiment_name)
        if "://" not in location:
            path = Path(location).expanduser().resolve() / folder
            path.mkdir(parents=True, exist_ok=True)
            location = path.as_uri()
        else:
            location = f"{location.rstrip('/')}/{folder}"
    try:
        return client.create_experiment(settings.experiment_name, artifact_location=location)
    except Exception:  # created concurrently by another job
        experiment = client.get_experiment_by_name(settings.experiment_name)
        if experiment is None:
            raise
        return experiment.experiment_id


def resolver_root() -> str:
    """Value of the ``${aqs_root:}`` OmegaConf resolver (used by ``conf/tracking/local.yaml``)."""
    return str(store_root())
