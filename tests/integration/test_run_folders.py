"""Single runs get a folder per process, as sweeps do (issue 17, item 5).

Two single runs started in the same second shared ``outputs/.../<second>/``: one log for both, and the
report of one replaced by the other's on disk.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests import warm
from tests.conftest import SENSITIVITY_APP

pytestmark = pytest.mark.integration


def test_two_single_runs_started_together_own_their_folder_log_and_report(tmp_path, embedded) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AUTOQUANT_SWEEP_ID"} | {"HYDRA_FULL_ERROR": "0"}
    budgets = (10, 12)
    # two processes at once (two pids, one second); each does the least work that writes a report and a log
    args = [sys.executable, str(SENSITIVITY_APP), "tracking=off", "autoquant.evaluate=false",
            "autoquant.num_calib_samples=8", "autoquant.num_score_samples=8"]
    procs = {bits: warm.Popen([*args, f"autoquant.effective_bits={bits}"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for bits in budgets}
    outputs = {bits: proc.communicate(timeout=300) for bits, proc in procs.items()}
    for bits, proc in procs.items():
        assert proc.returncode == 0, outputs[bits][1][-3000:]
    folders = sorted((tmp_path / "outputs" / "sensitivity" / "qwen3_tiny" / "wint8_aint8" / "default"
                      / "small").iterdir())
    assert len(folders) == 2, folders
    host = socket.gethostname()
    seen = {}
    for folder in folders:
        pid = int(folder.name.split(f"_{host}-", 1)[1].split("-")[0])  # <time>_<host>-<pid>-<random>
        bits = next(b for b, proc in procs.items() if proc.pid == pid)
        manifest = json.loads((folder / "report" / "manifest.json").read_text())
        assert manifest["autoquant"]["effective_bits"] == float(bits)
        log = (folder / "sensitivity.log").read_text()
        assert log.count("report -> ") == 1 and str(folder / "report") in log
        seen[bits] = folder
    assert set(seen) == set(budgets)
