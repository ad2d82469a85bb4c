"""hydra-optuna-sweeper with fault handling (``_target_`` of ``conf/hydra/sweeper/optuna.yaml``).

The sweep itself is the plugin's, unchanged, driven through its public constructor arguments only
(``storage``, ``custom_search_space``). Around it:

* every trial records its owner process (user attr ``aqs_owner`` = ``<host>:<pid>``), set by
  :func:`record_trial_owner`, the plugin's ``custom_search_space`` hook (a user's own hook still runs
  after it);
* at start, ``RUNNING`` trials of the study whose owner died (SIGKILL, OOM) are marked ``FAIL``;
* when the sweep is stopped (SIGTERM -> :class:`~autoquant_sweep.faults.Terminated`, Ctrl-C), this
  process's ``RUNNING`` trials are marked ``FAIL`` with user attr ``fail_reason`` before the exception
  goes on (read it with :func:`autoquant_sweep.faults.trial_fail_reason`);
* an empty search space is a one-line error instead of a sweep that never asks a trial;
* a storage that cannot be opened is a one-line error (:func:`check_storage` runs it before the sweep
  creates anything; the sweep callback calls it);
* SQLite study files are opened with a 60 s lock timeout and created under a store lock
  (:func:`~autoquant_sweep.tracking.store.store_lock`), and the plugin's ``Storage: ...`` log line shows
  the (masked) URL: the sweeper hands the plugin a :class:`StudyStorage` object, created when Hydra
  instantiates the sweeper (after the start checks).
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig, OmegaConf
from optuna.storages import RDBStorage
from sqlalchemy.exc import SQLAlchemyError

from autoquant_sweep import faults
from autoquant_sweep.errors import OneLineExit, UserInputError

log = logging.getLogger(__name__)
# the sweeper beats Optuna's heartbeat itself (:class:`Heartbeat`) around the plugin's ask / tell loop
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", message=r"Argument ``(heartbeat_interval|grace_period)`` is an exper")


# A stop signal inside any call on the study's storage is raised when the call has returned, never in the
# middle: a write cut in half left its SQLite transaction open, and a read cut in half its statement (the
# ORM closes it on ``Exception`` only; a stop is a ``SystemExit``); either way the stopped sweeper's next
# write, failing its own trials, waited on that lock for the store's whole timeout. Every method the RDB
# storage defines, not only the public ones: Optuna's cache in front of it calls private ones
# (``_get_trials``, ``_create_new_trial``, ``_set_trial_param``).
_NOT_DEFERRED = frozenset({"remove_session"})  # the sweeper's own cleanup after a stop


def _deferring(method: Any) -> Any:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        with faults.signals_deferred():
            return method(self, *args, **kwargs)

    return call


def _storage_calls() -> dict[str, Any]:
    return {name: _deferring(member) for name, member in vars(RDBStorage).items()
            if inspect.isfunction(member) and not name.startswith("__") and name not in _NOT_DEFERRED}


class StudyStorage(RDBStorage):
    """Optuna's RDB storage, shown as its URL (password masked) instead of an object address; a call on it
    is never cut in half by SIGTERM / Ctrl-C (:func:`autoquant_sweep.faults.signals_deferred`)."""

    locals().update(_storage_calls())
    stale_reason: str | None = None  # set while Optuna's fail_stale_trials runs: the FAIL trials' reason

    @_deferring
    def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
        if self.stale_reason and state == optuna.trial.TrialState.FAIL:  # fail_stale_trials failing it
            RDBStorage.set_trial_user_attr(self, trial_id, faults.FAIL_REASON_ATTR, self.stale_reason)
        return RDBStorage.set_trial_state_values(self, trial_id, state, values)

    def __repr__(self) -> str:
        # the plugin logs "Storage: <storage>": show the URL (password masked), not an object address
        from autoquant_sweep.tracking.store import masked_url

        return masked_url(str(self.url))


def heartbeat_settings() -> tuple[int, int]:
    """Optuna heartbeat ``(interval, grace period)`` in seconds: a RUNNING trial whose owner has not beaten
    for the grace period is failed by any sweep on the study, on any host (``AUTOQUANT_SWEEP_HEARTBEAT_S``,
    ``AUTOQUANT_SWEEP_HEARTBEAT_GRACE_S``; default 60 and 600).

    Example:
        >>> heartbeat_settings()
        (60, 600)
    """
    import os

    interval = int(os.environ.get("AUTOQUANT_SWEEP_HEARTBEAT_S", "60"))
    return interval, int(os.environ.get("AUTOQUANT_SWEEP_HEARTBEAT_GRACE_S", str(10 * interval)))


class Heartbeat:
    """A daemon thread beating (``record_heartbeat``) for this process's RUNNING trials every interval."""

    def __init__(self, load: Any, storage: RDBStorage, interval: float) -> None:
        import threading

        self.load, self.study, self.storage, self.interval = load, None, storage, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aqs-heartbeat", daemon=True)

    def beat(self) -> None:
        self.study = self.study or self.load()  # the plugin creates the study once the sweep starts
        if self.study is None:
            return
        me = faults.owner()
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if faults.trial_owner(trial) == me:
                self.storage.record_heartbeat(faults.storage_trial_id(self.storage, self.study.study_name,
                                                                      trial.number))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # a store that is busy or gone: the next beat tries again
                log.warning("heartbeat of study %s failed: %s", self.study.study_name, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)


OWNER_HOOK = f"{__name__}.record_trial_owner"


def record_trial_owner(cfg: DictConfig, trial: optuna.trial.Trial) -> None:
    """The plugin's ``custom_search_space`` hook: stamp ``trial`` with its owner process and the job it
    runs as (:func:`~autoquant_sweep.search.study_report.stamp_trial_job`), then run the user's own hook
    (``hydra.sweeper.custom_search_space``), if one is configured.

    The plugin calls it right after ``study.ask()``, before the trial's job is launched. The user's hook
    is instantiated the way the plugin instantiates its own (Hydra's execution whitelist applies).
    """
    from autoquant_sweep.search.study_report import stamp_trial_job

    trial.set_user_attr(faults.OWNER_ATTR, faults.owner())
    stamp_trial_job(trial)
    user_hook = OmegaConf.select(cfg, "hydra.sweeper.custom_search_space", default=None)
    if user_hook and user_hook != OWNER_HOOK:
        instantiate({"_target_": user_hook, "_partial_": True})(cfg, trial)


def _close(storage: RDBStorage) -> None:
    """No connection of this process stays open on a store built aside (it is linked under another name)."""
    storage.remove_session()
    storage.engine.dispose()


def _open_storage(url: Any) -> Any:
    """The :class:`StudyStorage` of an RDB ``url`` (``url`` itself for other storages)."""
    if not isinstance(url, str) or url.startswith(("redis", "journal")):
        return url
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # several processes may share a study file: wait for locks instead of failing at once
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    interval, grace = heartbeat_settings()
    kwargs.update(heartbeat_interval=interval, grace_period=grace)
    if url.startswith("sqlite"):
        from autoquant_sweep.tracking.store import create_sqlite_aside, sqlite_path, store_lock

        db = sqlite_path(url)
        if db is not None and db.parent.is_dir():
            with store_lock(db):  # sweeps started together must not create the schema twice
                if not db.exists():  # built aside, moved into place whole (a full disk leaves no half store)
                    create_sqlite_aside(db, lambda aside: _close(StudyStorage(aside, **kwargs)),
                                        "hydra.sweeper.storage")
                return StudyStorage(url, **kwargs)
    return StudyStorage(url, **kwargs)


def _storage_error(url: str, exc: BaseException) -> UserInputError:
    from autoquant_sweep.tracking.store import masked_url

    text = (str(getattr(exc, "orig", None) or exc).splitlines() or [type(exc).__name__])[0]
    damaged = "malformed" in text or "not a database" in text
    hint = ("restore it from a backup or move it aside to start a new study" if damaged
            else "check the URL, that the database server is up and the credentials")
    return UserInputError(
        f"hydra.sweeper.storage: cannot open study storage '{masked_url(url)}' ({text}); {hint}")


def check_storage(url: Any) -> None:
    """Stop with one line when the study storage ``url`` cannot be used (before anything is created).

    SQLite files get the same cheap checks as the MLflow store (folder exists and is writable, an
    existing file passes ``PRAGMA quick_check``); other RDB URLs are opened once.
    """
    from autoquant_sweep.tracking.store import check_sqlite_store, sqlite_path

    if not isinstance(url, str) or url.startswith(("redis", "journal")):
        return
    if url.startswith("sqlite"):
        if sqlite_path(url) is not None:
            check_sqlite_store(url, "hydra.sweeper.storage", tool="optuna")
        return
    try:
        _open_storage(url).remove_session()
    except Exception as exc:  # SQLAlchemy / driver errors: the URL, the server or the credentials
        raise _storage_error(url, exc) from exc


def grid_used_up(config: DictConfig) -> str | None:
    """The line saying that the grid study of this sweep has no combination left to run (every one was
    taken by a trial), None when some are left, the sampler is not a grid or the study does not exist.

    Called by the sweep callback before anything is created; opens no store that does not exist yet.
    """
    from autoquant_sweep.search.grid import GRID_SAMPLER, combinations_left, grid_space, nothing_left_text
    from autoquant_sweep.tracking.store import sqlite_path

    if OmegaConf.select(config, "hydra.sweeper.sampler._target_", default=None) != GRID_SAMPLER:
        return None
    url = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
    name = OmegaConf.select(config, "hydra.sweeper.study_name", default=None)
    if not isinstance(url, str) or not name or url.startswith(("redis", "journal")):
        return None
    if url.startswith("sqlite") and not ((db := sqlite_path(url)) is not None and db.is_file()):
        return None  # a new study file: nothing ran yet
    task = OmegaConf.select(config, "hydra.overrides.task", default=None) or []
    space = grid_space(OmegaConf.select(config, "hydra.sweeper.params", default=None), [str(a) for a in task])
    if space is None:
        return None
    try:
        study = optuna.load_study(study_name=str(name), storage=_open_storage(url))
    except KeyError:  # the study does not exist yet
        return None
    except SQLAlchemyError as exc:
        raise _storage_error(url, exc) from exc
    trials = study.trials
    return None if combinations_left(space, trials) else nothing_left_text(str(name), space, trials)


class SweepExit(OneLineExit):
    """Exit status 2 after the one-line error was printed; ``message`` lets the sweep callback quote it."""


def _one_line_exit(exc: UserInputError | str) -> SweepExit:
    log.error("%s", exc)
    print(f"autoquant-sweep: error: {exc}", file=sys.stderr)
    return SweepExit(str(exc))


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's ``GridSampler`` that does not stop the study once its grid is used up (same class name:
    the plugin logs ``Sampler: GridSampler``).

    ``after_trial`` calls ``study.stop()``, which raises ``RuntimeError`` outside ``study.optimize``: the
    plugin drives ``ask`` / ``tell`` itself and catches it after a complete trial only, so a sweep whose
    last combination *failed* (refused) ended in a traceback. The sweeper asks for no more trials than
    combinations are left (:meth:`AutoquantOptunaSweeper._cap_to_grid_left`), so the stop is not needed.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        try:
            super().after_trial(study, trial, state, values)
        except RuntimeError as exc:
            if "Study.stop" not in str(exc):
                raise


class _GridSamplerPartial(functools.partial):
    """The plugin's grid sampler factory (it still sees a partial of ``GridSampler`` and enters its grid
    mode), building :class:`GridSampler`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return GridSampler(*self.args, *args, **{**self.keywords, **kwargs})


def _is_grid(sampler: Any) -> bool:
    return isinstance(sampler, functools.partial) and sampler.func == optuna.samplers.GridSampler


def _own_new_trials(study: Any, before: set[int]) -> list[Any]:
    """This process's trials of ``study`` that were not there before its sweep started."""
    me = faults.owner()
    return [t for t in study.trials if t.number not in before and faults.trial_owner(t) == me]


def _no_result_text(study: Any, before: set[int]) -> str:
    own = _own_new_trials(study, before)
    return (
        f"hydra.sweeper: no trial of study '{study.study_name}' completed ({len(own)} failed or refused in "
        "this sweep); the search space holds only combinations that cannot run here "
        "(see `autoquant-sweep validate`) or every job failed (see the job lines above); nothing registered"
    )


class AutoquantOptunaSweeper(OptunaSweeper):
    """:class:`OptunaSweeper` plus stale-trial cleanup, trial ownership and graceful stop."""

    def __init__(self, sampler: Any, direction: Any, storage: Any, study_name: str | None, n_trials: int,
                 n_jobs: int, max_failure_rate: float, custom_search_space: str | None,
                 params: DictConfig | None) -> None:
        self.storage_url = storage
        self.study_name = study_name
        self.study_storage: RDBStorage | None = None  # the storage object the plugin's study runs on
        if isinstance(storage, str):
            try:
                opened = _open_storage(storage)
            except SQLAlchemyError as exc:  # went bad after the start check (or a schema / driver error)
                raise _one_line_exit(_storage_error(storage, exc)) from exc
            if isinstance(opened, RDBStorage):
                self.study_storage = storage = opened
        # the user's ``custom_search_space`` stays in the config: record_trial_owner runs it after the stamp
        super().__init__(sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate,
                         OWNER_HOOK, params)
        grid = self.sweeper.sampler
        if _is_grid(grid):
            self.sweeper.sampler = _GridSamplerPartial(grid.func, *grid.args, **grid.keywords)

    def sweep(self, arguments: list[str]) -> None:
        faults.install_signal_handlers()
        study = None
        if self.study_storage is not None:
            try:
                study = self._cleanup()
            except SQLAlchemyError as exc:
                raise _one_line_exit(_storage_error(self.storage_url, exc)) from exc
        from autoquant_sweep.user_data import check_sweep_evaluation

        try:  # search=measured without held-out data: refused before the first trial
            check_sweep_evaluation(self.sweeper.config)
        except UserInputError as exc:
            raise _one_line_exit(exc) from exc
        before = {t.number for t in study.trials} if study is not None else set()
        self._cap_to_grid_left(study, arguments)
        try:
            if self.study_storage is None:
                super().sweep(arguments)
            else:
                with Heartbeat(self._load, self.study_storage, heartbeat_settings()[0]):
                    super().sweep(arguments)
        except ValueError as exc:  # the plugin asks for the best trial of a study where none completed
            study = study or self._load()
            if study is None or any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
                raise
            raise _one_line_exit(_no_result_text(study, before)) from exc
        except BaseException as exc:
            if self.study_storage is not None:  # a session left mid-transaction is rolled back first
                self.study_storage.remove_session()
            study = study or self._load()
            faults.record_stop(exc)  # Ctrl-C / SIGTERM: the sweep callback ends the parent KILLED
            if study is not None:
                reason = (faults.stop_text(exc) if faults.interrupted(exc)
                          else f"sweep aborted: {getattr(exc, 'message', None) or type(exc).__name__}")
                failed = faults.fail_own_trials(study, self.study_storage, reason)
                if failed:
                    log.warning("optuna trials %s marked FAIL (%s)", failed, reason)
            raise
        self._require_a_result(before)

    def _cap_to_grid_left(self, study: Any, arguments: list[str]) -> None:
        """A grid study asks at most for the combinations no trial took yet (``search/grid.py``): the
        plugin caps ``n_trials`` at the grid's size only, and Optuna re-proposes finished ones."""
        from autoquant_sweep.search.grid import combinations_left, grid_space, nothing_left_text

        # still the plugin's partial here: it builds the sampler inside sweep()
        grid = _is_grid(self.sweeper.sampler)
        space = grid_space(self.sweeper.params, arguments) if study is not None and grid else None
        if space is None:
            return
        left = combinations_left(space, study.trials)
        if not left:  # the sweep callback stops this before anything is created; here: a concurrent sweep
            raise _one_line_exit(f"hydra.sweeper: {nothing_left_text(study.study_name, space, study.trials)}")
        if len(left) < self.sweeper.n_trials:
            log.info("study %s: %d of its grid's combinations left; n_trials %d -> %d", study.study_name,
                     len(left), self.sweeper.n_trials, len(left))
            self.sweeper.n_trials = len(left)

    def _require_a_result(self, before: set[int]) -> None:
        """A sweep none of whose trials completed is an error (exit 2), even in a study with earlier
        results: the plugin would name the study's old best as this sweep's result."""
        study = self._load()
        if study is None:
            return
        own = _own_new_trials(study, before)
        if any(t.state == optuna.trial.TrialState.COMPLETE for t in own):
            return
        results = Path(str(self.sweeper.config.hydra.sweep.dir)) / "optimization_results.yaml"
        results.unlink(missing_ok=True)  # it names a best that is not this sweep's
        raise _one_line_exit(_no_result_text(study, before))

    def _load(self) -> Any:
        """The study on this sweep's RDB storage, ``None`` when it does not exist yet (or no RDB storage)."""
        if self.study_storage is None:
            return None
        try:
            return optuna.load_study(study_name=self.study_name, storage=self.study_storage)
        except KeyError:  # the study does not exist yet
            return None

    def _cleanup(self) -> Any:
        study = self._load()
        if study is not None:
            failed = faults.fail_stale_trials(study, self.study_storage)
            if failed:
                log.warning("study %s: %d stale RUNNING trial(s) of dead processes marked FAIL: %s",
                            study.study_name, len(failed), failed)
            self._fail_heartbeat_stale(study)
        return study

    def _fail_heartbeat_stale(self, study: Any) -> None:
        """Optuna's own heartbeat check (any host): RUNNING trials whose owner stopped beating for the grace
        period become FAIL (user attr ``fail_reason``), and the MLflow runs of those owners KILLED."""
        assert self.study_storage is not None
        running = {t.number: faults.trial_owner(t)
                   for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
        if not running:
            return
        grace = heartbeat_settings()[1]
        self.study_storage.stale_reason = (f"no heartbeat from its owner for more than {grace} s: the "
                                           "process or its node was lost")
        try:
            optuna.storages.fail_stale_trials(study)
        finally:
            self.study_storage.stale_reason = None
        failed = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
                  if t.number in running and "no heartbeat" in (faults.trial_fail_reason(t) or "")]
        if not failed:
            return
        owners = {running[t.number] for t in failed if running[t.number]}
        log.warning("study %s: trial(s) %s failed by heartbeat (owners %s)", study.study_name,
                    [t.number for t in failed], ", ".join(sorted(owners)))
        try:
            self._kill_runs_of(owners)
        except Exception as exc:  # the trials are failed; MLflow's runs are the next sweep's to close
            log.warning("could not mark the MLflow runs of %s KILLED: %s", sorted(owners), exc)

    def _kill_runs_of(self, owners: set[str]) -> None:
        from autoquant_sweep.tracking.store import connect, settings_from_cfg

        config = self.sweeper.config
        if config is None or not owners:
            return
        keys = [k for k in ("tracking", "experiment") if k in config]
        settings = settings_from_cfg({k: OmegaConf.to_container(config[k], resolve=True)
                                      if OmegaConf.is_config(config[k]) else config[k] for k in keys})
        if not settings.enabled:
            return
        client = connect(settings)
        experiment = client.get_experiment_by_name(settings.experiment_name)
        if experiment is not None:
            faults.kill_stale_runs(client, experiment.experiment_id, dead_owners=owners)
