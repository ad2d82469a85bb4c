"""One tool's store given as the other's is refused before anything is written (issue 17, item 6).

``hydra.sweeper.storage=sqlite:///.../mlflow.db`` wrote Optuna's tables into the MLflow store, and
``tracking.tracking_uri=sqlite:///.../optuna.db`` MLflow's into the study storage. Each case: one line,
exit 2, the other tool's file byte-for-byte unchanged, no run or sweep folder.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_in_process

pytestmark = pytest.mark.integration

ERROR = "autoquant-sweep: error:"
SPACE = ["quant_pair=choice(wint8_aint8)", "quant_granularity=choice(default)"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    """A real MLflow store and a real Optuna study storage, as the tools themselves create them."""
    import optuna
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("owned-stores")
    MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db").create_experiment("sensitivity")
    optuna.create_study(study_name="s", storage=f"sqlite:///{folder}/optuna.db")
    return folder


def _run(cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    """The app in this interpreter (the refusals are about stores and messages, not about a process)."""
    return run_in_process(args, cwd=cwd)


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(ERROR)]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0].removeprefix(f"{ERROR} ")


def test_an_mlflow_store_given_as_the_study_storage_is_refused(stores: Path, tmp_path: Path) -> None:
    before = _sha(stores / "mlflow.db")
    result = _run(tmp_path, ["-m", "hydra/sweeper=optuna", *SPACE,
                             f"hydra.sweeper.storage=sqlite:///{stores}/mlflow.db",
                             f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
    assert _one_line(result) == (
        f"hydra.sweeper.storage: SQLite store '{stores}/mlflow.db' is an MLflow store (tables experiments, "
        "runs), not an Optuna study storage; nothing was written. Give each tool its own file, e.g. "
        f"hydra.sweeper.storage=sqlite:///{stores}/optuna.db")
    assert _sha(stores / "mlflow.db") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no sweep folder, no store of its own


def test_a_study_storage_given_as_the_mlflow_store_is_refused(stores: Path, tmp_path: Path) -> None:
    before = _sha(stores / "optuna.db")
    result = _run(tmp_path, [f"tracking.tracking_uri=sqlite:///{stores}/optuna.db"])
    assert _one_line(result) == (
        f"tracking.tracking_uri: SQLite store '{stores}/optuna.db' is an Optuna study storage (tables "
        "studies, trials), not an MLflow store; nothing was written. Give each tool its own file, e.g. "
        f"tracking.tracking_uri=sqlite:///{stores}/mlflow.db")
    assert _sha(stores / "optuna.db") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run folder


def test_one_new_file_for_both_tools_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "stores.db"
    result = _run(tmp_path, ["-m", "hydra/sweeper=optuna", *SPACE, f"hydra.sweeper.storage=sqlite:///{shared}",
                             f"tracking.tracking_uri=sqlite:///{shared}"])
    assert _one_line(result) == (
        f"hydra.sweeper.storage: '{shared}' is also the MLflow store (from tracking.tracking_uri); each tool "
        f"needs its own file: e.g. hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db")
    assert not shared.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
