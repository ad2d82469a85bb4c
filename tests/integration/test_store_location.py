"""Where a run's MLflow store is: the working directory's ``mlflow.db`` unless ``$MLFLOW_TRACKING_URI`` says
otherwise, ``tracking.tracking_uri`` above both; the run's log names the source (real Hydra + MLflow).

Each command is a one-job sweep of a refused combination: the sweep opens its parent run and the job
records a FAILED child before any model is loaded, which is all a store location needs, at a fraction
of a computed run's cost.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ..conftest import run_in_process

pytestmark = pytest.mark.integration

REFUSED = ["-m", "quant_pair=wfp4_afp8", "quant_granularity=w_per_out_channel"]


def _children(db: Path) -> list:
    """The sweep's child runs in the store file ``db``."""
    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("sensitivity")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return [run for run in runs if "mlflow.parentRunId" in run.data.tags]


def test_store_follows_cwd_then_env_then_explicit_uri(tmp_path: Path, monkeypatch, new_mlflow_store) -> None:
    cases = {  # name -> (extra overrides, MLFLOW_TRACKING_URI or None)
        "cwd": ([], None),
        "env": ([], f"sqlite:///{tmp_path}/env-store/mlflow.db"),
        "explicit": ([f"tracking.tracking_uri=sqlite:///{tmp_path}/explicit/mlflow.db"],
                     f"sqlite:///{tmp_path}/env-store/unused.db"),
    }
    # in this interpreter, one after the other, each from a shell without a store variable of its own
    for variable in ("MLFLOW_TRACKING_URI", "AUTOQUANT_SWEEP_ROOT", "AUTOQUANT_SWEEP_ID"):
        monkeypatch.delenv(variable, raising=False)
    for store in ("cwd", "env-store", "explicit"):  # migrated stores: the runs skip the schema creation
        new_mlflow_store(tmp_path / store / "mlflow.db")
    out = {}
    for name, (overrides, env_uri) in cases.items():
        cwd = tmp_path / name
        cwd.mkdir(exist_ok=True)
        result = run_in_process([*REFUSED, *overrides], cwd=cwd,
                                env={"MLFLOW_TRACKING_URI": env_uri} if env_uri else None)
        out[name] = result.stdout + result.stderr

    # no variable, no override: the working directory's own store, nothing next to the installed code
    assert f"MLflow store: sqlite:///{tmp_path}/cwd/mlflow.db (from paths.mlflow_db)" in out["cwd"]
    [run] = _children(tmp_path / "cwd" / "mlflow.db")
    assert run.info.status == "FAILED" and run.data.tags["failure_kind"] == "refused"
    assert run.info.artifact_uri.startswith(f"file://{tmp_path}/cwd/mlruns/")

    # MLFLOW_TRACKING_URI is honoured by the default tracking=local; artifacts sit next to that store
    assert f"MLflow store: sqlite:///{tmp_path}/env-store/mlflow.db (from MLFLOW_TRACKING_URI)" in out["env"]
    [run] = _children(tmp_path / "env-store" / "mlflow.db")
    assert run.info.artifact_uri.startswith(f"file://{tmp_path}/env-store/mlruns/")
    assert not (tmp_path / "env" / "mlflow.db").exists()
    assert (tmp_path / "cwd" / "multirun" / "sensitivity").is_dir()  # the sweep folder follows the same root

    # an explicit tracking.tracking_uri beats the variable
    explicit = f"MLflow store: sqlite:///{tmp_path}/explicit/mlflow.db (from tracking.tracking_uri)"
    assert explicit in out["explicit"]
    assert len(_children(tmp_path / "explicit" / "mlflow.db")) == 1
    assert not (tmp_path / "env-store" / "unused.db").exists()
