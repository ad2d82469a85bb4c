"""A full disk at the write functions (``OSError(ENOSPC)`` / SQLite's ``database or disk is full``
injected where the file system would raise it): one line naming the path, nothing half-made left (issue
17, item 9). ``tests/integration/test_full_disk.py`` fills a real tmpfs where the machine allows a mount."""

from __future__ import annotations

import errno
import sqlite3

import pytest

from autoquant_sweep.errors import DiskFullError, disk_full
from autoquant_sweep.layout import write_dir_atomically
from autoquant_sweep.tracking.store import create_sqlite_aside


def test_a_report_write_on_a_full_disk_is_one_line_and_leaves_no_staging(tmp_path):
    def write(folder):
        (folder / "manifest.json").write_text("{")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "per_layer.json"))

    with pytest.raises(DiskFullError) as info:
        write_dir_atomically(tmp_path / "report", write)
    assert str(info.value) == (
        f"output directory '{tmp_path}': no space left on device while writing 'report' (nothing "
        "half-written was left); free space there or choose another output location, then rerun the same "
        "command")
    assert list(tmp_path.iterdir()) == []


def test_a_store_that_cannot_be_completed_is_never_left_half_made(tmp_path):
    db = tmp_path / "mlflow.db"

    def create(url):  # SQLite writes the first tables, then the disk is full
        path = url[len("sqlite:///"):]
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE evaluation_datasets (id TEXT)")
        con.commit()
        con.close()
        raise sqlite3.OperationalError("database or disk is full")

    for _ in range(2):  # the same answer every time: nothing was left that fails differently later
        with pytest.raises(DiskFullError, match=r"^tracking\.tracking_uri: no space left on device while "
                                                r"creating the SQLite store '.*/mlflow\.db' \(nothing "
                                                r"was left behind\)"):
            create_sqlite_aside(db, create, "tracking.tracking_uri")
        assert list(tmp_path.iterdir()) == []


def test_a_complete_store_is_linked_into_place(tmp_path):
    db = tmp_path / "optuna.db"
    create_sqlite_aside(db, lambda url: sqlite3.connect(url[len("sqlite:///"):]).execute(
        "CREATE TABLE t (x)").connection.commit(), "hydra.sweeper.storage")
    assert [p.name for p in tmp_path.iterdir()] == ["optuna.db"]
    assert sqlite3.connect(db).execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]


def test_disk_full_is_found_through_wrapping_exceptions():
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as inner:
            raise RuntimeError("commit failed") from inner
    except RuntimeError as outer:
        assert disk_full(outer)
    assert not disk_full(sqlite3.DatabaseError("database disk image is malformed"))
