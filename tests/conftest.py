"""Shared fixtures: the repo's conf tree, in-process Hydra composition, the embedded assets, the CLI.

Built once per session and shared by the xdist workers (:func:`shared_once`): the reference studies that
the tests reading a study's results use (``reference_study``; a test that writes copies it first) and a
migrated empty MLflow store (``new_mlflow_store``). Helpers for the tests with processes of their own
(forked from the session's warm interpreter, :mod:`tests.warm`, unless they check imports): signal
timing (:func:`start_app`, :func:`stop_when`) and one-line error cases (:func:`run_at_once`,
:func:`one_error_line`); every deadline scales with ``AUTOQUANT_SWEEP_TEST_TIMEOUT_SCALE``.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from tests import warm

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "src" / "autoquant_sweep" / "conf"
SENSITIVITY_APP = REPO / "experiments" / "sensitivity.py"
INTEGRATION = REPO / "tests" / "integration"
#: test deadlines are multiplied by ``AUTOQUANT_SWEEP_TEST_TIMEOUT_SCALE`` (e.g. 2 on a loaded machine)
TIMEOUT_SCALE = float(os.environ.get("AUTOQUANT_SWEEP_TEST_TIMEOUT_SCALE", "1"))
# Runs follow the working directory (paths.root_dir); tests run them in temporary folders, so the embedded
# assets are pinned to the checkout's cache: built once, reused by every test and subprocess.
os.environ.setdefault("AUTOQUANT_SWEEP_CACHE", str(REPO / ".cache" / "autoquant_sweep"))
# A test run started in the background of a non-interactive shell inherits SIGINT ignored, and so does every
# process its tests start: their Ctrl-C then does nothing (exit 0 where 130 is asserted). The tests' processes
# get Ctrl-C as from a terminal instead: a handler is reset to the default at exec, an ignored signal is not.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# pytest-xdist runs its workers side by side on this machine's cores, and torch gives each one an intra-op
# pool as wide as the machine: with OpenMP's threads spinning against each other a tiny-model run took twice
# the wall time and CPU (test_every_choice_tracked + test_export with -n 2 on 2 cores: 99 s -> 51 s). Each
# worker, and every interpreter it starts, gets its share of the cores instead (before torch is imported).
# Only in a worker (the controller's environment is every worker's): an OMP_NUM_THREADS the caller set wins.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The fast loop (``-m "not integration"``) deselects every module of ``tests/integration`` (each is
    marked: ``test_project_files.py`` guards it), so it does not import them (MLflow, Hydra composes at
    import: 5-6 s of collection)."""
    if (collection_path == INTEGRATION
            and " ".join(str(config.getoption("markexpr", "") or "").split()) == "not integration"):
        return True
    return None


#: the files that take longest on 2 cores (wall seconds measured per file, about 30-90 s each), started first:
#: pytest-xdist's ``--dist loadfile`` hands files out in collection order, so a long file collected last
#: (test_wheel_install) ran alone at the end while the other worker sat idle
LONGEST_FIRST = ("test_optuna_sweep.py", "test_ui_browser.py", "test_mix_tracking.py", "test_faults.py",
                 "test_wheel_install.py", "test_scale_out.py", "test_granularity_runs.py",
                 "test_study_identity.py", "test_tracking.py", "test_progress.py", "test_run_folders.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Collect the :data:`LONGEST_FIRST` files first (a stable sort: every other test keeps its place)."""
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)) if item.path.parent == INTEGRATION
               else len(rank))


def shared_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder ``name``, built once per test session by ``build(folder)`` and shared by every xdist worker.

    pytest-xdist's documented lock-and-share pattern: the workers' temp roots share one parent; the first
    worker to take the lock builds, the others wait and reuse. Without xdist the folder is this session's own
    (the parent then holds earlier sessions' folders). ``COMPLETE`` marks a finished build: a build that
    failed in one worker is retried by the next, never half-used.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / name
    with FileLock(f"{folder}.lock"):
        if not (folder / "COMPLETE").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / "COMPLETE").touch()
    return folder


@pytest.fixture(scope="session")
def mlflow_template() -> Path:
    """The migrated empty MLflow SQLite store every new store is copied from
    (:func:`autoquant_sweep.tracking.store.empty_mlflow_store`: built once per MLflow version into the
    embedded cache, ``store-templates/``)."""
    from autoquant_sweep.tracking.store import empty_mlflow_store

    return empty_mlflow_store()


@pytest.fixture(scope="session")
def new_mlflow_store(mlflow_template: Path) -> Callable[[Path], str]:
    """``new_mlflow_store(path)``: a copy of the migrated empty store at ``path``; returns its URI. A store
    that exists is opened as is, so runs and clients pointed there skip MLflow's schema creation."""

    def _copy(path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mlflow_template, path)
        return f"sqlite:///{path}"

    return _copy


@pytest.fixture
def stop_handlers() -> Iterator[Any]:
    """This process's stop handlers (:func:`autoquant_sweep.faults.install_signal_handlers`), installed as in
    a fresh process (SIGTERM at its default first, so ours get installed); the stop state is forgotten and
    the previous handlers put back after the test. Yields :data:`autoquant_sweep.faults.STOP`."""
    from autoquant_sweep import faults

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        assert faults.install_signal_handlers()
        yield faults.STOP
    finally:
        faults.STOP.reset()
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def embedded():
    """The embedded tiny checkpoints and captions (built once into the project cache, then reused)."""
    from autoquant_sweep.embedded import ensure_embedded_assets

    return ensure_embedded_assets(verbose=False)


@pytest.fixture
def compose_cfg() -> Callable[..., object]:
    """Compose ``conf/sensitivity.yaml`` in-process, as Hydra would (tracking off unless overridden)."""
    from hydra import compose, initialize_config_dir

    from autoquant_sweep.config import register_configs

    register_configs()

    def _compose(overrides: Sequence[str] = ()) -> object:
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            return compose("sensitivity", overrides=["tracking=off", *overrides])

    return _compose


def study_name(overrides: Sequence[str] = (), space: Sequence[str] = ()) -> str:
    """The Optuna study name of ``-m hydra/sweeper=optuna *overrides *space`` (``space``: the sweep
    overrides, e.g. ``quant_pair=choice(a,b)``), resolved by the conf's own ``hydra.sweeper.study_name``."""
    return _study_name(tuple(overrides), tuple(space))


@functools.cache  # a compose costs ~0.3 s; the identity tests ask for the same baseline name many times
def _study_name(overrides: tuple[str, ...], space: tuple[str, ...]) -> str:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from autoquant_sweep.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("sensitivity", overrides=["hydra/sweeper=optuna", *overrides], return_hydra_config=True)
    with open_dict(cfg):  # compose() takes no sweep overrides: they reach the name as a sweep's would
        cfg.hydra.overrides.task = [*overrides, *space]
    return str(OmegaConf.select(cfg, "hydra.sweeper.study_name"))


def study_stores(folder: Path) -> list[str]:
    """Overrides putting a sweep's Optuna study and MLflow store (with its artifacts) in ``folder``; the
    sweep-end mix is off (it has its own test, test_mix_tracking)."""
    return [
        f"hydra.sweeper.storage=sqlite:///{folder}/optuna.db",
        f"tracking.tracking_uri=sqlite:///{folder}/mlflow.db",
        f"tracking.artifact_location={folder}/mlruns",
        "autoquant.mix=false",
    ]


#: the reference study's grid: a pair refused on CPU, and a weight-only pair whose two activation
#: granularities are no-ops of its ``default`` (one computed trial, two cache hits, three refused trials)
REFERENCE_SPACE = ["quant_pair=choice(wint8_afp16,wfp4_afp16)",
                   "quant_granularity=choice(a_per_token_dynamic,default,a_per_tensor_static)"]


@pytest.fixture(scope="session")
def reference_study(tmp_path_factory: pytest.TempPathFactory, embedded, new_mlflow_store) -> dict[str, Path]:
    """The session's reference studies, computed once and shared by every xdist worker. Read them; a test
    that writes gets its own copy (:func:`copy_study`).

    ``default``: the default study (``-m hydra/sweeper=optuna``, 5 trials), then its Pareto variant
    (``-m search=pareto``, 4 trials) in the same stores, whose trials are cache hits of the first sweep's.
    ``space``: a grid over :data:`REFERENCE_SPACE` (6 trials). Each sweep's stdout / stderr are kept in the
    folder as ``<sweep>.stdout`` / ``<sweep>.stderr`` (:func:`sweep_output`).
    """

    def sweep(folder: Path, name: str, args: list[str]) -> None:
        if not folder.exists():  # a migrated store: the sweep skips its schema creation (~7 CPU s)
            new_mlflow_store(folder / "mlflow.db")
        result = run_in_process(["-m", *args, *study_stores(folder)], cwd=folder)
        (folder / f"{name}.stdout").write_text(result.stdout)
        (folder / f"{name}.stderr").write_text(result.stderr)
        assert result.returncode == 0, f"reference sweep {name}: {result.stderr[-3000:]}"

    def build(root: Path) -> None:
        sweep(root / "default", "study", ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=5"])
        sweep(root / "default", "pareto", ["search=pareto", "hydra.sweeper.n_trials=4"])
        sweep(root / "space", "study", ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=7", *REFERENCE_SPACE])

    root = shared_once(tmp_path_factory, "reference-study", build)
    return {"default": root / "default", "space": root / "space"}


def sweep_output(folder: Path, name: str = "study") -> subprocess.CompletedProcess:
    """The kept result of the reference sweep ``name`` in ``folder`` (exit status 0: it was checked)."""
    return subprocess.CompletedProcess([name], 0, (folder / f"{name}.stdout").read_text(),
                                       (folder / f"{name}.stderr").read_text())


def copy_study(source: Path, target: Path) -> Path:
    """A copy of a study folder (SQLite stores, artifacts, sweep folders) that shares nothing with it: every
    text cell of its stores that names ``source`` (MLflow's artifact locations, Optuna's attrs) names
    ``target``, so what a test writes through the copy lands in the copy."""
    import sqlite3

    shutil.copytree(source, target)
    for db in target.glob("*.db"):
        with sqlite3.connect(db) as con:
            tables = [row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                columns = con.execute(f'PRAGMA table_info("{table}")').fetchall()
                text = [name for _, name, kind, *_ in columns if kind.upper().startswith(("TEXT", "VARCHAR"))]
                for column in text:
                    con.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                                f'WHERE "{column}" LIKE ?', (str(source), str(target), f"%{source}%"))
        con.close()
    return target


def run_app(
    args: Sequence[str],
    cwd: Path,
    timeout: int = 300,
    env: dict | None = None,
    script: Path = SENSITIVITY_APP,
) -> subprocess.CompletedProcess:
    """Run ``experiments/sensitivity.py`` (or another script) in a process of its own: forked from the
    session's warm interpreter (:mod:`tests.warm`), which is a fresh interpreter to the test."""
    # as from a shell: no sweep id inherited from this (pytest) process
    inherited = {k: v for k, v in os.environ.items() if k != "AUTOQUANT_SWEEP_ID"}
    full_env = {**inherited, "HYDRA_FULL_ERROR": "0", **(env or {})}
    return warm.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_in_process(args: Sequence[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the Hydra app (``experiments/sensitivity.py args``) in this interpreter, as :func:`run_app` runs
    it in a fresh one: the same ``main``, command line, working directory and shell environment, its exit
    status and its stdout / stderr captured; torch and ModelOpt are imported once per worker, not per run
    (:func:`in_this_interpreter` says what is put back).

    For the tests whose assertions are about stores, folders and messages; exit codes under signals,
    output on a terminal, import-time checks and concurrent processes keep :func:`run_app` /
    :func:`start_app`.
    """
    from autoquant_sweep.hydra_app import main

    argv = [str(SENSITIVITY_APP), *map(str, args)]

    def call() -> None:
        saved, sys.argv = sys.argv, argv
        try:
            main()
        finally:
            sys.argv = saved

    return in_this_interpreter(argv, call, cwd, env)


def cli_in_process(args: Sequence[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``autoquant-sweep args`` (``autoquant_sweep.cli.main``) in this interpreter, as
    :func:`run_in_process` runs the Hydra app."""
    from autoquant_sweep.cli import main

    argv = list(map(str, args))
    return in_this_interpreter(["autoquant-sweep", *argv], lambda: main(argv), cwd, env)


def in_this_interpreter(argv: list[str], call: Callable[[], int | None], cwd: Path, env: dict | None
                        ) -> subprocess.CompletedProcess:
    """``call()`` as a command ``argv`` run from a shell in ``cwd`` (plus ``env``): its return value or
    ``SystemExit`` is the exit status, its stdout / stderr (and every console log handler's) are captured.

    Put back afterwards: the working directory, the environment, the root logger's handlers and level,
    console handlers made before (Optuna's, pointed at the captured streams for the call), Hydra's global
    state, MLflow's tracking / registry URIs, and the project's own process state
    (:func:`autoquant_sweep.process_state.reset_process_state`: stop signals and their handlers, sweep id,
    GPU slot, checked stores, deferred plots, model cache), reset before the call too.
    """
    import contextlib
    import io
    import logging

    import mlflow
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from autoquant_sweep.process_state import reset_process_state

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_uri = os.environ.get("MLFLOW_TRACKING_URI")
    out, err = io.StringIO(), io.StringIO()
    code: int = 0
    # handlers made before the call (Optuna's, at its import) hold the console stream they were made with:
    # pointed at the captured streams meanwhile, as a fresh interpreter's would write to its stderr
    consoles = {id(sys.stdout): out, id(sys.__stdout__): out, id(sys.stderr): err, id(sys.__stderr__): err}
    loggers = [root, *(logger for logger in logging.Logger.manager.loggerDict.values()
                       if isinstance(logger, logging.Logger))]
    swapped = [(handler, handler.setStream(consoles[id(handler.stream)]))
               for logger in loggers for handler in logger.handlers
               if type(handler) is logging.StreamHandler and id(handler.stream) in consoles]
    reset_process_state()
    os.environ.pop("AUTOQUANT_SWEEP_ID", None)
    os.environ.update({"HYDRA_FULL_ERROR": "0", **(env or {})})
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = call() or 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if exc.code is not None and not isinstance(exc.code, int):
                    print(exc.code, file=sys.stderr)
    finally:
        os.chdir(saved_cwd)
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for handler, stream in swapped:
            handler.setStream(stream)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        reset_process_state()
        mlflow.set_tracking_uri(saved_uri)
        mlflow.set_registry_uri(saved_uri)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


#: a one-trial Optuna sweep that computes (no cache hit): the signal tests stop it at one point or another
ONE_TRIAL_SWEEP = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=1", "quant_pair=choice(wint8_aint8)",
                   "quant_granularity=choice(default)", "autoquant.cache=false"]


def start_app(args: Sequence[str], cwd: Path, stdout: int = subprocess.PIPE) -> subprocess.Popen:
    """Start ``experiments/sensitivity.py`` in a process of its own (:mod:`tests.warm`) as from a shell (no
    MLflow store or sweep id inherited from this process), without waiting for it."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AUTOQUANT_SWEEP_ID")}
    return warm.Popen([sys.executable, str(SENSITIVITY_APP), *args], cwd=cwd,
                      env={**env, "HYDRA_FULL_ERROR": "0"}, stdout=stdout, stderr=subprocess.PIPE,
                      text=True)


def stop_when(proc: subprocess.Popen, ready: Callable[[], object], sig: int, what: str, *,
              within: float = 300, after: float = 0.0, poll: float = 0.05) -> tuple[str | None, str]:
    """Send ``sig`` to ``proc`` once ``ready()`` is true (polled every ``poll`` s for ``within`` s, scaled),
    ``after`` s later; wait for the process to end and return its ``(stdout, stderr)``. A process that ends
    before, or never gets ready, fails the test with its stderr; it is never left running."""
    try:
        deadline = time.monotonic() + within * TIMEOUT_SCALE
        while not ready():
            if proc.poll() is not None:
                stderr = proc.communicate()[1] or ""
                pytest.fail(f"{what}: ended before the signal ({proc.returncode}): {stderr[-3000:]}")
            assert time.monotonic() < deadline, f"{what}: never got to the point to stop"
            time.sleep(poll)
        time.sleep(after)
        proc.send_signal(sig)
        return proc.communicate(timeout=120 * TIMEOUT_SCALE)
    finally:
        if proc.poll() is None:
            proc.kill()


ERROR = "autoquant-sweep: error:"  # how every error the project finds starts, one line on stderr


def one_error_line(case: dict) -> str:
    """The one ``autoquant-sweep: error:`` line of a case of :func:`run_at_once` (after the prefix), checking
    exit status 2 and no traceback."""
    result = case["result"]
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith(ERROR)]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0][len(ERROR):].strip()


def run_at_once(commands: dict[str, tuple[list[str], Path, dict[str, str]]], timeout: float
                ) -> dict[str, dict]:
    """Start every ``name -> (command, folder, env)`` at once, each in its folder with the environment of a
    shell (no MLflow store or sweep id inherited) plus its own, and wait for all:
    ``name -> {result, cwd, seconds}``. None is left running."""
    base = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AUTOQUANT_SWEEP_ID")}
    procs = {name: (warm.Popen(cmd, cwd=cwd, env={**base, "HYDRA_FULL_ERROR": "0", **env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), cwd,
                    time.monotonic())
             for name, (cmd, cwd, env) in commands.items()}
    results = {}
    try:
        for name, (proc, cwd, started) in procs.items():
            out, err = proc.communicate(timeout=timeout)
            results[name] = {"result": subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
                             "cwd": cwd, "seconds": time.monotonic() - started}
    finally:
        for proc, *_ in procs.values():
            if proc.poll() is None:
                proc.kill()
    return results


def damaged_sqlite(path: Path) -> str:
    """A SQLite file whose pages after the header are overwritten (``database disk image is malformed``).

    Returns the file's sha256, to prove nothing wrote to it afterwards.
    """
    import hashlib
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, name TEXT, status TEXT)")
    con.executemany("INSERT INTO runs VALUES (?, ?, ?)",
                    [(f"{i:032x}", "x" * 300, "FINISHED") for i in range(400)])
    con.execute("CREATE INDEX runs_name ON runs (name)")
    con.commit()
    con.close()
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[2 * page:5 * page] = b"\x5a" * (3 * page)
    path.write_bytes(bytes(data))
    return hashlib.sha256(bytes(data)).hexdigest()
