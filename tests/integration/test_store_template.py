"""A new MLflow SQLite store is a copy of a migrated empty one kept in the embedded cache
(``tracking.store.empty_mlflow_store``): MLflow's ~5 s of schema creation are paid once per MLflow version,
not once per store."""

from __future__ import annotations

import sqlite3
from importlib.metadata import version

import pytest

from autoquant_sweep.tracking.store import STORE_TEMPLATES_DIR, TrackingSettings, connect, empty_mlflow_store

pytestmark = pytest.mark.integration


def test_the_template_is_built_once_checked_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    template = empty_mlflow_store(cache)
    assert template == cache / STORE_TEMPLATES_DIR / f"mlflow-{version('mlflow')}.db"
    with sqlite3.connect(template) as con:  # MLflow's own schema, migrated to its head
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    con.close()
    built = template.stat().st_mtime_ns
    assert empty_mlflow_store(cache) == template and template.stat().st_mtime_ns == built  # reused
    assert sorted(p.name for p in template.parent.iterdir()) == [f".{template.name}.lock", template.name]

    # a store made from it is a working MLflow store with nothing in it but MLflow's Default experiment
    monkeypatch.setenv("AUTOQUANT_SWEEP_CACHE", str(cache))
    client = connect(TrackingSettings("local", f"sqlite:///{tmp_path}/runs/mlflow.db", None, "x", True))
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert client.search_registered_models() == []
    assert template.stat().st_mtime_ns == built

    template.write_bytes(template.read_bytes()[:4096])  # a truncated template is not used: built again
    assert empty_mlflow_store(cache) == template
    with sqlite3.connect(template) as con:
        assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    con.close()
    assert sorted(p.name for p in template.parent.iterdir()) == [f".{template.name}.lock", template.name]
