"""A sweep's lifecycle with real processes (issue 12): concurrent sweeps, a failed end, an interrupt.

Four ``experiments/sensitivity.py -m hydra/sweeper=optuna`` processes start together in one module
fixture (their imports overlap), on one MLflow store (one experiment per scenario; creating a store costs
~10 s of schema migrations) and one Optuna study file per working folder:

* ``a`` and ``b``: the same command, started in the same second in one working folder, sharing one
  Optuna study and one MLflow store (how Optuna is parallelised across nodes);
* ``summary-fails``: one trial; once its parent run exists, the parent's artifact folder is blocked by a
  file, so the summary at the sweep's end cannot be written;
* ``sigint``: two trials, Ctrl-C (SIGINT) once the second trial's AutoQuant started.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests import warm

from ..conftest import SENSITIVITY_APP, study_name

# signal timing: deadlines scale with AUTOQUANT_SWEEP_TEST_TIMEOUT_SCALE; select them alone with -m signals
pytestmark = [pytest.mark.integration, pytest.mark.signals]

NAME = "autoquant-qwen3_tiny-constrained_score"
SPACE = ["quant_pair=choice(wint8_aint8,wint4_aint8)", "quant_granularity=choice(default,w_group128)"]
STUDY = study_name(["dataset.size=small"], SPACE)  # the study of these sweeps
STARTED = "running AutoQuant"  # app.py logs it when a trial's AutoQuant is about to start
ERROR = "autoquant-sweep: error:"


def _args(root: Path, store: Path, experiment: str, n_trials: int, *extra: str) -> list[str]:
    return ["-m", "hydra/sweeper=optuna", f"hydra.sweeper.n_trials={n_trials}", "dataset.size=small", *SPACE,
            "autoquant.mix=false",  # the sweep-end mix has its own test (test_mix_tracking)
            f"hydra.sweeper.storage=sqlite:///{root}/optuna.db", f"tracking.tracking_uri=sqlite:///{store}/mlflow.db",
            f"tracking.artifact_location={store}/mlruns", f"tracking.experiment_name={experiment}",
            "autoquant.evaluate=false", *extra]  # the held-out evaluation is not what is tested here


def _client(store: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{store}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _runs(sweep: dict) -> list:
    client = _client(sweep["store"])
    return client.search_runs([client.get_experiment_by_name(sweep["experiment"]).experiment_id],
                              order_by=["attributes.start_time ASC"])


def _versions(sweep: dict) -> list:
    """Registry versions made from this sweep's runs (the registered model is shared by all scenarios)."""
    ids = {r.info.run_id for r in _runs(sweep)}
    return [v for v in _client(sweep["store"]).search_model_versions(f"name='{NAME}'") if v.run_id in ids]


def _parent_id_files(root: Path) -> list[Path]:
    return list(root.glob("multirun/sensitivity/*/.mlflow_parent_run_id"))


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, embedded) -> dict[str, dict]:
    """Run the four sweeps; ``name -> {proc result, root, log}``."""
    base = tmp_path_factory.mktemp("lifecycle")
    store = base / "store"
    roots = {name: base / name for name in ("shared", "summary-fails", "sigint")}
    for root in (store, *roots.values()):
        root.mkdir()
    experiments = {"a": "sensitivity", "b": "sensitivity", "summary-fails": "summary-fails",
                   "sigint": "sigint"}
    plans = {
        "a": (roots["shared"], _args(roots["shared"], store, "sensitivity", 2)),
        "b": (roots["shared"], _args(roots["shared"], store, "sensitivity", 2)),
        "summary-fails": (roots["summary-fails"], _args(roots["summary-fails"], store, "summary-fails", 1)),
        "sigint": (roots["sigint"], _args(roots["sigint"], store, "sigint", 2, "autoquant.cache=false")),
    }
    # started as from a shell: no sweep id inherited from this (pytest) process
    env = {k: v for k, v in os.environ.items() if k != "AUTOQUANT_SWEEP_ID"} | {"HYDRA_FULL_ERROR": "0"}
    procs = {}
    for name, (root, args) in plans.items():  # a and b start within a few milliseconds of each other
        out, err = (root / f"{name}.out").open("w"), (root / f"{name}.err").open("w")
        procs[name] = warm.Popen([sys.executable, str(SENSITIVITY_APP), *args], cwd=root, env=env,
                                 stdout=out, stderr=err)
    started = {name: time.time() for name in procs}
    blocked = interrupted = False
    try:
        deadline = time.monotonic() + 400
        while any(p.poll() is None for p in procs.values()):
            assert time.monotonic() < deadline, "sweeps did not end"
            if not blocked and (ids := _parent_id_files(roots["summary-fails"])):
                parent = ids[0].read_text().strip()
                artifacts = store / "mlruns" / "summary-fails" / parent / "artifacts"
                artifacts.parent.mkdir(parents=True, exist_ok=True)
                if artifacts.is_dir():
                    artifacts.rmdir()
                artifacts.write_text("a file where the parent's artifact folder should be")
                blocked = True
            if not interrupted:
                log = "".join((roots["sigint"] / f"sigint.{ext}").read_text() for ext in ("out", "err"))
                if log.count(STARTED) >= 2:
                    time.sleep(0.5)  # inside ModelOpt's calibration / scoring
                    procs["sigint"].send_signal(signal.SIGINT)
                    interrupted = True
            time.sleep(0.05)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert blocked and interrupted
    return {name: {"returncode": procs[name].returncode, "pid": procs[name].pid, "root": plans[name][0],
                   "store": store, "experiment": experiments[name], "started": started[name],
                   "stdout": (plans[name][0] / f"{name}.out").read_text(),
                   "stderr": (plans[name][0] / f"{name}.err").read_text()} for name in procs}


def test_two_sweeps_started_in_the_same_second_own_their_folder_parent_and_registry(sweeps):
    a, b = sweeps["a"], sweeps["b"]
    root = a["root"]
    assert int(a["started"]) == int(b["started"])  # started in the same second
    for sweep in (a, b):
        assert sweep["returncode"] == 0, sweep["stderr"][-3000:]
        assert "Traceback" not in sweep["stderr"] and "Warning: Callback" not in sweep["stderr"]
    folders = sorted((root / "multirun" / "sensitivity").iterdir())
    assert len(folders) == 2, folders
    host = re.escape(re.sub(r"[^A-Za-z0-9_.-]+", "_", socket.gethostname()))
    by_pid = {}
    for folder in folders:  # <time>_<host>-<pid>-<random>
        match = re.fullmatch(rf"\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d_{host}-(\d+)-[0-9a-f]{{4}}", folder.name)
        assert match, folder.name
        by_pid[int(match.group(1))] = folder
    assert set(by_pid) == {a["pid"], b["pid"]}

    runs = _runs(a)
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("sweep") == "true"}
    children = [r for r in runs if r.data.tags.get("sweep") != "true"]
    assert len(parents) == 2 and len(children) == 4
    assert all(c.data.tags.get("mlflow.parentRunId") in parents for c in children)  # no orphan
    versions = _versions(a)
    assert len(versions) == 2  # one registry decision per sweep
    for sweep in (a, b):
        folder = by_pid[sweep["pid"]]
        parent_id = (folder / ".mlflow_parent_run_id").read_text().strip()
        parent = parents[parent_id]
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["sweep_dir"].endswith(folder.name)
        assert parent.data.tags["aqs.owner"] == f"{socket.gethostname()}:{sweep['pid']}"
        assert parent.data.tags["mlflow.runName"] == f"sweep-{folder.name}"
        own = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent_id]
        # exactly its own two children, all run by this sweep process
        assert len(own) == 2
        assert {c.data.tags["aqs.owner"] for c in own} == {f"{socket.gethostname()}:{sweep['pid']}"}
        assert all(c.info.status == "FINISHED" for c in own)
        # its registry decision picked one of its own children (the version points at the run that
        # computed that result: the child itself, or the run its cache hit reused)
        version = next(v for v in versions if str(v.version) == parent.data.tags["registered_version"])
        assert parent.data.tags["best_selected_run_id"] in {c.info.run_id for c in own}
        assert version.run_id in {c.info.run_id for c in children}
        assert f"sweep parent run: {parent_id}" in sweep["stdout"]
        # each job wrote its own folder and report; nothing of the other sweep in it
        manifests = sorted(folder.glob("qwen3_tiny/*/*/small/job*/report/manifest.json"))
        assert sorted(m.parents[1].name for m in manifests) == ["job0", "job1"]
        logs = sorted(folder.glob("qwen3_tiny/*/*/small/job*/*.log"))
        assert len(logs) == 2
        for log in logs:  # one job's log: the MLflow run it opened is one of this sweep's children
            opened = re.findall(r"MLflow run (\w+) in experiment", log.read_text())
            assert len(opened) == 1 and opened[0] in {c.info.run_id for c in own}
    assert {str(v.version) for v in versions} == {p.data.tags["registered_version"] for p in parents.values()}
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{root}/optuna.db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    owners = [t.user_attrs["aqs_owner"] for t in study.trials]
    assert sorted(owners) == sorted([f"{socket.gethostname()}:{s['pid']}" for s in (a, b)] * 2)


def test_a_failed_summary_ends_the_sweep_with_one_line_and_status_2(sweeps):
    sweep = sweeps["summary-fails"]
    assert sweep["returncode"] == 2, sweep["stderr"][-3000:]
    assert "Traceback" not in sweep["stderr"]
    lines = [line for line in sweep["stderr"].splitlines() if line.startswith(ERROR)]
    assert len(lines) == 1, sweep["stderr"][-3000:]
    runs = _runs(sweep)
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "true"]
    assert re.fullmatch(rf"{ERROR} sweep summary / registry update failed: .+ \(parent run "
                        rf"{parent.info.run_id} FAILED; the trials are in MLflow and the study\)", lines[0])
    assert parent.info.status == "FAILED"
    assert parent.data.tags["failure_reason"].startswith("sweep summary / registry update failed: ")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert [c.info.status for c in children] == ["FINISHED"]
    assert _versions(sweep) == []
    assert "sweep parent run:" not in sweep["stdout"]  # no outcome printed as if the sweep ended well


def test_an_interrupted_sweep_is_killed_says_why_and_registers_nothing(sweeps):
    sweep = sweeps["sigint"]
    reason = "interrupted by SIGINT (Ctrl-C)"
    assert sweep["returncode"] == 128 + signal.SIGINT, sweep["stderr"][-3000:]
    assert "Traceback" not in sweep["stderr"]
    trials = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{sweep['root']}/optuna.db").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert trials[1].user_attrs["fail_reason"] == reason
    runs = _runs(sweep)
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "true"]
    assert parent.info.status == "KILLED"
    assert parent.data.tags["failure_reason"] == f"sweep stopped: {reason}"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert [c.info.status for c in children] == ["FINISHED", "KILLED"]
    assert children[1].data.tags["failure_reason"] == reason
    # a finished trial exists, but nothing is registered from an interrupted sweep
    assert _versions(sweep) == [] and "registered_version" not in parent.data.tags
    assert f"autoquant-sweep: sweep stopped: {reason}: parent run {parent.info.run_id} KILLED, nothing " \
           "registered" in sweep["stderr"]


def test_apply_force_replaces_a_non_empty_folder_as_a_whole(sweeps):
    """``apply --out`` into a folder with unrelated files: refused without ``--force`` (see
    ``test_store_errors.py``), replaced whole with it, through a staging folder that does not linger."""
    store = sweeps["a"]["store"]
    out = store.parent / "quantized"
    out.mkdir()
    (out / "config.json").write_text('{"unrelated": true}')
    (out / "notes.txt").write_text("an unrelated file")
    result = warm.run(
        [sys.executable, "-m", "autoquant_sweep.cli", "apply", NAME, "--tracking-uri",
         f"sqlite:///{store}/mlflow.db", "--out", str(out), "--force"],
        capture_output=True, text=True, timeout=300, cwd=store.parent, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    names = {p.name for p in out.iterdir()}
    assert "notes.txt" not in names
    assert {"config.json", "modelopt_state.pth", "applied_quant_cfg.json", "autoquant_apply.json"} <= names
    assert '"unrelated"' not in (out / "config.json").read_text()
    assert [p.name for p in store.parent.iterdir() if ".staging-" in p.name or ".old-" in p.name] == []
