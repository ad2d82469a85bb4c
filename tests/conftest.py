"""Shared fixtures: the repo's conf tree, in-process Hydra composition, the embedded assets, the CLI."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SENSITIVITY_APP = REPO / "experiments" / "sensitivity.py"
# Runs follow the working directory (paths.root_dir); tests run them in temporary folders, so the embedded
# assets are pinned to the checkout's cache: built once, reused by every test and subprocess.
os.environ.setdefault("AUTOQUANT_SWEEP_CACHE", str(REPO / ".cache" / "autoquant_sweep"))


def shared_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder ``name``, built once per test session by ``build(folder)`` and shared by every xdist worker.

    pytest-xdist's documented lock-and-share pattern: the workers' temp roots share one parent; the first
    worker to take the lock builds, the others wait and reuse. Without xdist the folder is this session's own
    (the parent then holds earlier sessions' folders). ``COMPLETE`` marks a finished build: a build that
    failed in one worker is retried by the next, never half-used.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / name
    with FileLock(f"{folder}.lock"):
        if not (folder / "COMPLETE").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / "COMPLETE").touch()
    return folder


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, its schema created and migrated (seconds) once per session.

    Built in a child process, as the project builds a new store: no connection of this process stays open on
    the file, and MLflow's module-level store of this process is left alone."""

    def build(folder: Path) -> None:
        uri = f"sqlite:///{folder}/mlflow.db"
        opened = ("import sys; from mlflow import MlflowClient; client = MlflowClient(sys.argv[1], "
                  "sys.argv[1]); client.search_experiments(max_results=1); "
                  "client.search_registered_models(max_results=1)")
        subprocess.run([sys.executable, "-c", opened, uri], check=True, capture_output=True, timeout=300)

    return shared_once(tmp_path_factory, "mlflow-template", build) / "mlflow.db"


@pytest.fixture(scope="session")
def new_mlflow_store(mlflow_template: Path) -> Callable[[Path], str]:
    """``new_mlflow_store(path)``: a copy of the migrated empty store at ``path``; returns its URI. A store
    that exists is opened as is, so runs and clients pointed there skip MLflow's schema creation."""

    def _copy(path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mlflow_template, path)
        return f"sqlite:///{path}"

    return _copy


@pytest.fixture(scope="session")
def embedded():
    """The embedded tiny checkpoints and captions (built once into the project cache, then reused)."""
    from autoquant_sweep.embedded import ensure_embedded_assets

    return ensure_embedded_assets(verbose=False)


@pytest.fixture
def compose_cfg() -> Callable[..., object]:
    """Compose ``conf/sensitivity.yaml`` in-process, as Hydra would (tracking off unless overridden)."""
    from hydra import compose, initialize_config_dir

    from autoquant_sweep.config import register_configs

    register_configs()

    def _compose(overrides: Sequence[str] = ()) -> object:
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            return compose("sensitivity", overrides=["tracking=off", *overrides])

    return _compose


def study_name(overrides: Sequence[str] = (), space: Sequence[str] = ()) -> str:
    """The Optuna study name of ``-m hydra/sweeper=optuna *overrides *space`` (``space``: the sweep
    overrides, e.g. ``quant_pair=choice(a,b)``), resolved by the conf's own ``hydra.sweeper.study_name``."""
    return _study_name(tuple(overrides), tuple(space))


@functools.cache  # a compose costs ~0.3 s; the identity tests ask for the same baseline name many times
def _study_name(overrides: tuple[str, ...], space: tuple[str, ...]) -> str:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from autoquant_sweep.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("sensitivity", overrides=["hydra/sweeper=optuna", *overrides], return_hydra_config=True)
    with open_dict(cfg):  # compose() takes no sweep overrides: they reach the name as a sweep's would
        cfg.hydra.overrides.task = [*overrides, *space]
    return str(OmegaConf.select(cfg, "hydra.sweeper.study_name"))


def run_app(
    args: Sequence[str],
    cwd: Path,
    timeout: int = 300,
    env: dict | None = None,
    script: Path = SENSITIVITY_APP,
) -> subprocess.CompletedProcess:
    """Run ``experiments/sensitivity.py`` (or another script) in a fresh interpreter."""
    # as from a shell: no sweep id inherited from this (pytest) process
    inherited = {k: v for k, v in os.environ.items() if k != "AUTOQUANT_SWEEP_ID"}
    full_env = {**inherited, "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
