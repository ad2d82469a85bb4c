"""A process the tests start warm (:mod:`tests.warm`, forked from a pre-imported interpreter) is, to a test,
the fresh interpreter it replaces: argv, working directory, environment, std streams, exit status, atexit,
signals; and the commands it cannot start warm get a real fresh interpreter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import warm
from tests.conftest import TIMEOUT_SCALE

pytestmark = pytest.mark.integration

CHILD = """\
import atexit, os, sys, time
atexit.register(lambda: print("atexit ran", flush=True))
print(sys.argv[1:], os.getcwd(), os.environ.get("WARM_TEST"), flush=True)
print(sorted(m for m in sys.modules if m.split(".")[0] == "autoquant_sweep"), file=sys.stderr, flush=True)
if sys.argv[1] == "exit3":
    sys.exit(3)
if sys.argv[1] == "raise":
    raise ValueError("raised in the child")
if sys.argv[1] == "wait":
    print("waiting", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def child(tmp_path: Path) -> Path:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return script


@pytest.mark.parametrize(("arg", "code"), [("ok", 0), ("exit3", 3), ("raise", 1)])
def test_a_warm_process_has_its_argv_folder_environment_exit_status_and_atexit(child: Path, tmp_path: Path,
                                                                               arg: str, code: int) -> None:
    (tmp_path / "cwd").mkdir()
    env = {**os.environ, "WARM_TEST": "set"}
    proc = warm.Popen([sys.executable, str(child), arg, "two"], cwd=tmp_path / "cwd", env=env,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert isinstance(proc, warm.Popen)  # started warm, not the fallback
    out, err = proc.communicate(timeout=60 * TIMEOUT_SCALE)
    assert proc.returncode == code, err
    assert out.splitlines() == [f"['{arg}', 'two'] {tmp_path / 'cwd'} set", "atexit ran"]
    assert err.splitlines()[0] == "[]"  # nothing of this project was imported before the child's own code
    assert ("ValueError: raised in the child" in err) == (arg == "raise")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signal_ends_a_warm_process_as_it_ends_a_fresh_one(child: Path, sig: int) -> None:
    proc = warm.Popen([sys.executable, str(child), "wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      text=True)
    assert proc.stdout.readline().strip().startswith("['wait']")
    assert proc.stdout.readline().strip() == "waiting"
    assert proc.poll() is None
    proc.send_signal(sig)
    proc.communicate(timeout=30 * TIMEOUT_SCALE)
    assert proc.returncode == -sig


def test_run_captures_and_times_out_like_subprocess_run(child: Path) -> None:
    result = warm.run([sys.executable, str(child), "ok"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout.splitlines()[-1]) == (0, "atexit ran")
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        warm.run([sys.executable, str(child), "wait"], capture_output=True, text=True, timeout=2)
    assert time.monotonic() - started < 30 * TIMEOUT_SCALE


def test_what_cannot_start_warm_starts_fresh(child: Path) -> None:
    """``-c`` / ``-X`` options and an environment the preloaded modules read at import get a real fresh
    interpreter (a :class:`subprocess.Popen`)."""
    for args, env in [([sys.executable, "-c", "print(1)"], None),
                      ([sys.executable, "-X", "importtime", str(child), "ok"], None),
                      ([sys.executable, str(child), "ok"], {**os.environ, "CUDA_VISIBLE_DEVICES": "7"})]:
        proc = warm.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert isinstance(proc, subprocess.Popen), args
        proc.communicate(timeout=60 * TIMEOUT_SCALE)
        assert proc.returncode == 0
