"""Processes of their own that start warm: forked from an interpreter that has already imported torch,
transformers, ModelOpt, MLflow, Optuna and Hydra (a zygote, as multiprocessing's forkserver does).

The tests that need a process of their own (exit codes, concurrent processes, a terminal) paid ~20 CPU-s of
third-party imports for each fresh interpreter on the 2-core test VM (``import modelopt.torch.quantization``
alone 18 s), most of the suite's subprocess time; the Ctrl-C-during-``apply`` test keeps a fresh interpreter
(``tests/integration/test_cli_signals.py``). :func:`Popen` / :func:`run` take the same arguments as
:mod:`subprocess`'s and give a process that is the same to the tests: its own pid, signal dispositions,
working directory, environment, ``sys.argv``, std streams on the given pipes / files / terminal, ``__main__``
run by :mod:`runpy`, exit through the interpreter's normal shutdown (atexit handlers, an uncaught
``KeyboardInterrupt`` ending it by SIGINT), ``returncode`` ``-N`` when signal N ended it. Its only difference
from a fresh interpreter: the preloaded third-party modules are already in ``sys.modules`` (none of this
project's), so import-time checks (what a command imports, how fast it starts) keep :mod:`subprocess`, and so
does any command this module cannot start warm (another interpreter, ``-c`` / ``-X`` options, an environment
that changes what the preloaded modules read at import): :func:`Popen` falls back to :class:`subprocess.Popen`
for those.

One zygote per test session, shared by its pytest-xdist workers: the first to need it starts it (under a
file lock), the others connect to its socket; it ends with the session's pytest process.
"""

from __future__ import annotations

import gc
import importlib
import io
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from filelock import FileLock

#: the third-party modules every app process imports (ModelOpt ~18 s, torch ~4 s, MLflow ~4 s of CPU here)
PRELOAD = ("torch", "transformers", "modelopt.torch.quantization", "mlflow", "optuna", "hydra")
#: environment variables the preloaded modules read at import: a command that sets one differently from
#: this process starts fresh, so it sees them as a fresh interpreter would
IMPORT_TIME_ENV = ("CUDA", "TORCH", "OMP_", "MKL_", "PYTHON", "HF_", "TRANSFORMERS", "MODELOPT", "NVIDIA",
                   "LD_")
#: ``AUTOQUANT_SWEEP_TEST_WARM=0`` starts every process fresh (to compare, or to rule this module out)
ENABLED = os.environ.get("AUTOQUANT_SWEEP_TEST_WARM", "1") != "0"
PIPE, DEVNULL, STDOUT = subprocess.PIPE, subprocess.DEVNULL, subprocess.STDOUT


# --- the zygote (runs as ``python tests/warm.py SOCKET SESSION_PID``) ------------------------------------

def _serve(path: str, session: int) -> dict:
    """Preload, then fork one child per request while the process ``session`` lives. Returns only in a
    child, with its request."""
    for name in PRELOAD:
        importlib.import_module(name)
    # the preloaded heap is left out of the children's collections: a collection walking it touched every
    # page, and each touched page was copied into the child (gc.freeze's documented use before fork)
    gc.collect()
    gc.freeze()
    if threading.active_count() > 1:  # a fork keeps only the forking thread: say so where a child may hang
        print(f"warm interpreter: {threading.active_count()} threads after the preload", file=sys.stderr)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(16)
    print("ready", flush=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the client stops reading once it is ready
    children: dict[int, socket.socket] = {}
    while _alive(session):
        ready, _, _ = select.select([listener], [], [], 0.05)
        _reap(children)
        if not ready:
            continue
        conn, _ = listener.accept()
        message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        if not message:  # a client checking that the zygote answers
            conn.close()
            continue
        request = json.loads(message)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            listener.close()
            for other in children.values():
                other.close()
            conn.close()
            _become(request, fds)
            return request
        for fd in fds:
            os.close(fd)
        conn.send(str(pid).encode())
        children[pid] = conn
    listener.close()
    folder = Path(path).parent
    shutil.rmtree(folder, ignore_errors=True)
    Path(f"{folder}.lock").unlink(missing_ok=True)
    sys.exit(0)


def _alive(pid: int) -> bool:
    # not autoquant_sweep.faults.pid_alive: the zygote imports nothing of the project (its children would
    # start with it in sys.modules)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            try:
                conn.send(str(os.waitstatus_to_exitcode(status)).encode())
            except OSError:  # the client went away: nobody waits for this status
                pass
            conn.close()


def _become(request: dict, fds: list[int]) -> None:
    """Make this forked child the process ``request`` describes, as a fresh interpreter would start it."""
    import logging

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    streams = []
    for fd in (1, 2):  # the std streams a fresh interpreter would make for these fds
        binary = open(fd, "wb", buffering=0 if unbuffered else -1, closefd=False)
        streams.append(io.TextIOWrapper(
            binary, encoding="utf-8", errors="strict" if fd == 1 else "backslashreplace",
            line_buffering=not unbuffered and (fd == 2 or os.isatty(fd)), write_through=unbuffered))
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", closefd=False)
    replaced = {id(old): new for old, new in ((sys.stdout, streams[0]), (sys.__stdout__, streams[0]),
                                               (sys.stderr, streams[1]), (sys.__stderr__, streams[1]))}
    # handlers a preloaded module made at import (Optuna's) hold the std stream of their time: the new one
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if type(handler) is logging.StreamHandler and id(handler.stream) in replaced:
                handler.setStream(replaced[id(handler.stream)])
    sys.stdout = sys.__stdout__ = streams[0]
    sys.stderr = sys.__stderr__ = streams[1]
    if "numpy" in sys.modules:  # a fresh interpreter's global numpy generator is seeded from the OS
        sys.modules["numpy"].random.seed()


def _run(request: dict) -> None:
    """Run the request's ``__main__`` in this process; its exit is this interpreter's."""
    import runpy

    kind, target, args = request["kind"], request["target"], request["args"]
    if kind == "module":
        sys.argv = [target, *args]
        sys.path[0] = os.getcwd()
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [target, *args]
        sys.path[0] = str(Path(target).resolve().parent)
        runpy.run_path(target, run_name="__main__")


# --- the client --------------------------------------------------------------------------------------------

def _session() -> int:
    """The pid of this test session's pytest process: an xdist worker's parent, else this process."""
    return os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()


class _Zygote:
    """This session's zygote: its socket, and the environment it was started with (``env``)."""

    def __init__(self) -> None:
        session = _session()
        folder = Path(tempfile.gettempdir()) / f"aqs-warm-{session}"
        folder.mkdir(exist_ok=True)
        self.path = str(folder / "socket")
        started = folder / "env.json"
        with FileLock(f"{folder}.lock"):
            if not self._answers():
                Path(self.path).unlink(missing_ok=True)
                # its own session, as the processes forked from it: a Ctrl-C at the terminal stops the test
                # run (whose tests end the processes they started) without killing the zygote under the
                # other worker; it ends by itself once the session's pytest process is gone
                proc = subprocess.Popen([sys.executable, __file__, self.path, str(session)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                                        start_new_session=True)
                line = proc.stdout.readline()
                proc.stdout.close()
                if line.strip() != "ready":
                    raise RuntimeError(f"the warm interpreter did not start ({proc.wait()})")
                started.write_text(json.dumps(dict(os.environ)))
            self.env = json.loads(started.read_text())

    def _answers(self) -> bool:
        if not os.path.exists(self.path):
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
            try:
                probe.connect(self.path)
            except OSError:
                return False
        return True


_ZYGOTE: _Zygote | None = None
_LOCK = threading.Lock()


def _zygote() -> _Zygote:
    global _ZYGOTE
    with _LOCK:
        if _ZYGOTE is None or not _ZYGOTE._answers():
            _ZYGOTE = _Zygote()
        return _ZYGOTE


def _request(args: list[str], env: dict[str, str], base: dict[str, str]) -> dict | None:
    """What the zygote (started with the environment ``base``) runs for ``args``, or None where only a fresh
    interpreter will do."""
    args = [str(a) for a in args]
    if not args:
        return None
    changed = {k for k in set(env) | set(base) if env.get(k) != base.get(k)}
    if any(k.startswith(IMPORT_TIME_ENV) and k != "PYTHONUNBUFFERED" for k in changed):
        return None
    if os.path.realpath(args[0]) == os.path.realpath(sys.executable):
        if len(args) >= 3 and args[1] == "-m":
            return {"kind": "module", "target": args[2], "args": args[3:]}
        if len(args) >= 2 and not args[1].startswith("-") and args[1].endswith(".py"):
            return {"kind": "path", "target": args[1], "args": args[2:]}
        return None
    # a console script pip made for this interpreter (``autoquant-sweep``)
    script = Path(args[0]) if os.sep in args[0] else None
    if script is None:
        found = shutil.which(args[0], path=env.get("PATH"))
        script = Path(found) if found else None
    if script is None or not script.is_file():
        return None
    with open(script, "rb") as file:
        first = file.readline()
    interpreter = first[2:].strip().decode() if first.startswith(b"#!") else ""
    if not interpreter or os.path.realpath(interpreter) != os.path.realpath(sys.executable):
        return None
    return {"kind": "path", "target": str(script), "args": args[1:]}


def _fd(spec, default: int, mode: str):
    """(child's fd, parent's end or None, fd to close after the fork) for a stdin / stdout / stderr spec."""
    if spec is None:
        return default, None, None
    if spec == PIPE:
        read, write = os.pipe()
        return (read, write, read) if mode == "r" else (write, read, write)
    if spec == DEVNULL:
        fd = os.open(os.devnull, os.O_RDWR)
        return fd, None, fd
    return (spec if isinstance(spec, int) else spec.fileno()), None, None


class Popen:
    """A warm process, with the part of :class:`subprocess.Popen`'s API the tests use (``pid``, ``args``,
    ``returncode``, ``stdin`` / ``stdout`` / ``stderr``, ``poll``, ``wait``, ``communicate``,
    ``send_signal``, ``terminate``, ``kill``, a context manager); a :class:`subprocess.Popen` where the
    command cannot start warm."""

    def __new__(cls, args, **kwargs):
        env = kwargs.get("env")
        if not ENABLED or set(kwargs) - {"cwd", "env", "stdin", "stdout", "stderr", "text"}:
            return subprocess.Popen(args, **kwargs)
        zygote = _zygote()
        request = _request(list(args), dict(os.environ if env is None else env), zygote.env)
        if request is None:
            return subprocess.Popen(args, **kwargs)
        self = super().__new__(cls)
        self._request, self._zygote = request, zygote
        return self

    def __init__(self, args, *, cwd=None, env=None, stdin=None, stdout=None, stderr=None, text=False) -> None:
        self.args = args
        self.returncode: int | None = None
        self._text = text
        env = dict(os.environ if env is None else env)
        request = {**self._request, "cwd": str(cwd or os.getcwd()),
                   "env": {key: str(value) for key, value in env.items()}}
        child_in, self._in, close_in = _fd(stdin if stdin is not None else DEVNULL, 0, "r")
        child_out, self._out, close_out = _fd(stdout, 1, "w")
        if stderr == STDOUT:
            child_err, self._err, close_err = child_out, None, None
        else:
            child_err, self._err, close_err = _fd(stderr, 2, "w")
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._conn.connect(self._zygote.path)
            socket.send_fds(self._conn, [json.dumps(request).encode()], [child_in, child_out, child_err])
            self.pid = int(self._conn.recv(64))
        finally:
            for fd in {close_in, close_out, close_err} - {None}:
                os.close(fd)
        self.stdin = self._open(self._in, "w")
        self.stdout = self._open(self._out, "r")
        self.stderr = self._open(self._err, "r")

    def _open(self, fd: int | None, mode: str):
        if fd is None:
            return None
        return open(fd, mode, encoding="utf-8") if self._text else open(fd, mode + "b")

    def poll(self) -> int | None:
        if self.returncode is None:
            ready, _, _ = select.select([self._conn], [], [], 0)
            if ready:
                self._status()
        return self.returncode

    def _status(self) -> None:
        data = self._conn.recv(64)
        self.returncode = int(data) if data else -9  # the zygote died with it: as killed
        self._conn.close()

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            ready, _, _ = select.select([self._conn], [], [], timeout)
            if not ready:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self._status()
        return self.returncode

    def communicate(self, input=None, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stdin is not None:
            if input:
                self.stdin.write(input)
            self.stdin.close()
            self.stdin = None
        results: dict[str, object] = {}
        readers = [threading.Thread(target=lambda n=name, s=stream: results.__setitem__(n, s.read()),
                                    daemon=True)
                   for name, stream in (("out", self.stdout), ("err", self.stderr)) if stream is not None]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        return results.get("out"), results.get("err")

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> Popen:
        return self

    def __exit__(self, *exc) -> None:
        for stream in (self.stdout, self.stderr, self.stdin):
            if stream is not None and not stream.closed:
                stream.close()
        self.wait()


def run(args, *, cwd=None, env=None, input=None, capture_output=False, stdout=None, stderr=None, text=False,
        timeout: float | None = None, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """:func:`subprocess.run` on a warm process (a fresh one where it cannot start warm)."""
    if capture_output:
        stdout = stderr = PIPE
    if input is not None:
        kwargs["stdin"] = PIPE
    with Popen(args, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=text, **kwargs) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    result = subprocess.CompletedProcess(args, proc.returncode, out, err)
    if check:
        result.check_returncode()
    return result


if __name__ == "__main__":
    _run(_serve(sys.argv[1], int(sys.argv[2])))
