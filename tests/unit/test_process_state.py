"""The process state a sweep leaves behind is forgotten by one call, so one interpreter can run sweep after
sweep (the test suite's ``run_in_process``, a notebook) as separate processes would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from autoquant_sweep import faults, layout, process_state


def test_reset_restores_the_signal_handlers_and_forgets_the_stop() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a fresh process: ours get installed
    try:
        assert faults.install_signal_handlers()
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        faults.record_stop(faults.Terminated(signal.SIGTERM))
        assert faults.stop_requested()
        process_state.reset_process_state()
        assert not faults.stop_requested() and faults.stop_reason() is None
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is before[1]
        assert not faults.STOP.installed
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_reset_forgets_the_sweep_id_checked_stores_deferred_plots_and_models(tmp_path: Path) -> None:
    from autoquant_sweep.compute import MODEL_CACHE
    from autoquant_sweep.pipeline import DEFERRED_PLOTS
    from autoquant_sweep.tracking import store

    first = layout.sweep_id()
    store.check_sqlite_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "tracking.tracking_uri")
    assert store.CHECKED_STORES
    DEFERRED_PLOTS.start()
    DEFERRED_PLOTS.add(tmp_path, {})
    MODEL_CACHE._unquantized_loss[("key",)] = 1.0
    process_state.reset_process_state()
    assert not store.CHECKED_STORES and not DEFERRED_PLOTS.active and DEFERRED_PLOTS.finish() == 0
    assert not MODEL_CACHE._unquantized_loss
    assert layout.SWEEP_ID_ENV not in os.environ
    assert layout.sweep_id() != first
    process_state.reset_process_state()


def test_every_registered_state_exists_and_a_reset_imports_nothing() -> None:
    import importlib

    for module_name, name, method in process_state.PROCESS_STATE:
        state = getattr(importlib.import_module(module_name), name)
        assert callable(getattr(state, method)), (module_name, name)
    code = ("import sys; from autoquant_sweep import process_state; before = set(sys.modules); "
            "process_state.reset_process_state(); print(sorted(set(sys.modules) - before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_the_imported_heap_is_frozen_once_per_process_and_a_reset_leaves_it() -> None:
    """``compute.spare_full_collections`` freezes what is alive once; a second call (the next trial) and a
    reset change nothing: nothing frozen is a trial's, so it is no process state to forget."""
    code = ("import gc; from autoquant_sweep import process_state; "
            "from autoquant_sweep.compute import spare_full_collections; before = gc.get_freeze_count(); "
            "spare_full_collections(); frozen = gc.get_freeze_count(); spare_full_collections(); "
            "process_state.reset_process_state(); print(before, frozen > 0, gc.get_freeze_count() == frozen)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["0", "True", "True"]
