"""The tracking helpers against a real MLflow store, client and run context (each test a migrated empty
SQLite store): the store a connection reports, summary rows and logged texts, ``log_batch``'s own chunking,
the git-commit tag, a job's dated run, an unreachable server. Moved from ``tests/unit/test_tracking_unit.py``
(its pure-function tests stay there): they import MLflow and open stores, so the fast loop skips them."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from autoquant_sweep.errors import UserInputError
from autoquant_sweep.tracking.store import connect, settings_from_cfg

pytestmark = pytest.mark.integration


def test_unreachable_server_fails_fast_with_one_line() -> None:
    settings = settings_from_cfg({"experiment": "e", "tracking": {"mode": "server",
                                                                  "tracking_uri": "http://127.0.0.1:9"}})
    t0 = time.perf_counter()
    with pytest.raises(UserInputError, match="unreachable") as info:
        connect(settings)
    assert time.perf_counter() - t0 < 5 and "\n" not in str(info.value)


def test_connect_logs_where_the_store_came_from_and_leaves_the_environment_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        new_mlflow_store) -> None:
    import os

    new_mlflow_store(tmp_path / "m.db")  # migrated: the test is about the log line and the environment
    new_mlflow_store(tmp_path / "e.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    settings = settings_from_cfg({"tracking": {"mode": "local", "tracking_uri": f"sqlite:///{tmp_path}/m.db"}})
    with caplog.at_level("INFO", logger="autoquant_sweep.tracking.store"):
        connect(settings)
    assert f"MLflow store: sqlite:///{tmp_path}/m.db (from tracking.tracking_uri)" in caplog.text
    # mlflow.set_tracking_uri exports the variable; left set, the next run would read it as the user's choice
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/e.db")
    with caplog.at_level("INFO", logger="autoquant_sweep.tracking.store"):
        connect(settings_from_cfg({"tracking": {"mode": "local"}}))
    assert f"MLflow store: sqlite:///{tmp_path}/e.db (from MLFLOW_TRACKING_URI)" in caplog.text
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/e.db"


def test_summary_rows_from_mlflow_search_runs_frame_equal_rows_from_runs(tmp_path: Path,
                                                                        new_mlflow_store) -> None:
    from autoquant_sweep.tracking.store import connect
    from autoquant_sweep.tracking.summary import child_rows, search_children

    new_mlflow_store(tmp_path / "m.db")
    client = connect(settings_from_cfg({"tracking": {"mode": "local",
                                                     "tracking_uri": f"sqlite:///{tmp_path}/m.db"}}))
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "mlruns").as_uri())
    parent = client.create_run(experiment).info.run_id
    done = client.create_run(experiment, tags={"mlflow.parentRunId": parent, "cache_hit": "true"}).info.run_id
    client.log_param(done, "quant_pair", "wint8_aint8")
    client.log_param(done, "quant_granularity", "w_group64")
    client.log_metric(done, "constrained_score", 2.5e-7)
    client.set_terminated(done, "FINISHED")
    failed = client.create_run(experiment, tags={"mlflow.parentRunId": parent, "failure_kind": "refused",
                                                 "failure_reason": "fp4 | no axis"}).info.run_id
    client.set_terminated(failed, "FAILED")
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    frame = search_children(client, experiment, parent)
    assert child_rows(frame, "constrained_score") == child_rows(runs, "constrained_score") != []
    first = child_rows(frame, "constrained_score")[0]
    assert first["constrained_score"] == 2.5e-7 and first["outcome"] == "cache hit"


def test_summary_and_recommendation_logged_by_the_mlflow_client_are_their_texts(
        tmp_path: Path, new_mlflow_store) -> None:
    from autoquant_sweep.tracking.recommendation import log_artifacts
    from autoquant_sweep.tracking.recommendation_analysis import best_per_budget
    from autoquant_sweep.tracking.recommendation_text import artifact_texts
    from autoquant_sweep.tracking.summary import csv_text, heatmap_name, log_summary, markdown_text
    from tests.unit.test_summary_format import ROWS

    new_mlflow_store(tmp_path / "m.db")
    client = connect(settings_from_cfg({"tracking": {"mode": "local",
                                                     "tracking_uri": f"sqlite:///{tmp_path}/m.db"}}))
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "mlruns").as_uri())
    parent = client.create_run(experiment).info.run_id
    points = [{"run_id": "r", "quant_pair": "wint4_afp16", "granularity": "default", "budget": b,
               "predicted_score": 1e-5 / b, "achieved_effective_bits": b - 0.2, "satisfied": True,
               "evaluated": b == 10, "run_budget": 10.0, "eval_loss_delta": 0.001, "ppl_increase_pct": 0.1}
              for b in (6.0, 10.0)]
    fidelity = {"objective": "constrained_score", "spearman": math.nan, "n": 0, "points": []}
    log_summary(client, parent, ROWS, "total_sensitivity", "t")
    table = best_per_budget(points)
    log_artifacts(client, parent, table, points, fidelity, 10.0, "t")
    logged = Path(client.download_artifacts(parent, "", str(tmp_path / "logged")))
    texts = {"summary/sweep_summary.csv": csv_text(ROWS, "total_sensitivity"),
             "summary/sweep_summary.md": markdown_text(ROWS, "total_sensitivity", "t"),
             **{f"recommendation/{name}": text
                for name, text in artifact_texts(table, points, fidelity, 10.0, "t").items()}}
    pngs = [f"summary/{heatmap_name('total_sensitivity')}", "recommendation/pareto_curves.png"]
    assert sorted(p.relative_to(logged).as_posix() for p in logged.rglob("*.*")) == sorted([*texts, *pngs])
    for name, text in texts.items():
        assert (logged / name).read_text() == text, name
    for name in pngs:
        assert (logged / name).read_bytes()[:4] == b"\x89PNG", name


def test_one_log_batch_call_logs_more_than_one_request_holds(tmp_path: Path, new_mlflow_store) -> None:
    """MLflow 3.17's ``MlflowClient.log_batch`` splits into its per-request limits (100 params, 100 tags,
    1000 values) itself, so a run's values go in one call (run_logging._log_batch)."""
    from autoquant_sweep.tracking.run_logging import _log_batch

    new_mlflow_store(tmp_path / "m.db")  # migrated: the test is about log_batch, not schema creation

    client = connect(settings_from_cfg({"tracking": {"mode": "local",
                                                     "tracking_uri": f"sqlite:///{tmp_path}/m.db"}}))
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    params = {f"p{i}": str(i) for i in range(150)}
    tags = {f"t{i}": str(i) for i in range(120)}
    _log_batch(client, run_id, params, [("m", float(i), i) for i in range(1500)], tags)
    data = client.get_run(run_id).data
    assert data.params == params and {k: v for k, v in data.tags.items() if k.startswith("t")} == tags
    assert [h.value for h in client.get_metric_history(run_id, "m")] == [float(i) for i in range(1500)]


def test_start_run_dates_a_job_from_its_start_and_names_it(tmp_path: Path, new_mlflow_store) -> None:
    """The pipeline creates a job's run after the plan and the lookup; its start time is the job's."""
    from autoquant_sweep.tracking.run_logging import start_run

    new_mlflow_store(tmp_path / "m.db")
    client = connect(settings_from_cfg({"tracking": {"mode": "local",
                                                     "tracking_uri": f"sqlite:///{tmp_path}/m.db"}}))
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "mlruns").as_uri())
    c = {"quant_pair": {"name": "wint4_aint8"}, "quant_granularity": {"name": "w_group64"},
         "dataset": {"size": "small"}}
    job_start = int(time.time() * 1000) - 60_000  # a minute before the run is created
    dated = start_run(client, experiment, c, "parent-id", start_time=job_start)
    assert dated.info.start_time == job_start
    assert dated.data.tags["mlflow.parentRunId"] == "parent-id"
    assert dated.info.run_name == "wint4_aint8 w-g64"
    now = start_run(client, experiment, c, None)
    assert now.info.start_time >= job_start + 60_000 and "mlflow.parentRunId" not in now.data.tags




_CREATION_TAGS = """
import json, sys
sys.argv = [sys.argv[1]]
from autoquant_sweep.tracking.run_logging import creation_tags
print(json.dumps(creation_tags({"mlflow.runName": "mine", "mlflow.user": "someone"})))
"""


def test_creation_tags_carry_the_git_commit_of_the_checkout_that_runs(tmp_path: Path) -> None:
    """MLflow 3.17's run context (``resolve_tags``) reads the commit of the script's repository. In a process
    of its own: MLflow keeps the first answer for the process (the pytest process's own is no checkout's)."""
    import json
    import subprocess
    import sys

    from autoquant_sweep.paths import project_root
    from tests import warm

    root = project_root()
    if root is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()
    script = tmp_path / "tags.py"
    script.write_text(_CREATION_TAGS)
    result = warm.run([sys.executable, str(script), str(root / "experiments" / "sensitivity.py")],
                      capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    tags = json.loads(result.stdout.strip().splitlines()[-1])
    assert tags["mlflow.source.git.commit"] == head and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.runName"] == "mine" and tags["mlflow.user"] == "someone"  # given tags win
