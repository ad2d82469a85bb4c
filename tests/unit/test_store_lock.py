"""``store_lock``: a SQLite store's creation lock is a hidden sibling of the database, held exclusively."""

from __future__ import annotations

from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from autoquant_sweep.tracking.store import store_lock


def test_store_lock_is_a_hidden_sibling_of_the_database_and_excludes_others(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    with store_lock(db):
        assert [p.name for p in tmp_path.iterdir()] == [".mlflow.db.lock"]  # the store itself is untouched
        with pytest.raises(Timeout):
            FileLock(tmp_path / ".mlflow.db.lock", timeout=0).acquire()
    with FileLock(tmp_path / ".mlflow.db.lock", timeout=0):  # free again once released
        pass
    assert store_lock(tmp_path / "optuna.db").lock_file != store_lock(db).lock_file  # one lock per store
