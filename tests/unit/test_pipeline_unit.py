"""Pure parts of the run pipeline: failure kinds, the sweep's end status, the parent id file."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from autoquant_sweep import faults
from autoquant_sweep.errors import CapabilityRefusedError, SensitivityResultError, UserInputError
from autoquant_sweep.pipeline import failure_kind
from autoquant_sweep.tracking.callbacks import PARENT_RUN_FILE, read_parent_run_id, sweep_end_status


@pytest.fixture
def no_stop():
    """A process that is not being stopped: the process's stop state, reset before and after."""
    faults.STOP.reset()
    yield faults.STOP
    faults.STOP.reset()


def test_failure_kind_names_refused_input_and_other_errors() -> None:
    assert failure_kind(CapabilityRefusedError("x")) == "refused"
    assert failure_kind(UserInputError("x")) == "input_error"
    assert failure_kind(SensitivityResultError("x")) == "error"


@pytest.mark.parametrize(
    ("in_flight", "status", "reason"),
    [
        (None, "FINISHED", None),
        (SystemExit(0), "FINISHED", None),
        (RuntimeError("store went away\nmore"), "FAILED", "sweep stopped on an error: store went away"),
        (faults.Terminated(signal.SIGTERM), "KILLED", "sweep stopped: killed by SIGTERM"),
        (faults.Interrupted(), "KILLED", "sweep stopped: interrupted by SIGINT (Ctrl-C)"),
    ],
)
def test_sweep_end_status(no_stop, in_flight, status, reason) -> None:
    assert sweep_end_status(in_flight) == (status, reason)


def test_a_swallowed_stop_still_ends_the_sweep_killed(no_stop) -> None:
    faults.record_stop(faults.Terminated(signal.SIGTERM))
    assert sweep_end_status(None) == ("KILLED", "sweep stopped: killed by SIGTERM")


def test_parent_run_id_file(tmp_path: Path) -> None:
    assert read_parent_run_id(tmp_path) is None
    (tmp_path / PARENT_RUN_FILE).write_text("abc123\n")
    assert read_parent_run_id(tmp_path) == "abc123"
    (tmp_path / PARENT_RUN_FILE).write_text("")
    assert read_parent_run_id(tmp_path) is None
