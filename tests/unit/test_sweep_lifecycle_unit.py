"""Pieces of the sweep lifecycle (issue 12) that need no sweep: sweep ids, SQLite store checks, messages."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from autoquant_sweep.errors import UserInputError

PRINT_ID = "from autoquant_sweep.layout import sweep_id; print(sweep_id())"


def _id_in_child(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", PRINT_ID], env={**os.environ, **env}, capture_output=True,
                         text=True, check=True, timeout=60)
    return out.stdout.strip()


def test_sweep_id_is_per_process_and_reaches_only_direct_children(monkeypatch):
    from autoquant_sweep import layout

    # a leaked id would be inherited by every sweep this pytest worker starts (one folder for all of them)
    monkeypatch.delenv(layout.SWEEP_ID_ENV, raising=False)
    layout.SWEEP_ID.reset()
    mine = layout.sweep_id()
    host = re.escape(re.sub(r"[^A-Za-z0-9_.-]+", "_", socket.gethostname()))
    assert re.fullmatch(rf"\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d_{host}-{os.getpid()}-[0-9a-f]{{4}}", mine)
    assert layout.sweep_id() == mine  # stable within the process
    # a launcher worker (a direct child of the sweep process) gets the sweep's id ...
    assert _id_in_child({layout.SWEEP_ID_ENV: os.environ[layout.SWEEP_ID_ENV]}) == mine
    # ... a process whose parent is not the owner (a sweep started from a job, a copied environment)
    # gets its own
    other = _id_in_child({layout.SWEEP_ID_ENV: f"{socket.gethostname()}:1 {mine}"})
    assert other != mine and f"-{os.getpid()}-" not in other
    # a reset (the next sweep of this process) withdraws the exported id and makes a new one
    layout.SWEEP_ID.reset()
    assert layout.SWEEP_ID_ENV not in os.environ
    assert layout.sweep_id() != mine
    layout.SWEEP_ID.reset()


def _damage(path: Path, *, header: bool) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (a INTEGER, b TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, "x" * 200) for i in range(300)])
    con.commit()
    con.close()
    data = bytearray(path.read_bytes())
    if header:
        data[:16] = b"not sqlite at al"
    else:
        page = int.from_bytes(data[16:18], "big")
        data[2 * page:4 * page] = b"\xa5" * (2 * page)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("header", "problem"), [(False, "database disk image is malformed"),
                                                  (True, "file is not a database")])
def test_a_damaged_sqlite_store_is_one_line_naming_the_file(tmp_path, header, problem):
    from autoquant_sweep.tracking import store

    path = tmp_path / "mlflow.db"
    _damage(path, header=header)
    before = path.read_bytes()
    with pytest.raises(UserInputError) as info:
        store.check_sqlite_store(f"sqlite:///{path}", "tracking.tracking_uri")
    assert str(info.value).startswith(f"tracking.tracking_uri: SQLite store '{path}' is damaged ({problem}); "
                                      "nothing was written.")
    assert f"mv '{path}' '{path}.damaged'" in str(info.value)
    assert path.read_bytes() == before


def test_sqlite_store_checks_pass_good_and_new_files_and_other_urls(tmp_path):
    from autoquant_sweep.tracking import store

    good = tmp_path / "good.db"
    sqlite3.connect(good).execute("CREATE TABLE t (a)").connection.commit()
    store.check_sqlite_store(f"sqlite:///{good}", "k")
    store.check_sqlite_store(f"sqlite:///{tmp_path}/new.db", "k")  # a new file in an existing folder
    assert not (tmp_path / "new.db").exists()  # the check creates nothing
    store.check_sqlite_store(f"sqlite:///{tmp_path}/sub/new.db", "k", create_parent=True)
    assert (tmp_path / "sub").is_dir()  # MLflow's store folder is created, as before
    with pytest.raises(UserInputError, match=r"folder '.*/missing' does not exist"):
        store.check_sqlite_store(f"sqlite:///{tmp_path}/missing/x.db", "hydra.sweeper.storage")
    with pytest.raises(UserInputError, match="is not a file"):
        store.check_sqlite_store(f"sqlite:///{tmp_path}", "k")
    for url in ("sqlite://", "sqlite:///:memory:", "postgresql+psycopg://u:p@db/optuna", "http://h:5000"):
        store.check_sqlite_store(url, "k")


def test_passwords_are_masked_in_messages():
    from autoquant_sweep.tracking.store import masked_url

    assert masked_url("postgresql+psycopg://alice:s3cret@db:5432/optuna") == \
        "postgresql+psycopg://alice:***@db:5432/optuna"
    assert "s3cret" not in masked_url("weird://alice:s3cret@db/x")


def test_stop_reasons_are_never_empty():
    from autoquant_sweep import faults
    from autoquant_sweep.search.sweeper import SweepExit
    from autoquant_sweep.tracking.callbacks import _first_line

    assert str(faults.Interrupted()) == "interrupted by SIGINT (Ctrl-C)"
    assert faults.Interrupted().code == 128 + signal.SIGINT and faults.interrupted(faults.Interrupted())
    assert faults.stop_text(KeyboardInterrupt()) == "interrupted (KeyboardInterrupt)"
    assert _first_line(faults.Terminated(signal.SIGTERM)) == "killed by SIGTERM"
    assert _first_line(SweepExit("hydra.sweeper: no trial ...")) == "hydra.sweeper: no trial ..."
    assert _first_line(SystemExit(2)) == "exit status 2 (see the error line above)"
    assert _first_line(ValueError("first\nsecond")) == "first"


def test_study_storage_prints_as_its_url_not_an_object_address(tmp_path):
    from autoquant_sweep.search.sweeper import StudyStorage

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert repr(StudyStorage(url)) == url  # the plugin's "Storage: ..." line on the first screen


@pytest.mark.parametrize("operation", ["read the trials", "ask a trial"])
def test_a_stop_inside_a_study_storage_call_is_raised_when_the_call_returns(tmp_path, operation,
                                                                           stop_handlers):
    """SIGTERM / Ctrl-C landing in the middle of any call on the study's storage, a read as well as a write,
    is raised once the call has returned, never inside SQLAlchemy. A read cut in half kept its SQLite
    statement open (SQLAlchemy's ORM closes it on ``Exception`` only, and a stop is a ``SystemExit``), and
    the stopped sweeper's next write, failing its own trials, waited the store's 60 s lock timeout on it
    (seen: a sweep stopped after its last trial hung past its test's 120 s deadline). Asking a trial goes
    through the storage's private ``_create_new_trial`` (Optuna's cache calls it): it is covered too."""
    import traceback

    import optuna
    import sqlalchemy

    from autoquant_sweep import faults
    from autoquant_sweep.search.sweeper import StudyStorage

    storage = StudyStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    study.ask()
    statement, sent = ("SELECT" if operation == "read the trials" else "INSERT"), []

    def stop_after_the_statement(conn, cursor, sql, *args):  # the stop lands mid-call, as a signal does
        if sql.lstrip().upper().startswith(statement) and not sent:
            sent.append(sql)
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        sqlalchemy.event.listen(storage.engine, "after_cursor_execute", stop_after_the_statement)
        with pytest.raises(faults.Terminated) as stopped:
            study.get_trials() if operation == "read the trials" else study.ask()
        innermost = traceback.extract_tb(stopped.tb)[-1]
        assert (Path(innermost.filename).name, innermost.name) == ("faults.py", "check_stop"), innermost
        assert sent, f"no {statement} statement ran"
        stop_handlers.reset()
        assert len(study.get_trials()) == (1 if operation == "read the trials" else 2)  # the call completed
    finally:
        storage.remove_session()
        storage.engine.dispose()
