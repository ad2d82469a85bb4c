"""A sweep killed mid-trial (SIGTERM, then SIGKILL) and restarted with the same command.

Real Optuna study and MLflow store (SQLite, temp dir), publish layout; the sweep is killed once its job
log shows AutoQuant started on the trial to interrupt. The killed sweep is a fresh interpreter (the signal
and its exit status are the point); the restart, about stores and folders only, runs in this interpreter
(:func:`run_in_process`), a process other than the dead one, as a restart is.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests import warm
from tests.conftest import SENSITIVITY_APP, TIMEOUT_SCALE, run_in_process, study_name

pytestmark = pytest.mark.integration

SPACE = ["quant_pair=choice(wint8_aint8,wint4_aint8)", "quant_granularity=choice(default,w_group128)"]
STUDY = study_name(["dataset.size=small"], SPACE)  # the study of these sweeps
NAME = "autoquant-qwen3_tiny-constrained_score"
STARTED = "running AutoQuant"  # app.py logs it when a trial's AutoQuant is about to start


def _args(tmp: Path, n_trials: int) -> list[str]:
    return [
        "-m", "hydra/sweeper=optuna", f"hydra.sweeper.n_trials={n_trials}", "dataset.size=small",
        f"hydra.sweeper.storage=sqlite:///{tmp}/optuna.db",
        f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db", f"tracking.artifact_location={tmp}/mlruns",
        "output_layout=publish", f"output_layout.publish_root={tmp}/pub",
        # the fast integer pairs on CPU; no cache, so every trial runs AutoQuant (and logs STARTED)
        *SPACE, "autoquant.cache=false",
        "autoquant.mix=false",  # single-format trials and their registry here; the mix: test_mix_tracking
    ]


def _start_and_kill(tmp: Path, n_trials: int, kill_at: int, sig: signal.Signals) -> tuple[int, str]:
    """Start the sweep, send ``sig`` once the ``kill_at``-th trial started AutoQuant; (returncode, log)."""
    log_path = tmp / f"killed-{sig.name}.log"
    with log_path.open("w") as log:
        env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
        proc = warm.Popen([sys.executable, str(SENSITIVITY_APP), *_args(tmp, n_trials)], cwd=tmp,
                          stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 120 * TIMEOUT_SCALE  # a loaded machine: scale it
            while log_path.read_text().count(STARTED) < kill_at:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "the sweep never reached the trial to kill"
                time.sleep(0.1)
            time.sleep(0.5)  # inside ModelOpt's calibration / scoring
            proc.send_signal(sig)
            returncode = proc.wait(timeout=60 * TIMEOUT_SCALE)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return returncode, log_path.read_text()


def _study(tmp: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{tmp}/optuna.db")


def _client(tmp: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _runs(tmp: Path) -> tuple[list, list]:
    client = _client(tmp)
    runs = client.search_runs([client.get_experiment_by_name("sensitivity").experiment_id],
                              order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _staging(tmp: Path) -> list[Path]:
    return [p for p in (tmp / "pub").rglob(".*") if ".staging-" in p.name or ".old-" in p.name]


def _restart_and_check(tmp: Path, n_trials: int, kept: int) -> None:
    """Same command again: the study grows by ``n_trials`` complete trials; alias on a finished run."""
    result = run_in_process(_args(tmp, n_trials), cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    states = [t.state for t in _study(tmp).trials]
    assert states.count(optuna.trial.TrialState.RUNNING) == 0
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    assert states.count(optuna.trial.TrialState.COMPLETE) == kept + n_trials
    parents, children = _runs(tmp)
    assert [p.info.status for p in parents] == ["KILLED", "FINISHED"]
    assert not [c for c in children if c.info.status == "RUNNING"]
    killed = [c for c in children if c.info.status == "KILLED"]
    assert len(killed) == 1 and killed[0].data.tags["failure_reason"].startswith("killed")
    client = _client(tmp)
    best = client.get_model_version_by_alias(NAME, "best")
    assert client.get_run(best.run_id).info.status == "FINISHED"
    assert not _staging(tmp)
    manifests = list((tmp / "pub").rglob("manifest.json"))
    assert manifests and all(len(list(m.parent.iterdir())) >= 5 for m in manifests)


def test_sigterm_mid_trial_marks_it_failed_and_killed_and_restart_continues(tmp_path, embedded,
                                                                             new_mlflow_store):
    new_mlflow_store(tmp_path / "mlflow.db")  # a migrated empty store: the sweep skips schema creation
    returncode, log = _start_and_kill(tmp_path, n_trials=3, kill_at=2, sig=signal.SIGTERM)
    assert returncode == 128 + signal.SIGTERM, log[-3000:]
    trials = _study(tmp_path).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert trials[1].user_attrs["fail_reason"] == "killed by SIGTERM"
    parents, children = _runs(tmp_path)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert [c.info.status for c in children] == ["FINISHED", "KILLED"]
    assert children[1].data.tags["failure_reason"] == "killed by SIGTERM"
    assert parents[0].data.tags["failure_reason"] == "sweep stopped: killed by SIGTERM"
    # nothing is registered from a stopped sweep, although one trial finished (the restart registers)
    assert _client(tmp_path).search_model_versions(f"name='{NAME}'") == []
    assert not _staging(tmp_path)
    _restart_and_check(tmp_path, n_trials=2, kept=1)


def test_sigkill_mid_trial_is_cleaned_up_by_the_restart(tmp_path, embedded, new_mlflow_store):
    new_mlflow_store(tmp_path / "mlflow.db")
    returncode, log = _start_and_kill(tmp_path, n_trials=1, kill_at=1, sig=signal.SIGKILL)
    assert returncode == -signal.SIGKILL, log[-3000:]
    # what SIGKILL leaves: a RUNNING trial and RUNNING runs, plus (simulated) a staging folder of the
    # dead process inside the publish tree
    assert [t.state for t in _study(tmp_path).trials] == [optuna.trial.TrialState.RUNNING]
    parents, children = _runs(tmp_path)
    assert [r.info.status for r in parents + children] == ["RUNNING", "RUNNING"]
    dead_pid = int(parents[0].data.tags["aqs.owner"].rsplit(":", 1)[1])
    stale = tmp_path / "pub" / "sensitivity" / f".x.staging-{socket.gethostname()}-{dead_pid}-deadbeef"
    stale.mkdir(parents=True)
    (stale / "manifest.json").write_text("{")
    _restart_and_check(tmp_path, n_trials=1, kept=0)
    fail = next(t for t in _study(tmp_path).trials if t.state == optuna.trial.TrialState.FAIL)
    assert fail.number == 0 and "died while the trial was running" in fail.user_attrs["fail_reason"]
