"""A stop while a trial's MLflow run is being created (issue 17, item 7): one run per trial, created with
its owner in the same write, never left RUNNING; and the next sweep's cleanup of RUNNING runs of a sweep
that ended, owner tag or not. Real MLflow (SQLite, temp dir)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from autoquant_sweep import faults
from autoquant_sweep.tracking.run_logging import start_run
from tests.conftest import ONE_TRIAL_SWEEP, start_app, stop_when

# signal timing: deadlines scale with AUTOQUANT_SWEEP_TEST_TIMEOUT_SCALE; select them alone with -m signals
pytestmark = [pytest.mark.integration, pytest.mark.signals]

CFG = {"quant_pair": {"name": "wint8_aint8"}, "quant_granularity": {"name": "default"},
       "dataset": {"size": "small"}}


def _client(tmp: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_a_run_is_created_with_its_owner_in_one_write(tmp_path, new_mlflow_store):
    new_mlflow_store(tmp_path / "mlflow.db")  # a migrated empty store: the client skips schema creation
    client = _client(tmp_path)
    experiment = client.create_experiment("sensitivity", artifact_location=(tmp_path / "mlruns").as_uri())
    run = start_run(client, experiment, CFG, None, owner="node-a:123")
    assert run.data.tags[faults.OWNER_TAG] == "node-a:123"  # in the create_run answer: the same write
    assert client.get_run(run.info.run_id).data.tags[faults.OWNER_TAG] == "node-a:123"


def test_ownerless_running_children_of_an_ended_sweep_are_killed(tmp_path, new_mlflow_store):
    new_mlflow_store(tmp_path / "mlflow.db")
    client = _client(tmp_path)
    experiment = client.create_experiment("sensitivity", artifact_location=(tmp_path / "mlruns").as_uri())
    ended = client.create_run(experiment, tags={faults.OWNER_TAG: "elsewhere:1", "sweep": "true"})
    client.set_terminated(ended.info.run_id, "KILLED")  # the sweep ended (its stop handler closed it)
    orphan = client.create_run(experiment, tags={"mlflow.parentRunId": ended.info.run_id})  # no owner tag
    live = client.create_run(experiment, tags={faults.OWNER_TAG: faults.owner(), "sweep": "true"})
    running_child = client.create_run(experiment, tags={"mlflow.parentRunId": live.info.run_id})
    killed = faults.kill_stale_runs(client, experiment)
    assert killed == [orphan.info.run_id]
    orphan_run = client.get_run(orphan.info.run_id)
    assert orphan_run.info.status == "KILLED"
    assert orphan_run.data.tags["failure_reason"].startswith("killed: owner process of the parent sweep died")
    assert client.get_run(running_child.info.run_id).info.status == "RUNNING"  # its sweep is alive


CHILD_ROWS = ("SELECT count(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
              "AND t.key = 'mlflow.parentRunId'")


def _child_row_appeared(db: Path) -> bool:
    try:
        return db.exists() and bool(
            sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(CHILD_ROWS).fetchone()[0])
    except sqlite3.OperationalError:  # the schema is still being created
        return False


def test_ctrl_c_the_moment_the_childs_row_appears_leaves_one_killed_run(tmp_path, embedded):
    proc = start_app(ONE_TRIAL_SWEEP, tmp_path, stdout=subprocess.DEVNULL)
    # polled every 2 ms: the signal must land while the run is being created
    _, stderr = stop_when(proc, lambda: _child_row_appeared(tmp_path / "mlflow.db"), signal.SIGINT,
                          "no child run appeared", poll=0.002)
    assert proc.returncode == 130, (proc.returncode, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    client = _client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("sensitivity").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert [c.info.status for c in children] == ["KILLED"], [(c.info.status, c.data.tags) for c in children]
    assert children[0].data.tags[faults.OWNER_TAG] == children[0].data.tags[faults.OWNER_TAG].strip()
    assert not [r for r in runs if r.info.status == "RUNNING"]
