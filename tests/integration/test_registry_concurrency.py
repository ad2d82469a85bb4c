"""Two sweeps registering at once leave ``best`` on the better version (issue 17, item 16).

The registry used to read the alias's holder, compare, then set (read-then-set): two sweeps that both beat
the holder both moved the alias, and the last writer won even when its version was the worse one. Here
two processes register against one real SQLite MLflow store, their first alias write held at a file
barrier so that both have read the registry before either writes and the worse one writes last (the
interleaving that lost the better version). The end state must not depend on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import warm

pytestmark = pytest.mark.integration

NAME = "autoquant-qwen3_tiny-constrained_score"

# One racer: its run's objective value, its role ("better" writes first, "worse" waits for it).
RACER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from mlflow import MlflowClient
    from autoquant_sweep.tracking.registry import register_best

    uri, run_id, role, barrier = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    other = "worse" if role == "better" else "better"

    def wait_for(path, timeout=60.0):
        end = time.monotonic() + timeout
        while not path.exists() and time.monotonic() < end:
            time.sleep(0.02)

    class BarrierClient(MlflowClient):
        """The real client; only the timing of the first alias write is arranged."""
        first = True

        def set_registered_model_alias(self, name, alias, version):
            if self.first:
                self.first = False
                (barrier / f"{role}.ready").touch()
                wait_for(barrier / f"{other}.ready")  # both have read the registry
                if role == "worse":
                    wait_for(barrier / "better.set")  # the worse one writes last
                super().set_registered_model_alias(name, alias, version)
                (barrier / f"{role}.set").touch()
                return
            super().set_registered_model_alias(name, alias, version)

    client = BarrierClient(tracking_uri=uri, registry_uri=uri)
    value = client.get_run(run_id).data.metrics["constrained_score"]
    row = {"run_id": run_id, "status": "FINISHED", "constrained_score": value, "recipe_satisfied": 1.0,
           "cache_hit": "false"}
    print(register_best(client, [row], "constrained_score"))
''')


def _run(client, experiment_id: str, value: float, pair: str) -> str:
    run = client.create_run(experiment_id)
    run_id = run.info.run_id
    params = {"model": "qwen3_tiny", "quant_pair": pair, "quant_granularity": "default",
              "dataset": "captions",
              "dataset_size": "small", "effective_bits_budget": "10.0"}
    for key, param in params.items():
        client.log_param(run_id, key, param)
    client.log_metric(run_id, "constrained_score", value)
    client.log_metric(run_id, "recipe_effective_bits", 9.9)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def test_two_sweeps_registering_at_once_leave_best_on_the_better_version(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment("sensitivity")
    better = _run(client, experiment_id, 1.0e-7, "wint8_aint8")
    worse = _run(client, experiment_id, 3.0e-7, "wint4_aint8")
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ}
    procs = [warm.Popen([sys.executable, str(script), uri, run_id, role, str(barrier)], env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for run_id, role in ((better, "better"), (worse, "worse"))]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
    assert (barrier / "worse.set").exists() and (barrier / "better.set").exists()  # the race was run
    versions = {v.run_id: v.version for v in client.search_model_versions(f"name='{NAME}'")}
    assert set(versions) == {better, worse}
    for alias in ("best", "best-b10"):
        holder = client.get_model_version_by_alias(NAME, alias)
        assert holder.version == versions[better], alias
        assert float(holder.tags["objective_value"]) == 1.0e-7
