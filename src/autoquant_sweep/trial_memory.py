"""Where a trial's model copy comes from, and the peak memory that is the trial's own.

The pristine model of a process (:class:`autoquant_sweep.compute.ModelCache`) lives on the CPU whatever
the run device (:data:`PRISTINE_DEVICE`): on CUDA it must not sit on the GPU beside the trial's copy, so a
trial holds one model's worth of GPU memory. Each trial's copy is built straight on the run device
(:func:`device_copy`), without a second CPU copy on the way. Restoring that way was measured against
reloading the checkpoint from disk (``benchmarks/bench_restore.py``, CPU, each way with a first read of
every tensor): the copy is 2.5-2.8x faster on the embedded tiny models (0.04 against 0.10 s), while on a
random 1024 x 8 Qwen3 in bf16 (312 MB) the reload is faster (0.13 against 0.43 s): transformers maps the
safetensors file, so a reload copies nothing until a weight is written. On CUDA, where real checkpoints
run, a reload moves the same bytes to the GPU as the copy does (the CPU model is itself mapped from the
file) and parses the checkpoint on top, so the copy is kept for every device.

Peak memory (the manifest's ``peak_memory_mb``, its ``memory_kind`` says which):

* ``cuda_max_allocated``: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at the
  trial's start (before its copy reaches the GPU), read after its evaluation: the trial's own peak, as the
  previous trial's copy is released before the next starts;
* ``cpu_trial_peak_rss_delta``: on Linux, the process's peak resident set during the trial (``VmHWM`` of
  ``/proc/self/status``, reset at the trial's start by writing ``5`` to ``/proc/self/clear_refs``) minus
  the resident set at its start: what the trial added on top of what the process already held (the
  pristine model, the libraries, earlier trials' freed-but-kept heap pages are not counted; reused ones
  are not counted either, so it can understate). ``tracemalloc`` would not see tensors (torch allocates
  them outside Python's allocator);
* ``cpu_max_rss``: where the peak cannot be reset (not Linux), ``ru_maxrss``: the process's peak since
  it started, not the trial's.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


# Where the pristine model of a process is kept, whatever the run device: the GPU holds the trial's copy only
PRISTINE_DEVICE = "cpu"


def device_copy(model: Any, device: str) -> Any:
    """A deep copy of ``model`` whose parameters and buffers are on ``device``.

    Off the model's own device, each tensor is copied straight to ``device`` (``copy.deepcopy`` with those
    copies in its memo), so no second full copy is built where the model lives; tied weights stay tied.
    """
    import copy
    import itertools

    import torch

    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    if first is None or first.device == torch.device(device):
        return copy.deepcopy(model)
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if id(tensor) in memo:
            continue
        moved = tensor.detach().to(device, copy=True)
        if isinstance(tensor, torch.nn.Parameter):
            moved = torch.nn.Parameter(moved, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = moved
    return copy.deepcopy(model, memo).to(device)


def _status_kb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


class TrialMemory:
    """Peak memory of one trial on its device: :meth:`start` at the trial's start, :meth:`peak_mb` at its
    end (module docstring for what the figure is)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._start_kb: float | None = None

    def start(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats()
            return
        try:
            _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
        except OSError:
            self._start_kb = None
            return
        self._start_kb = _status_kb("VmRSS")

    def peak_mb(self) -> tuple[float, str]:
        """``(megabytes, memory_kind)``."""
        if self.device.startswith("cuda"):
            import torch

            return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
        peak_kb = _status_kb("VmHWM")
        if self._start_kb is not None and peak_kb is not None:
            return max(peak_kb - self._start_kb, 0.0) / 1024, "cpu_trial_peak_rss_delta"
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"
