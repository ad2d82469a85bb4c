"""Which MLflow store a run talks to: ``off``, ``local`` (embedded SQLite + ``mlruns/``) or ``server``.

Store rule (README "Where results are stored"): ``tracking.tracking_uri`` when given, else
``$MLFLOW_TRACKING_URI`` when set, else the embedded store ``sqlite:///<root>/mlflow.db`` where ``<root>``
is ``paths.root_dir`` (the working directory, or ``$AUTOQUANT_SWEEP_ROOT``). The sub-commands resolve
``--tracking-uri`` the same way (:func:`resolve_tracking_uri`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from filelock import FileLock

from autoquant_sweep.errors import UserInputError

log = logging.getLogger(__name__)

PARENT_RUN_ENV = "AUTOQUANT_SWEEP_PARENT_RUN_ID"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
MODES = ("off", "local", "server")
HEALTH_TIMEOUT_S = 3.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def store_root() -> Path:
    """Where the embedded stores live: :func:`autoquant_sweep.layout.data_root` (``paths.root_dir``)."""
    from autoquant_sweep.layout import data_root

    return data_root()


def default_tracking_uri() -> str:
    """``sqlite:///<root>/mlflow.db``: the embedded store of ``tracking=local`` (``paths.mlflow_db``)."""
    return f"sqlite:///{store_root() / 'mlflow.db'}"


def default_artifact_location(tracking_uri: str | None = None) -> str | None:
    """Where a new experiment's artifacts go when ``tracking.artifact_location`` is null.

    Next to a SQLite store file (``<folder of the .db>/mlruns``, MLflow's own layout), so a store and its
    artifacts always travel together; ``None`` for an HTTP server (it keeps its own artifact root);
    ``<root>/mlruns`` for any other database URL.

    Example:
        >>> default_artifact_location("sqlite:////data/aqs/mlflow.db")
        '/data/aqs/mlruns'
        >>> default_artifact_location("http://127.0.0.1:5000") is None
        True
    """
    uri = tracking_uri or default_tracking_uri()
    if urlparse(uri).scheme in ("http", "https"):
        return None
    db = sqlite_path(uri)
    if db is not None:
        return str(db.absolute().parent / "mlruns")
    return str(store_root() / "mlruns")


@dataclass(frozen=True)
class TrackingSettings:
    """A resolved ``tracking`` config group (``source``: where ``tracking_uri`` came from, for the log)."""

    mode: str
    tracking_uri: str | None
    artifact_location: str | None
    experiment_name: str
    registry: bool
    source: str = "tracking.tracking_uri"

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


def resolve_tracking_uri(explicit: str | None, configured_default: str | None = None) -> tuple[str, str]:
    """The store a command uses and where it came from: ``(uri, source)``, by :func:`choose_tracking_uri`
    with this process's ``$MLFLOW_TRACKING_URI``."""
    return choose_tracking_uri(explicit, os.environ.get(TRACKING_URI_ENV), configured_default)


def choose_tracking_uri(explicit: str | None, from_env: str | None,
                        configured_default: str | None = None) -> tuple[str, str]:
    """One rule for runs, sweeps and the sub-commands: an explicit URI (``tracking.tracking_uri``,
    ``--tracking-uri``) beats ``$MLFLOW_TRACKING_URI`` (``from_env``), which beats the embedded store under
    the data root (``configured_default``: ``tracking.local_store_uri`` = ``sqlite:///${paths.mlflow_db}``).

    Example:
        >>> choose_tracking_uri(None, "http://mlflow:5000", "sqlite:////w/mlflow.db")
        ('http://mlflow:5000', 'MLFLOW_TRACKING_URI')
        >>> choose_tracking_uri("sqlite:////x/m.db", "http://mlflow:5000", "sqlite:////w/mlflow.db")
        ('sqlite:////x/m.db', 'tracking.tracking_uri')
        >>> choose_tracking_uri(None, None, "sqlite:////w/mlflow.db")
        ('sqlite:////w/mlflow.db', 'paths.mlflow_db')
    """
    if explicit:
        return str(explicit), "tracking.tracking_uri"
    if from_env:
        return from_env, TRACKING_URI_ENV
    if configured_default:
        return str(configured_default), "paths.mlflow_db"
    return default_tracking_uri(), "working directory"


def settings_from_cfg(cfg: Mapping[str, Any]) -> TrackingSettings:
    """Read ``cfg.tracking`` (a resolved container or DictConfig) into :class:`TrackingSettings`.

    ``local``: :func:`resolve_tracking_uri` (explicit > ``$MLFLOW_TRACKING_URI`` > embedded store); an
    artifact location left null follows :func:`default_artifact_location`. ``server``: the URI must be
    given (``$MLFLOW_TRACKING_URI`` or ``tracking.tracking_uri``).
    """
    t = cfg.get("tracking") or {}
    mode = str(t.get("mode") or "off")
    if mode not in MODES:
        raise UserInputError(f"tracking.mode: unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    uri = t.get("tracking_uri")
    artifacts = t.get("artifact_location")
    source = "tracking.tracking_uri"
    if mode == "local":
        uri, source = resolve_tracking_uri(uri, t.get("local_store_uri"))
        artifacts = artifacts or default_artifact_location(uri)
    elif mode == "server" and not uri:
        raise UserInputError(
            "tracking=server: no tracking URI; export MLFLOW_TRACKING_URI=http://host:5000 "
            "or pass tracking.tracking_uri=..."
        )
    elif mode == "server" and uri == os.environ.get(TRACKING_URI_ENV):
        source = TRACKING_URI_ENV
    return TrackingSettings(
        mode=mode,
        tracking_uri=str(uri) if uri else None,
        artifact_location=str(artifacts) if artifacts else None,
        experiment_name=str(t.get("experiment_name") or cfg.get("experiment") or "sensitivity"),
        registry=bool(t.get("registry", True)),
        source=source,
    )


def check_server(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Fail fast with one line when an HTTP tracking server does not answer ``/health``."""
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status >= 400:
                raise UserInputError(f"tracking server {uri} answered HTTP {response.status} on /health")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserInputError(
            f"tracking server {uri} is unreachable ({reason}); start it, fix MLFLOW_TRACKING_URI, "
            "or use tracking=local / tracking=off"
        ) from exc


def masked_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (SQLAlchemy / MLflow form); ``None`` for anything else.

    Example:
        >>> sqlite_path("sqlite:////data/optuna.db").as_posix()
        '/data/optuna.db'
        >>> sqlite_path("postgresql://db/optuna") is None, sqlite_path("sqlite://") is None
        (True, True)
    """
    if not isinstance(url, str) or not url.startswith("sqlite:///"):
        return None
    database = url[len("sqlite:///"):].split("?", 1)[0]
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


#: the SQLite files :func:`check_sqlite_store` passed in this process (``<path> <tool>``), each checked once
CHECKED_STORES: set[str] = set()


#: tables that only each tool's schema has: a store holding another tool's and none of its own belongs
#: to that tool (MLflow and Optuna would each add their tables to the other's file)
STORE_TABLES = {
    "mlflow": ("experiments", "runs"),
    "optuna": ("studies", "trials"),
}
_STORE_USE = {"mlflow": ("an MLflow store", "mlflow.db"), "optuna": ("an Optuna study storage", "optuna.db")}


def store_owner(tables: set[str]) -> str | None:
    """The tool (``mlflow`` / ``optuna``) whose schema a SQLite file with ``tables`` holds, None: neither.

    Example:
        >>> store_owner({"alembic_version", "experiments", "runs", "metrics"}), store_owner(set())
        ('mlflow', None)
        >>> store_owner({"studies", "trials", "version_info"})
        'optuna'
    """
    owners = [tool for tool, marks in STORE_TABLES.items() if all(t in tables for t in marks)]
    return owners[0] if len(owners) == 1 else None


def _check_owner(path: Path, key: str, tool: str, tables: set[str]) -> None:
    owner = store_owner(tables)
    if owner is None or owner == tool:
        return
    theirs, ours = _STORE_USE[owner], _STORE_USE[tool]
    raise UserInputError(
        f"{key}: SQLite store '{path}' is {theirs[0]} (tables {', '.join(STORE_TABLES[owner])}), not "
        f"{ours[0]}; nothing was written. Give each tool its own file, e.g. "
        f"{key}=sqlite:///{path.parent / ours[1]}")


def check_sqlite_store(url: str, key: str, *, create_parent: bool = False, tool: str | None = None) -> None:
    """Stop with one line when the SQLite file behind ``url`` cannot be used; nothing else is checked.

    A missing file needs an existing (or, with ``create_parent``, creatable) writable folder; an existing
    one must pass ``PRAGMA quick_check`` (a damaged store stops the run before anything is written to
    it) and, with ``tool`` (``mlflow`` / ``optuna``), must not be the other tool's store
    (:func:`store_owner`). Each file is checked once per process; URLs that are not ``sqlite:///`` files
    pass.
    """
    path = sqlite_path(url)
    if path is None or (seen := f"{path.absolute()} {tool}") in CHECKED_STORES:
        return
    if not path.exists():
        folder = path.parent
        if create_parent:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserInputError(f"{key}: cannot create the folder of SQLite store '{path}': "
                                     f"{exc.strerror}; choose a writable location") from exc
        if not folder.is_dir():
            raise UserInputError(f"{key}: cannot create SQLite store '{path}': folder '{folder}' does not "
                                 "exist; create it or point to a file in an existing folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserInputError(f"{key}: cannot create SQLite store '{path}': folder '{folder}' is not "
                                 "writable; choose a writable location")
        CHECKED_STORES.add(seen)
        return
    if not path.is_file():
        raise UserInputError(f"{key}: SQLite store '{path}' is not a file; point to a database file")
    import sqlite3
    from urllib.parse import quote

    problem = None
    try:
        # read-write (not create): a hot journal left by a killed writer is rolled back, not reported
        con = sqlite3.connect(f"file:{quote(str(path.absolute()))}?mode=rw", uri=True, timeout=60)
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
        if rows != [("ok",)]:
            problem = "; ".join(str(r[0]) for r in rows[:3])
        elif tool is not None:
            _check_owner(path, key, tool, tables)
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):  # busy for a minute: a live writer, not damage; MLflow / Optuna will wait
            log.warning("%s: SQLite store %s stayed locked; integrity not checked", key, path)
            return
        if "readonly" in str(exc) or "unable to open" in str(exc):
            raise UserInputError(f"{key}: cannot open SQLite store '{path}' for writing ({exc}); "
                                 "check its permissions or choose another file") from exc
        problem = str(exc)
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        problem = str(exc)
    if problem:
        raise UserInputError(
            f"{key}: SQLite store '{path}' is damaged ({problem}); nothing was written. Restore it from a "
            f"backup, or move it aside to start an empty store (its history is then lost): "
            f"mv '{path}' '{path}.damaged'")
    CHECKED_STORES.add(seen)


def check_store(settings: TrackingSettings) -> None:
    """The checks :func:`connect` starts with, without MLflow and without creating anything: an HTTP
    server answers ``/health``; an existing SQLite file passes ``PRAGMA quick_check`` (a missing one is
    left to :func:`connect`, which creates it). The plan calls it before its ModelOpt import."""
    if not settings.enabled or not settings.tracking_uri:
        return
    scheme = urlparse(settings.tracking_uri).scheme
    if scheme in ("http", "https"):
        check_server(settings.tracking_uri)
    elif scheme == "sqlite":
        path = sqlite_path(settings.tracking_uri)
        if path is not None and path.exists():
            check_sqlite_store(settings.tracking_uri, "tracking.tracking_uri")


# The sweep's closing writes on a full disk (the parent's status and failure reason: a few SQLite pages
# and their journal). Measured on a 1400 kB tmpfs: with 16 kB left the parent could not be closed.
RESERVE_BYTES = 128 * 1024


def reserve_space(tracking_uri: str | None) -> Path | None:
    """Set ``RESERVE_BYTES`` aside beside a SQLite store, in a hidden ``.<db>.reserve`` file, so that a sweep
    stopped by a full disk can free it and still close its parent run (:func:`release_space`).

    ``None`` for other stores, or where the space is not there (the sweep runs as before, without it).

    Example:
        >>> reserve_space("postgresql://db/mlflow") is None
        True
    """
    db = sqlite_path(str(tracking_uri))
    if db is None:
        return None
    path = db.parent / f".{db.name}.reserve"
    try:
        with open(path, "wb") as handle:  # written, not truncated to size: a sparse file reserves nothing
            handle.write(bytes(RESERVE_BYTES))
    except OSError:
        path.unlink(missing_ok=True)
        return None
    return path


def release_space(path: Path | None) -> None:
    """Give back the space :func:`reserve_space` set aside (no-op for ``None`` or a file already gone)."""
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def connect(settings: TrackingSettings) -> Any:
    """Point MLflow at the store and return an ``MlflowClient`` (HTTP: health-checked, no long retries).

    A SQLite store is checked first (:func:`check_sqlite_store`): a damaged file is a one-line error.
    """
    assert settings.tracking_uri is not None
    scheme = urlparse(settings.tracking_uri).scheme
    if scheme in ("http", "https"):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        check_server(settings.tracking_uri)
    elif scheme == "sqlite":
        check_sqlite_store(settings.tracking_uri, "tracking.tracking_uri", create_parent=True, tool="mlflow")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow.tracking import MlflowClient

    # MLflow logs every database error with its traceback before raising it; the project reports the
    # error itself, in one line (a full disk printed a traceback per write)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

    _log_store(settings)
    use_store(settings.tracking_uri)
    db = sqlite_path(settings.tracking_uri)
    if db is None:
        return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    # MLflow creates / migrates a SQLite schema when it opens the store; two processes doing it at once on
    # a new file fail ("duplicate column name"). One at a time per store, then it is a quick no-op.
    with store_lock(db):
        if not db.exists():  # a new store is built aside and moved into place whole (a full disk: no half)
            create_sqlite_aside(db, _create_mlflow_store, "tracking.tracking_uri")
        client = _init_mlflow_store(settings.tracking_uri)
    return client


_CREATE_MLFLOW_STORE = ("import sys; from mlflow.tracking import MlflowClient; c = MlflowClient(sys.argv[1], "
                        "sys.argv[1]); c.search_experiments(max_results=1); "
                        "c.search_registered_models(max_results=1)")


def _create_mlflow_store(uri: str) -> None:
    """MLflow's schema in a new SQLite file: a copy of this MLflow version's migrated empty store
    (:func:`empty_mlflow_store`, milliseconds) or, where that cannot be kept, built in place by
    :func:`build_mlflow_store` (seconds)."""
    import shutil

    target = sqlite_path(uri)
    assert target is not None, uri
    try:
        template = empty_mlflow_store()
    except OSError as exc:  # an unwritable cache: build it here, as before the template existed
        log.debug("no MLflow store template (%s); creating the schema in place", exc)
        build_mlflow_store(uri)
        return
    shutil.copyfile(template, target)


def build_mlflow_store(uri: str) -> None:
    """MLflow's schema in a new SQLite file, created and migrated by MLflow itself in a short child process
    (~5 s: MLflow's import, then its migrations): no connection of this process is left open on the file
    once it is linked into place under its real name."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _CREATE_MLFLOW_STORE, uri], capture_output=True, text=True,
                            check=False, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    if result.returncode != 0:  # the last ``...Error: ...`` line; the whole text as the cause
        lines = [line for line in result.stderr.splitlines() if re.match(r"^[\w.]+(Error|Exception): ", line)]
        raise RuntimeError(lines[-1] if lines else f"exit status {result.returncode}") from RuntimeError(
            result.stderr[-4000:])


#: where :func:`empty_mlflow_store` keeps its template, under the embedded asset cache
STORE_TEMPLATES_DIR = "store-templates"


def empty_mlflow_store(cache_root: Path | None = None) -> Path:
    """An empty MLflow SQLite store, its schema created and migrated by this MLflow version
    (:func:`build_mlflow_store`), kept at ``<cache>/store-templates/mlflow-<version>.db``: every new store
    is a copy of it, so only the first one pays MLflow's ~5 s of schema creation.

    ``cache_root``: the embedded asset cache (default ``$AUTOQUANT_SWEEP_CACHE``, else
    ``<root>/.cache/autoquant_sweep``). Built aside and renamed into place whole, under a lock, so a
    template is never half made or built twice at once; one that is not a migrated MLflow store (a
    truncated copy) is built again. Raises ``OSError`` when the cache cannot hold it.
    """
    import sqlite3
    from importlib.metadata import version

    from autoquant_sweep.embedded.assets import default_cache_root
    from autoquant_sweep.layout import staging_name

    folder = (cache_root or default_cache_root()) / STORE_TEMPLATES_DIR
    template = folder / f"mlflow-{version('mlflow')}.db"
    folder.mkdir(parents=True, exist_ok=True)
    with store_lock(template):
        if template.is_file():
            try:
                with contextlib.closing(sqlite3.connect(f"file:{template}?mode=ro", uri=True)) as con:
                    if con.execute("SELECT version_num FROM alembic_version").fetchone():
                        return template
            except sqlite3.Error:
                pass
            log.info("rebuilding the MLflow store template %s (not a migrated MLflow store)", template)
        staging = folder / staging_name(template.name, "creating")
        try:
            build_mlflow_store(f"sqlite:///{staging}")
            os.replace(staging, template)
        except RuntimeError as exc:  # MLflow could not write it here (a full disk): no template
            raise OSError(f"cannot build the MLflow store template in {folder}: {exc}") from exc
        finally:
            staging.unlink(missing_ok=True)
    return template


def _init_mlflow_store(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_experiments(max_results=1)
    client.search_registered_models(max_results=1)
    return client


def create_sqlite_aside(path: Path, create: Any, key: str) -> None:
    """Create a new SQLite store ``path`` with ``create(url)`` under a hidden sibling name, then link it into
    place whole; on any failure the sibling is removed and ``path`` does not exist.

    A full disk during the schema creation would otherwise leave a half-built store that fails for good
    afterwards (``table ... already exists``). The caller holds :func:`store_lock` on ``path``; a store
    another process created meanwhile is kept (``os.link`` never replaces a file).
    """
    from autoquant_sweep.errors import DiskFullError, disk_full
    from autoquant_sweep.layout import staging_name

    aside = path.parent / staging_name(path.name, "creating")
    leftovers = [aside, *(aside.with_name(aside.name + end) for end in ("-journal", "-wal", "-shm"))]
    try:
        create(f"sqlite:///{aside}")
        try:
            os.link(aside, path)
        except FileExistsError:
            log.info("SQLite store %s was created by another process meanwhile; keeping it", path)
    except BaseException as exc:
        if disk_full(exc):
            raise DiskFullError(f"{key}: no space left on device while creating the SQLite store '{path}' "
                                f"(nothing was left behind); free space in '{path.parent}' or choose another "
                                "store, then rerun the same command") from exc
        raise
    finally:
        for leftover in leftovers:
            with contextlib.suppress(OSError):
                leftover.unlink()


#: the (store, source) pairs this process has logged (each once)
LOGGED_STORES: set[tuple[str, str]] = set()


def _log_store(settings: TrackingSettings) -> None:
    """``MLflow store: <uri> (from <source>)``, once per store and source in a process."""
    key = (str(settings.tracking_uri), settings.source)
    if key not in LOGGED_STORES:
        LOGGED_STORES.add(key)
        log.info("MLflow store: %s (from %s)", masked_url(str(settings.tracking_uri)), settings.source)


def use_store(uri: str) -> None:
    """Point MLflow's module-level API (``mlflow.get_tracking_uri()``, ``MlflowClient()``) at ``uri``
    without leaving it in the environment.

    ``mlflow.set_tracking_uri`` / ``set_registry_uri`` also export ``MLFLOW_TRACKING_URI`` /
    ``MLFLOW_REGISTRY_URI``; left there, the next job of this process, a launcher worker or a command started
    from it would take this store for one the user chose (the variable beats the embedded default).
    """
    import mlflow

    saved = {name: os.environ.get(name) for name in (TRACKING_URI_ENV, "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def store_lock(db: Path) -> FileLock:
    """An exclusive lock for creating or migrating the SQLite store ``db``: ``filelock`` on the hidden
    sibling ``.<db name>.lock`` (released when the process dies).

    Beside the database, inside its folder, not beside the folder: that folder is usually the working
    directory (``<root>/mlflow.db``, ``<root>/optuna.db``), whose parent may be neither the user's nor
    writable. MLflow and Optuna open only their database file (and MLflow its artifact folder), so the
    hidden sibling is part of neither store; one lock per database, since each file has its own schema.
    Not the database file itself: closing any descriptor of it would drop SQLite's own POSIX locks.
    """
    return FileLock(db.with_name(f".{db.name}.lock"))


def ensure_experiment(client: Any, settings: TrackingSettings) -> str:
    """The id of experiment ``settings.experiment_name``, created with the configured artifact location."""
    experiment = client.get_experiment_by_name(settings.experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if settings.artifact_location:
        location = settings.artifact_location
        # one folder per experiment: <mlruns>/<experiment name>/<run_id>/artifacts
        folder = _UNSAFE.sub("_", settings.experiment_name)
        if "://" not in location:
            path = Path(location).expanduser().resolve() / folder
            path.mkdir(parents=True, exist_ok=True)
            location = path.as_uri()
        else:
            location = f"{location.rstrip('/')}/{folder}"
    try:
        return client.create_experiment(settings.experiment_name, artifact_location=location)
    except Exception:  # created concurrently by another job
        experiment = client.get_experiment_by_name(settings.experiment_name)
        if experiment is None:
            raise
        return experiment.experiment_id


def resolver_root() -> str:
    """Value of the ``${aqs_root:}`` OmegaConf resolver: ``paths.root_dir`` (``conf/paths/default.yaml``)."""
    return str(store_root())
