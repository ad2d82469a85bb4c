"""Several workers, one study: ``hydra/launcher=joblib`` with 2 processes sharing the Optuna study and the
MLflow store, on the embedded SQLite stores and (when ``.ci/run`` provides it) on PostgreSQL with an
MLflow tracking server started here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest

from tests.conftest import TIMEOUT_SCALE, run_app, study_name

pytestmark = pytest.mark.integration

NAME = "autoquant-qwen3_tiny-constrained_score"
PG_ENV = "AUTOQUANT_SWEEP_TEST_PG_URL"
SPACE = ["quant_pair=choice(wint8_aint8,wint4_aint8)", "quant_granularity=choice(default,w_group128)"]
STUDY = study_name(["dataset.size=small"], SPACE)  # the study of these sweeps


def _two_workers(n_trials: int) -> list[str]:
    return ["-m", "hydra/sweeper=optuna", "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2",
            "hydra.launcher.n_jobs=2", f"hydra.sweeper.n_trials={n_trials}", "dataset.size=small",
            "autoquant.cache=false", "autoquant.mix=false", *SPACE]  # the mix: test_mix_tracking


def _check_each_trial_once(study: optuna.Study, client, n_trials: int) -> None:
    """Every trial once in Optuna and once in MLflow (with its report), two worker processes, one alias."""
    trials = study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * n_trials
    experiment = client.get_experiment_by_name("sensitivity")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == n_trials + 1 and len(children) == n_trials
    assert all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.metrics["constrained_score"] for c in children) == pytest.approx(
        sorted(t.value for t in trials), rel=1e-12)
    assert len({c.data.tags["aqs.owner"] for c in children}) == 2  # two worker processes
    for child in children:
        files = {a.path for a in client.list_artifacts(child.info.run_id, "report")}
        assert "report/manifest.json" in files and "report/per_layer.csv" in files
    first, second = sorted(children, key=lambda r: r.info.start_time)[:2]
    assert second.info.start_time < first.info.end_time  # the two trials of a batch overlapped
    versions = client.search_model_versions(f"name='{NAME}'")
    assert len(versions) == 1
    best = client.get_model_version_by_alias(NAME, "best")
    assert best.run_id in {c.info.run_id for c in children}
    assert client.get_run(best.run_id).info.status == "FINISHED"


def test_two_joblib_workers_share_the_sqlite_study_and_mlflow_store(tmp_path, embedded, new_mlflow_store):
    from mlflow import MlflowClient

    # the sweep (and its joblib workers) are fresh interpreters: two processes at once are the point; the
    # MLflow store starts as a migrated empty one (its schema creation is not what is tested here)
    uri = new_mlflow_store(tmp_path / "mlflow.db")
    args = [*_two_workers(2), f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
            f"tracking.tracking_uri={uri}",
            f"tracking.artifact_location={tmp_path}/mlruns"]
    result = run_app(args, cwd=tmp_path, timeout=int(300 * TIMEOUT_SCALE))
    assert result.returncode == 0, result.stderr[-3000:]
    logs = result.stderr + "".join(p.read_text() for p in tmp_path.glob("multirun/**/*.log"))
    assert "database is locked" not in logs
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp_path}/optuna.db")
    _check_each_trial_once(study, MlflowClient(tracking_uri=uri, registry_uri=uri), 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _new_database(url: str, prefix: str) -> str:
    """Create a fresh database next to the one in ``url``; returns its SQLAlchemy URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.mark.skipif(not os.environ.get(PG_ENV),
                    reason=f"{PG_ENV} not set (.ci/run starts a throwaway PostgreSQL)")
def test_two_workers_on_postgresql_and_an_mlflow_server(tmp_path, embedded):
    from mlflow import MlflowClient

    pg = os.environ[PG_ENV]
    optuna_url = _new_database(pg, "optuna")
    mlflow_url = _new_database(pg, "mlflow")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", mlflow_url,
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=(tmp_path / "server.log").open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # its GenAI job runner: unused
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90 * TIMEOUT_SCALE
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        result = run_app([*_two_workers(2), f"hydra.sweeper.storage={optuna_url}", "tracking=server"],
                         cwd=tmp_path, timeout=int(300 * TIMEOUT_SCALE), env={"MLFLOW_TRACKING_URI": uri})
        assert result.returncode == 0, result.stderr[-3000:]
        study = optuna.load_study(study_name=STUDY, storage=optuna_url)
        _check_each_trial_once(study, MlflowClient(tracking_uri=uri, registry_uri=uri), 2)
        assert any(Path(tmp_path / "artifacts").rglob("manifest.json"))
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
