"""Trial owner and fail reason through Optuna's public API (real Optuna studies on SQLite, no mocks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import optuna
import pytest
from omegaconf import OmegaConf

from autoquant_sweep import faults
from autoquant_sweep.search.sweeper import OWNER_HOOK, StudyStorage, record_trial_owner

seen: list[int] = []


def user_hook(cfg, trial):  # a user's own custom_search_space hook (referenced by dotted path)
    seen.append(trial.number)


@pytest.fixture
def study_and_storage(tmp_path):
    storage = StudyStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    return study, storage


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_owner_hook_stamps_a_user_attr_and_runs_the_users_hook(study_and_storage):
    study, _ = study_and_storage
    seen.clear()
    cfg = OmegaConf.create({"hydra": {"sweeper": {"custom_search_space": f"{__name__}.user_hook"}}})
    trial = study.ask()
    record_trial_owner(cfg, trial)
    assert study.trials[0].user_attrs[faults.OWNER_ATTR] == f"{socket.gethostname()}:{os.getpid()}"
    assert seen == [0]
    # the sweeper's own hook named in the config does not run twice
    record_trial_owner(OmegaConf.create({"hydra": {"sweeper": {"custom_search_space": OWNER_HOOK}}}), trial)


def test_own_and_stale_trials_fail_with_a_readable_reason(study_and_storage):
    study, storage = study_and_storage
    me, dead, elsewhere = faults.owner(), f"{socket.gethostname()}:{_dead_pid()}", "otherhost:1"
    trials = [study.ask() for _ in range(4)]
    for trial, who in zip(trials, (me, dead, elsewhere), strict=False):
        trial.set_user_attr(faults.OWNER_ATTR, who)
    # a study written before owners became user attrs: the owner is a system attr (public storage method)
    legacy_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("s"), trials[3].number)
    storage.set_trial_system_attr(legacy_id, faults.OWNER_ATTR, dead)

    assert faults.fail_stale_trials(study, storage) == [1, 3]
    assert faults.fail_own_trials(study, storage, "killed by SIGTERM") == [0]
    reloaded = optuna.load_study(study_name="s", storage=f"sqlite:///{storage.url.split('///', 1)[1]}")
    states = [t.state for t in reloaded.trials]
    F, R = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING
    assert states == [F, F, R, F]
    reasons = [faults.trial_fail_reason(t) for t in reloaded.trials]
    assert reasons[0] == "killed by SIGTERM" and reloaded.trials[0].user_attrs["fail_reason"] == reasons[0]
    assert reasons[1] == f"owner process {dead} died while the trial was running"
    assert reasons[2] is None and reasons[3] == reasons[1]
    # a finished trial is left alone (Optuna refuses to update it): nothing failed twice
    assert faults.fail_own_trials(study, storage, "again") == []

