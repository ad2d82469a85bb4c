"""What a process remembers from one run to the next, and how to forget it.

A sweep process keeps a little state for its own life: the stop signals it received and the handlers it
replaced (:data:`autoquant_sweep.faults.STOP`), its sweep id (:data:`autoquant_sweep.layout.SWEEP_ID`),
its GPU slot (:data:`autoquant_sweep.devices.GPU_CLAIM`), the SQLite stores it checked
(:data:`autoquant_sweep.tracking.store.CHECKED_STORES`) and the embedded assets it verified
(:data:`autoquant_sweep.embedded.assets.VERIFIED_TREES`), the trial PNGs it defers to the sweep's end
(:data:`autoquant_sweep.pipeline.DEFERRED_PLOTS`), its pristine models and batches
(:data:`autoquant_sweep.compute.MODEL_CACHE`) and the notes it logs once
(:data:`autoquant_sweep.sensitivity.EXPLAINED_WARNINGS`,
:data:`autoquant_sweep.user_data.EVALUATION_OFF_LOGGED`,
:data:`autoquant_sweep.tracking.store.LOGGED_STORES`). Each is an object of its module with a reset.

:func:`reset_process_state` resets them all, so one interpreter (a notebook, the test suite) can run sweep
after sweep as separate processes would. It imports nothing: state of a module never imported is fresh.

Example:
    >>> from autoquant_sweep import layout
    >>> first = layout.sweep_id()
    >>> reset_process_state()
    >>> layout.sweep_id() != first
    True
    >>> reset_process_state()
"""

from __future__ import annotations

import sys

#: ``(module, object, method)``: each piece of process state and the call that forgets it
PROCESS_STATE = (
    ("autoquant_sweep.faults", "STOP", "reset"),
    ("autoquant_sweep.layout", "SWEEP_ID", "reset"),
    ("autoquant_sweep.devices", "GPU_CLAIM", "release"),
    ("autoquant_sweep.tracking.store", "CHECKED_STORES", "clear"),
    ("autoquant_sweep.tracking.store", "LOGGED_STORES", "clear"),
    ("autoquant_sweep.embedded.assets", "VERIFIED_TREES", "clear"),
    ("autoquant_sweep.pipeline", "DEFERRED_PLOTS", "reset"),
    ("autoquant_sweep.compute", "MODEL_CACHE", "clear"),
    ("autoquant_sweep.sensitivity", "EXPLAINED_WARNINGS", "clear"),
    ("autoquant_sweep.user_data", "EVALUATION_OFF_LOGGED", "clear"),
)


def reset_process_state() -> None:
    """Forget what this process remembers between runs (see the module's docstring)."""
    for module_name, name, method in PROCESS_STATE:
        module = sys.modules.get(module_name)
        if module is not None:
            getattr(getattr(module, name), method)()
