"""``faults.storage_trial_id``, the one place that asks Optuna's storage for ids (written for Optuna 5.0).

When a test here fails after an Optuna upgrade, look for a public write on a trial another process asked
for (or a public trial id) and replace the function with it.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from autoquant_sweep import faults


@pytest.fixture
def rdb_study(tmp_path: Path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    yield study, storage
    storage.remove_session()
    storage.engine.dispose()


def test_frozen_trials_still_keep_their_storage_id_private():
    assert not hasattr(optuna.trial.FrozenTrial, "trial_id"), "Optuna has a public trial id now: use it"


def test_storage_trial_id_names_each_trial_of_the_study(rdb_study):
    study, storage = rdb_study
    first, second = study.ask(), study.ask()
    assert faults.storage_trial_id(storage, "s", 0) == first._trial_id
    assert faults.storage_trial_id(storage, "s", 1) == second._trial_id
    with pytest.raises(KeyError):
        faults.storage_trial_id(storage, "no-such-study", 0)


def test_fail_trial_writes_the_reason_on_a_running_trial_it_did_not_ask_for(rdb_study):
    study, storage = rdb_study
    study.ask(), study.ask()
    faults.fail_trial(optuna.load_study(study_name="s", storage=storage), storage, 1, "owner died")
    trials = study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL]
    assert faults.trial_fail_reason(trials[1]) == "owner died" and faults.trial_fail_reason(trials[0]) is None
    with pytest.raises((RuntimeError, ValueError)):  # finished meanwhile: what fail_stale_trials skips
        faults.fail_trial(study, storage, 1, "again")
