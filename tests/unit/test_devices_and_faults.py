"""Pure parts of scale-out and fault handling: GPU slot choice, owners, stale staging folders."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from autoquant_sweep import devices, faults


def test_pick_slot_takes_the_first_free_slot_else_round_robin() -> None:
    assert devices.pick_slot(4, lambda i: i >= 2) == (2, True)
    assert devices.pick_slot(2, lambda i: False, job_num=3) == (1, False)
    with pytest.raises(ValueError):
        devices.pick_slot(0, lambda i: True)


def test_two_processes_claim_different_slots_and_a_dead_ones_slot_is_reused(tmp_path: Path) -> None:
    """flock-based claims: a live worker keeps its GPU, a dead worker's GPU is free again."""
    code = ("import sys, time; from pathlib import Path; from autoquant_sweep import devices; "
            "print(devices.claim_slot(2, Path(sys.argv[1])), flush=True); time.sleep(float(sys.argv[2]))")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), "30"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "0"
        second = subprocess.run([sys.executable, "-c", code, str(tmp_path), "0"], capture_output=True,
                                text=True, check=True)
        assert second.stdout.strip() == "1"
    finally:
        holder.kill()
        holder.wait()
    again = subprocess.run([sys.executable, "-c", code, str(tmp_path), "0"], capture_output=True, text=True,
                           check=True)
    assert again.stdout.strip() == "0"


def test_a_released_claim_frees_its_slot_for_the_next_claim(tmp_path: Path) -> None:
    """In one process: a claim is kept until :meth:`GpuClaim.release`, which unlocks the slot's file."""
    from filelock import FileLock, Timeout

    devices.GPU_CLAIM.release()
    try:
        assert devices.claim_slot(2, tmp_path) == 0
        assert devices.claim_slot(2, tmp_path) == 0  # idempotent: one device per process
        with pytest.raises(Timeout):  # held: another claimant (a flock of its own) cannot take slot 0
            FileLock(tmp_path / "gpu0.lock", blocking=False, fallback_to_soft=False, thread_local=False,
                     is_singleton=False).acquire()
        devices.GPU_CLAIM.release()
        assert devices.GPU_CLAIM.slot is None
        other = FileLock(tmp_path / "gpu0.lock", blocking=False, is_singleton=False)
        other.acquire()  # free again
        other.release()
    finally:
        devices.GPU_CLAIM.release()


def test_assign_worker_gpu_is_a_no_op_on_cpu_and_with_the_basic_launcher() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"autoquant": {"device": "auto"}})
    basic_target = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    basic = OmegaConf.create({"launcher": {"_target_": basic_target}, "job": {"num": 0}})
    joblib = OmegaConf.create({"launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher.JoblibLauncher"},
                               "job": {"num": 1}})
    assert devices.assign_worker_gpu(cfg, basic) is None
    assert devices.assign_worker_gpu(cfg, joblib) is None  # no CUDA here (or a single GPU)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_owner_is_dead_only_for_dead_processes_of_this_host() -> None:
    host = socket.gethostname()
    assert not faults.owner_is_dead(faults.owner())
    assert faults.owner_is_dead(f"{host}:{_dead_pid()}")
    assert not faults.owner_is_dead(f"some-other-host:{_dead_pid()}")
    assert not faults.owner_is_dead("garbage")


def test_clean_stale_staging_removes_only_dead_owners_folders(tmp_path: Path) -> None:
    from autoquant_sweep.layout import staging_name

    host = socket.gethostname()
    dead = tmp_path / "a" / f".r.staging-{host}-{_dead_pid()}-0123abcd"
    alive = tmp_path / "b" / staging_name("r")
    result = tmp_path / "c" / "qwen3_tiny_wint8_aint8_small"
    for folder in (dead, alive, result):
        folder.mkdir(parents=True)
    assert faults.staging_owner(alive.name) == f"{host}:{os.getpid()}"
    assert faults.clean_stale_staging(tmp_path) == [dead]
    assert alive.exists() and result.exists()


def test_sigterm_becomes_terminated_with_status_143() -> None:
    code = ("import os, signal, time; from autoquant_sweep import faults; faults.install_signal_handlers()\n"
            "try:\n    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
            "finally:\n    print('finally ran', faults.stop_requested())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 143
    assert "finally ran True" in result.stdout


@pytest.mark.parametrize(("option", "target"), [("slurm", "SlurmLauncher"), ("local_gpus", "JoblibLauncher")])
def test_shipped_launcher_configs_compose(option: str, target: str) -> None:
    from hydra import compose, initialize_config_dir

    from autoquant_sweep.config import register_configs
    from tests.conftest import CONF

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        overrides = ["tracking=off", "hydra/sweeper=optuna", f"hydra/launcher={option}"]
        cfg = compose("sensitivity", overrides=overrides,
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
