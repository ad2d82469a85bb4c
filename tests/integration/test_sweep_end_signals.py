"""A stop signal during a sweep's end (after its last trial finished: PNGs, summary, registry) keeps the
contract of a stop during a trial (issue 17, item 10): the stop line, status 143 / 130, the parent KILLED,
nothing registered, the deferred PNGs drawn.

The signal is sent the moment the store shows the last child run FINISHED (polling the SQLite file), so it
lands somewhere in the sweep's end; deadlines scale with ``AUTOQUANT_SWEEP_TEST_TIMEOUT_SCALE``.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import ONE_TRIAL_SWEEP, start_app, stop_when

# signal timing: deadlines scale with AUTOQUANT_SWEEP_TEST_TIMEOUT_SCALE; select them alone with -m signals
pytestmark = [pytest.mark.integration, pytest.mark.signals]

NAME = "autoquant-qwen3_tiny-constrained_score"
FINISHED_CHILDREN = ("SELECT count(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                     "AND t.key = 'mlflow.parentRunId' WHERE r.status = 'FINISHED'")


def _finished_children(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(FINISHED_CHILDREN).fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # the schema is still being created
        return 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_stop_during_the_sweeps_end_is_killed_with_its_line_and_registers_nothing(tmp_path, embedded, sig):
    db = tmp_path / "mlflow.db"
    proc = start_app(ONE_TRIAL_SWEEP, tmp_path)
    stdout, stderr = stop_when(proc, lambda: _finished_children(db) >= 1, sig, "the trial never finished",
                               poll=0.02)
    assert proc.returncode == 128 + sig, (proc.returncode, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    reason = "killed by SIGTERM" if sig == signal.SIGTERM else "interrupted by SIGINT (Ctrl-C)"
    lines = [line for line in stderr.splitlines() if line.startswith("autoquant-sweep:")]
    assert len(lines) == 1 and lines[0].startswith(f"autoquant-sweep: sweep stopped: {reason}: parent run ") \
        and "KILLED, nothing registered" in lines[0], stderr[-3000:]
    assert "best config" not in stdout

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}")
    assert client.search_model_versions(f"name='{NAME}'") == []
    runs = client.search_runs([client.get_experiment_by_name("sensitivity").experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    assert [p.info.status for p in parents] == ["KILLED"]
    assert parents[0].data.tags["failure_reason"] == f"sweep stopped: {reason}"
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # the trial's deferred PNG was drawn whatever the moment of the stop (unless the stop caught the trial)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    if [c.info.status for c in children] == ["FINISHED"]:
        assert list((tmp_path / "multirun").rglob("per_layer.png")), "no PNG drawn"
