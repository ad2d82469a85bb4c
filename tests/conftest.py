"""Shared fixtures: the repo's conf tree, in-process Hydra composition, the embedded assets, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "src" / "autoquant_sweep" / "conf"
SENSITIVITY_APP = REPO / "experiments" / "sensitivity.py"
# Runs follow the working directory (paths.root_dir); tests run them in temporary folders, so the embedded
# assets are pinned to the checkout's cache: built once, reused by every test and subprocess.
os.environ.setdefault("AUTOQUANT_SWEEP_CACHE", str(REPO / ".cache" / "autoquant_sweep"))


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
