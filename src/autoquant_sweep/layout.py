"""Where a run's report lands, and how it gets there without ever being half-written.

Everything the project writes (Hydra's ``outputs/`` and ``multirun/``, the publish tree ``results/``, the
embedded MLflow store ``mlflow.db`` + ``mlruns/``, the Optuna study ``optuna.db``, the embedded asset cache
``.cache/``) lies under one root, :func:`data_root`: the working directory of the command, or
``$AUTOQUANT_SWEEP_ROOT`` when set. The config group ``conf/paths/`` spells the rule out for Hydra
(``paths.root_dir`` and the paths derived from it); the sub-commands (``autoquant-sweep ui``, ``lookup``,
``apply``, ``generate``) call :func:`data_root` and so find the same files.

Two layouts (config group ``output_layout``):

* ``tmp``: ``<hydra run dir>/report/`` where the run dir is
  ``outputs/<experiment>/<model>/<quant_pair>/<quant_granularity>/<dataset.size>/<time>`` (sweeps:
  ``multirun/<experiment>/<sweep id>/<model>/<quant_pair>/<quant_granularity>/<dataset.size>/job<N>``,
  the sweep id being ``<time>_<host>-<pid>-<random>``, one per sweep process: :func:`sweep_id`);
* ``publish``: ``<publish_root>/<experiment>/weight-<w>-act-<a>/<granularity>/<model>_<pair>_<size>/``,
  replaced as a whole when the same combination runs again.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from autoquant_sweep.errors import DiskFullError, UserInputError, disk_full

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
REPORT_DIRNAME = "report"
ROOT_ENV = "AUTOQUANT_SWEEP_ROOT"  # moves every store and output folder at once (paths.root_dir)
SWEEP_ID_ENV = "AUTOQUANT_SWEEP_ID"  # "<owner host>:<owner pid> <sweep id>", read by launcher workers


class SweepIdentity:
    """This sweep process's id ``<time>_<host>-<pid>-<random>`` (the ``${aqs_sweep_id:}`` resolver).

    It names the sweep folder (``hydra.sweep.dir``), so two sweeps started in the same second, on one
    machine or several sharing a file system, never share a folder. Stable within the process until
    :meth:`reset` (a process that runs several sweeps, e.g. a notebook or the test suite, resets between
    them: :mod:`autoquant_sweep.process_state`); a launcher worker process started by the sweep (its
    parent) gets the sweep's id from ``AUTOQUANT_SWEEP_ID`` (Hydra also copies resolved values into the
    jobs' configs); any other process, such as a sweep started from a job, gets its own.
    """

    def __init__(self) -> None:
        self._id: str | None = None
        self._exported: str | None = None  # the AUTOQUANT_SWEEP_ID value this object exported

    def get(self) -> str:
        if self._id is None:
            host = socket.gethostname()
            owner, _, inherited = os.environ.get(SWEEP_ID_ENV, "").partition(" ")
            if inherited and owner == f"{host}:{os.getppid()}":
                self._id = inherited
            else:
                stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
                self._id = f"{stamp}_{_UNSAFE_CHARS.sub('_', host)}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
                self._exported = os.environ[SWEEP_ID_ENV] = f"{host}:{os.getpid()} {self._id}"
        return self._id

    def reset(self) -> None:
        """The next :meth:`get` makes a new id; the variable this object exported is withdrawn."""
        if self._exported is not None and os.environ.get(SWEEP_ID_ENV) == self._exported:
            del os.environ[SWEEP_ID_ENV]
        self._id = self._exported = None


#: this process's sweep id
SWEEP_ID = SweepIdentity()


def sweep_id() -> str:
    """This sweep process's id (:class:`SweepIdentity`): ``SWEEP_ID.get()``."""
    return SWEEP_ID.get()


def data_root() -> Path:
    """The folder every store and output lives under: ``$AUTOQUANT_SWEEP_ROOT``, else the working directory
    (:func:`root_from`).

    Absolute, so a path derived from it means the same in launcher workers and sub-commands. It is the
    value of ``paths.root_dir`` (the ``${aqs_root:}`` resolver), never the installed checkout: two clones
    sharing one Python environment each keep their own stores when run from their own folders.
    """
    return root_from(os.environ.get(ROOT_ENV))


def root_from(configured: str | None) -> Path:
    """``configured`` (``$AUTOQUANT_SWEEP_ROOT``) as an absolute path, else the working directory.

    Example:
        >>> root_from("/data/aqs").as_posix(), root_from(None) == Path.cwd() == root_from("")
        ('/data/aqs', True)
    """
    return Path(configured).expanduser().absolute() if configured else Path.cwd()


def check_name(key: str, value: str) -> str:
    """A name that becomes a path component: letters, digits, ``_ . + -`` only."""
    if not isinstance(value, str) or not _SAFE_NAME.match(value) or value in (".", ".."):
        raise UserInputError(f"{key}: '{value}' cannot name a directory; use letters, digits, '_', '-', '.'")
    return value


#: config keys whose values become path components of a run / sweep folder or its log file name
#: (``hydra.run.dir``, ``hydra.sweep.dir`` / ``subdir``, ``${hydra.job.name}.log``, the publish tree)
PATH_NAME_KEYS = ("experiment", "hydra.job.name", "model.name", "quant_pair.name", "quant_granularity.name",
                  "dataset.size")


def check_path_names(values: dict[str, object]) -> None:
    """Every name that becomes a path component (``key -> value``, ``None``: not set), checked at once.

    Called before Hydra creates a run / sweep folder or a log file (a name such as ``../../x`` would
    otherwise create them outside the working directory first).

    Example:
        >>> check_path_names({"experiment": "sensitivity", "model.name": None})
        >>> check_path_names({"experiment": "a/b c"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        autoquant_sweep.errors.UserInputError: experiment: 'a/b c' cannot name a directory; use ...
    """
    for key, value in values.items():
        if value is not None:
            check_name(key, str(value))


def publish_dir(
    publish_root: Path,
    *,
    experiment: str,
    model: str,
    quant_pair: str,
    weight: str,
    activation: str,
    granularity: str,
    size: str,
) -> Path:
    """The stable directory of one combination in the publish tree.

    Example:
        >>> publish_dir(Path("results"), experiment="sensitivity", model="qwen3_tiny",
        ...             quant_pair="wint4_aint8", weight="int4", activation="int8",
        ...             granularity="w_group64", size="small").as_posix()
        'results/sensitivity/weight-int4-act-int8/w_group64/qwen3_tiny_wint4_aint8_small'
    """
    parts = {
        "experiment": experiment,
        "model.name": model,
        "quant_pair.name": quant_pair,
        "quant_pair.weight": weight,
        "quant_pair.activation": activation,
        "quant_granularity.name": granularity,
        "dataset.size": size,
    }
    for key, value in parts.items():
        check_name(key, value)
    return (
        publish_root
        / experiment
        / f"weight-{weight}-act-{activation}"
        / granularity
        / f"{model}_{quant_pair}_{size}"
    )


def ensure_output_dir(path: Path, key: str) -> Path:
    """Create the folder ``path`` (Hydra's run or sweep dir) or stop with one line naming ``key``.

    Hydra would create it a moment later and fail with a traceback; here it is a
    :class:`~autoquant_sweep.errors.UserInputError` before anything else happens.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"{key}: cannot create output directory '{path}': {exc.strerror}; "
                             f"pass a writable {key}=...") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserInputError(f"{key}: output directory '{path}' is not writable; pass a writable {key}=...")
    return path


def tmp_report_dir(run_dir: Path) -> Path:
    """The report folder inside a Hydra run (or sweep job) directory."""
    return run_dir / REPORT_DIRNAME


def staging_name(name: str, kind: str = "staging") -> str:
    """A hidden sibling name ``.<name>.<kind>-<host>-<pid>-<random>``; the owner lets a later run
    remove what a killed process left (:func:`autoquant_sweep.faults.clean_stale_staging`)."""
    return f".{name}.{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_dir_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Fill a fresh staging folder with ``write(folder)``, then swap it in as ``target``.

    A failure while writing removes the staging folder and leaves any previous ``target`` untouched;
    readers never see a partly written ``target``.
    """
    staging = target.parent / staging_name(target.name, "staging")
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise UserInputError(f"output directory '{target.parent}' is not writable: {exc.strerror}") from exc
    try:
        write(staging)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if disk_full(exc):  # one line naming the folder, not a traceback; nothing half-written is left
            raise DiskFullError(f"output directory '{target.parent}': no space left on device while writing "
                                f"'{target.name}' (nothing half-written was left); free space there or "
                                "choose another output location, then rerun the same command") from exc
        raise
    old = None
    if target.exists():
        old = target.parent / staging_name(target.name, "old")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def check_out_dir(out: Path, force: bool = False) -> None:
    """``apply --out``: a new or empty folder (``--force``: a non-empty one, replaced as a whole).

    Checked before the registry lookup and the model load, so a wrong ``--out`` costs nothing.
    """
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out: '{out}' is a file; pass a new or empty folder")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if entries and not force:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise UserInputError(f"--out: folder '{out}' is not empty ({len(entries)} entries: {shown}); "
                                 "pass a new or empty folder, or --force to replace it as a whole")
    existing = next((p for p in (out.absolute(), *out.absolute().parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"--out: cannot create '{out}': '{existing}' is not a writable folder")
