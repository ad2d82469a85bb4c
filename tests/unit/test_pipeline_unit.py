"""Pure parts of the run pipeline: failure kinds, the sweep's end status, the parent id file."""

from __future__ import annotations

import os
import signal
import sys
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


def test_a_stop_swallowed_before_the_sweeps_end_still_exits_with_its_status(no_stop, monkeypatch, capsys):
    """A SIGINT recorded by the handler whose exception something swallowed on its way up: the sweep's end
    says it stopped, then exits 130 as a Ctrl-C'd sweep does (an exit status 0 would read as success)."""
    from omegaconf import OmegaConf

    from autoquant_sweep.process_state import reset_process_state
    from autoquant_sweep.tracking.callbacks import MlflowSweepCallback
    from autoquant_sweep.tracking.store import PARENT_RUN_ENV

    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    cfg = OmegaConf.create({"experiment": "e", "tracking": {"mode": "off"},
                            "autoquant": {"objective": "total_sensitivity"}})
    callback = MlflowSweepCallback()
    callback.on_multirun_start(cfg)
    no_stop.pending, no_stop.reason = signal.SIGINT, "interrupted by SIGINT (Ctrl-C)"
    try:
        with pytest.raises(faults.Interrupted) as stopped:
            callback.on_multirun_end(cfg)
    finally:
        reset_process_state()  # what the sweep's start set up (its id, the deferred plots)
    assert stopped.value.code == 130
    assert "sweep stopped: interrupted by SIGINT (Ctrl-C); nothing registered" in capsys.readouterr().err


def test_a_stop_that_landed_in_a_finalizer_is_raised_once(stop_handlers):
    """A SIGTERM landing in a finalizer is retried 20 ms later (raised there, it would be lost). Raised
    sooner, at a check point, it is not raised a second time by that retry, in the middle of the cleanup
    the first one started."""
    import time

    class Finalized:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)

    Finalized()  # collected at once: the signal lands in its __del__
    assert faults.stop_requested()
    with pytest.raises(faults.Terminated):
        faults.check_stop()
    time.sleep(0.1)  # the retry would have fired by now
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_stop_lost_in_a_deep_finalizer_is_raised_after_it(stop_handlers, capsys):
    """A SIGTERM landing deep inside a finalizer (below the frames the handler looks at) is raised there
    and ignored by Python ("Exception ignored in ..."): it is raised again right after, never lost (a
    Ctrl-C'd ``apply`` exited 0 that way in a loaded test run)."""
    import time

    def deep(levels: int) -> None:
        if levels:
            return deep(levels - 1)
        os.kill(os.getpid(), signal.SIGTERM)

    class Finalized:
        def __del__(self) -> None:
            deep(5)

    hook = stop_handlers.replaced_unraisablehook  # the one before ours (pytest's)
    assert hook is not None and sys.unraisablehook is not hook
    with pytest.raises(faults.Terminated):
        Finalized()  # collected at once: the signal lands in its __del__, five calls down
        time.sleep(1)  # the stop is raised here, 20 ms after
    assert "Exception ignored" not in capsys.readouterr().err
    stop_handlers.reset()
    assert sys.unraisablehook is hook
