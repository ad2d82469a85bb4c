"""Which device torch sees, and one GPU per launcher worker on a multi-GPU node.

The **GPU probe** (:func:`cuda_available`, :func:`device_view`) is the one place the project asks
whether a GPU is there. It first answers without importing torch (about 2 s): a CPU build of torch,
or a Linux machine without a GPU driver's device files, never sees a GPU; only otherwise torch decides.
So ``validate``, the search space and a refused plan on a CPU machine stay well under a second.

**GPU slots** (``hydra/launcher=joblib``):

Each worker process claims the lowest free GPU *slot* with an exclusive ``filelock`` (``flock``) on
``<lock dir>/gpu<N>.lock``, held for the life of the process (the kernel releases it when the process
dies, even on SIGKILL), then calls ``torch.cuda.set_device(N)``. Two workers of one node never share a
slot while both live; a replacement worker takes the slot its dead predecessor freed. When every slot
is taken (more workers than GPUs), the worker falls back to ``hydra.job.num % device_count``.

Nothing happens on CPU, with one GPU, or with the basic launcher (one process). Under submitit / SLURM
each task already sees only its own GPUs (``gpus_per_task``), so it keeps ``cuda:0``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

LOCK_DIR_ENV = "AUTOQUANT_SWEEP_GPU_LOCK_DIR"


class GpuClaim:
    """The GPU slot this process claimed (:func:`claim_slot`) and its held lock, for the life of the
    process or until :meth:`release` (one per process: :data:`GPU_CLAIM`).

    Example:
        >>> claim = GpuClaim()
        >>> claim.slot is None
        True
        >>> claim.release()  # nothing held: nothing to do
    """

    def __init__(self) -> None:
        self.slot: int | None = None
        self._lock: FileLock | None = None  # None for a shared fallback slot

    def hold(self, slot: int, lock: FileLock | None) -> None:
        self.slot, self._lock = slot, lock

    def release(self) -> None:
        """Give the slot back (its lock file is unlocked): the next :func:`claim_slot` claims anew."""
        if self._lock is not None:
            self._lock.release(force=True)
        self.slot, self._lock = None, None


#: this process's GPU slot
GPU_CLAIM = GpuClaim()


def _torch_has_gpu_backend() -> bool:
    """Whether the installed torch is a CUDA (or ROCm) build, from its library files (no import)."""
    spec = importlib.util.find_spec("torch")  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        return False
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return any(any(lib.glob(pattern)) for pattern in ("*torch_cuda*", "*torch_hip*"))


def _gpu_driver_present() -> bool:
    """Whether this machine shows a GPU driver's device files (NVIDIA, WSL's ``/dev/dxg``, ROCm's
    ``/dev/kfd``). Off Linux the files say nothing, so the answer is yes (torch decides)."""
    if not sys.platform.startswith("linux"):
        return True
    dev = Path("/dev")
    return any(dev.glob("nvidia*")) or (dev / "dxg").exists() or (dev / "kfd").exists()


def torch_could_see_a_gpu() -> bool:
    """False when torch certainly sees no GPU (a CPU build, or no GPU driver); answered without torch."""
    return _torch_has_gpu_backend() and _gpu_driver_present()


def cuda_available() -> bool:
    """Whether torch sees a CUDA device; imports torch only when :func:`torch_could_see_a_gpu`."""
    if not torch_could_see_a_gpu():
        return False
    import torch

    return torch.cuda.is_available()


def device_view(requested: str) -> str:
    """The device a capability view is judged for: ``auto`` -> what torch sees, else as asked.

    Unlike :func:`autoquant_sweep.modeling.resolve_device` this does not require the device to exist
    (``validate --device cuda`` shows the CUDA view on a CPU machine).

    Example:
        >>> device_view("cuda")
        'cuda'
    """
    if requested != "auto":
        return requested
    return "cuda" if cuda_available() else "cpu"


def pick_slot(n_devices: int, try_claim: Callable[[int], bool], job_num: int = 0) -> tuple[int, bool]:
    """The first slot in ``0..n_devices-1`` that ``try_claim`` grants, else ``job_num % n_devices``.

    Returns ``(slot, exclusive)``.

    Example:
        >>> taken = {0}
        >>> pick_slot(2, lambda i: i not in taken)
        (1, True)
        >>> pick_slot(2, lambda i: False, job_num=5)
        (1, False)
    """
    if n_devices <= 0:
        raise ValueError("pick_slot needs at least one device")
    for slot in range(n_devices):
        if try_claim(slot):
            return slot, True
    return job_num % n_devices, False


def default_lock_dir() -> Path:
    """``$AUTOQUANT_SWEEP_GPU_LOCK_DIR``, else ``<tmp>/autoquant-sweep-gpu-<uid>`` (one per node and user)."""
    explicit = os.environ.get(LOCK_DIR_ENV)
    return Path(explicit) if explicit else Path(tempfile.gettempdir()) / f"autoquant-sweep-gpu-{os.getuid()}"


def claim_slot(n_devices: int, lock_dir: Path, job_num: int = 0) -> int:
    """Claim a GPU slot for this process (idempotent: a process keeps its first slot)."""
    if GPU_CLAIM.slot is not None:
        return GPU_CLAIM.slot
    lock_dir.mkdir(parents=True, exist_ok=True)
    # a soft lock (a marker file) would outlive a killed worker and keep its slot taken: flock only
    locks = {slot: FileLock(lock_dir / f"gpu{slot}.lock", blocking=False, fallback_to_soft=False)
             for slot in range(n_devices)}

    def try_claim(slot: int) -> bool:
        try:
            locks[slot].acquire()
        except Timeout:
            return False
        return True

    slot, exclusive = pick_slot(n_devices, try_claim, job_num)
    # a shared fallback slot is kept too: one device per process
    GPU_CLAIM.hold(slot, locks[slot] if exclusive else None)
    if not exclusive:
        log.warning("all %d GPU slots are taken; sharing cuda:%d (job %d)", n_devices, slot, job_num)
    return slot


def assign_worker_gpu(cfg: Any, hydra_cfg: Any) -> int | None:
    """In a multi-process launcher on a node with several GPUs, pin this worker to one (returns it)."""
    launcher = str(getattr(getattr(hydra_cfg, "launcher", None), "_target_", "") or "")
    if "joblib" not in launcher.lower():
        return None
    device = str(cfg.autoquant.device)
    if device == "cpu":
        return None
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n < 2:
        return None
    slot = claim_slot(n, default_lock_dir(), int(hydra_cfg.job.num or 0))
    torch.cuda.set_device(slot)
    log.info("worker pid %d uses cuda:%d of %d (job %s)", os.getpid(), slot, n, hydra_cfg.job.num)
    return slot
