"""Surviving faults: graceful SIGTERM, and cleaning up after a process that died (SIGKILL, OOM, node loss).

* :func:`install_signal_handlers` turns SIGTERM into :class:`Terminated` (a ``SystemExit``) and SIGINT
  (Ctrl-C) into :class:`Interrupted` (the same, status 130, instead of a ``KeyboardInterrupt`` traceback),
  so ``finally`` blocks and ``except BaseException`` handlers run: the job's MLflow run is marked
  ``KILLED``, the sweeper fails its own Optuna trials with a ``fail_reason``, the sweep's parent run ends
  ``KILLED`` and nothing is registered; the process exits with status 143 (SIGTERM) or 130 (SIGINT).
* Every Optuna trial (user attr ``aqs_owner``) and MLflow run (tag ``aqs.owner``) records its owner
  process as ``<host>:<pid>``. The next sweep marks what a dead owner on this host left ``RUNNING`` as
  ``FAIL`` (Optuna, with user attr ``fail_reason``) / ``KILLED`` (MLflow, tag ``failure_reason``), and
  removes stale staging folders. Owners on other hosts are left alone (their liveness cannot be checked
  from here).

Optuna is read through its public API (``FrozenTrial.user_attrs``, ``Study.tell``). A RUNNING trial that
this code did not ask for (the plugin holds its ``Trial``) has no public write: :func:`storage_trial_id`
is the one place that asks the storage for a trial's id, so that its fail reason (and the sweeper's
heartbeat) can be written on the study's storage (the sweeper opens it and passes it in).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OWNER_ATTR = "aqs_owner"  # Optuna trial user attr
OWNER_TAG = "aqs.owner"  # MLflow run tag
FAIL_REASON_ATTR = "fail_reason"  # Optuna trial user attr (Optuna's own objective errors: a system attr)


class StopSignals:
    """What this process knows of a stop: the signal received and not yet raised, how deep it is inside
    :func:`signals_deferred`, how many stop signals arrived, why it is stopping, and the handlers it
    replaced. One per process (:data:`STOP`); :meth:`reset` forgets a stop and puts the replaced handlers
    back, so that one interpreter can run sweep after sweep (:mod:`autoquant_sweep.process_state`).

    Example:
        >>> state = StopSignals()
        >>> state.reason = "killed by SIGTERM"
        >>> state.reset()
        >>> state.reason is None and state.pending is None
        True
    """

    def __init__(self) -> None:
        self._forget()

    def _forget(self) -> None:
        self.pending: int | None = None  # a stop signal received but not yet raised
        self.deferring = 0  # > 0 inside signals_deferred(): a stop is recorded, raised when the block ends
        self.received = 0  # stop signals received so far (a deferred block raises only for one inside it)
        self.reason: str | None = None  # why this process is being stopped ("killed by SIGTERM", ...)
        self.replaced: dict[int, Any] = {}  # signal -> the handler install_signal_handlers replaced
        self.replaced_unraisablehook: Any = None  # sys.unraisablehook before install_signal_handlers

    @property
    def installed(self) -> bool:
        return bool(self.replaced)

    def reset(self) -> None:
        """Forget any stop, and restore the handlers :func:`install_signal_handlers` replaced."""
        if self.replaced and threading.current_thread() is threading.main_thread():
            signal.setitimer(signal.ITIMER_REAL, 0)
            for signum, handler in self.replaced.items():
                signal.signal(signum, handler)
        if self.replaced_unraisablehook is not None:
            sys.unraisablehook = self.replaced_unraisablehook
        self._forget()


#: this process's stop state (signal handlers run in the main thread and write it)
STOP = StopSignals()


class Terminated(SystemExit):
    """Raised in the main thread when the process receives SIGTERM (exit status ``128 + signum``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"killed by {signal.Signals(self.signum).name}"


class Interrupted(Terminated):
    """Raised in the main thread on SIGINT (Ctrl-C): handled like SIGTERM, exit status 130, no traceback."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)

    def __str__(self) -> str:
        return f"interrupted by {signal.Signals(self.signum).name} (Ctrl-C)"


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` means the process was stopped from outside (SIGTERM, Ctrl-C), not a failure."""
    return isinstance(exc, (Terminated, KeyboardInterrupt))


def stop_text(exc: BaseException) -> str:
    """Why ``exc`` stopped the process, never empty (a bare ``KeyboardInterrupt`` has no text)."""
    return str(exc) or ("interrupted (KeyboardInterrupt)" if isinstance(exc, KeyboardInterrupt)
                        else type(exc).__name__)


def record_stop(exc: BaseException) -> None:
    """Remember that the process is being stopped by ``exc`` (also when no handler of ours saw a signal)."""
    if interrupted(exc) and STOP.reason is None:
        STOP.reason = stop_text(exc)


def _stop_exception(signum: int) -> BaseException:
    return Interrupted(signum) if signum == signal.SIGINT else Terminated(signum)


_FINALIZER_NAMES = frozenset({"__del__", "remove", "_remove", "_remove_dead_weakref", "__exit__",
                              "_run_finalizers"})
# weakref callbacks: weakref.py's, and WeakSet's ``_remove`` in _weakrefset.py (seen under ModelOpt's hooks)
_FINALIZER_FILES = ("weakref.py", "_weakrefset.py")


def _in_finalizer(frame: Any) -> bool:
    """Whether ``frame`` (or one of its two callers) is a finalizer / weakref callback.

    An exception raised there is printed as "Exception ignored in ..." and lost, so the stop is deferred.
    """
    for _ in range(3):
        if frame is None:
            return False
        code = frame.f_code
        if code.co_name in _FINALIZER_NAMES or code.co_filename.endswith(_FINALIZER_FILES):
            return True
        frame = frame.f_back
    return False


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM and SIGINT: raise :class:`Terminated` / :class:`Interrupted` in the main thread."""
    STOP.pending = signum
    STOP.received += 1
    exc = _stop_exception(signum)
    STOP.reason = STOP.reason or stop_text(exc)
    if STOP.deferring:  # a step that must not be cut in half: recorded now, raised when it ends
        signal.signal(signum, signal.SIG_DFL)  # a second signal still kills at once
        return
    if _in_finalizer(frame):  # retry in 20 ms, out of the finalizer
        _retry_soon()
        return
    # a second signal during cleanup kills the process the default way
    signal.signal(signum, signal.SIG_DFL)
    _cancel_retry()
    raise exc


def _retry_soon() -> None:
    """Raise the pending stop again in 20 ms (:func:`_on_alarm`), out of the finalizer it landed in."""
    signal.setitimer(signal.ITIMER_REAL, 0.02)


def _cancel_retry() -> None:
    """The stop is being raised: a retry still armed (a stop that landed in a finalizer) must not raise it a
    second time, somewhere in the cleanup it starts."""
    if signal.SIGALRM in STOP.replaced:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _on_unraisable(unraisable: Any) -> None:
    """``sys.unraisablehook``: a stop raised in a finalizer deeper than :func:`_in_finalizer` looks (Python
    prints "Exception ignored in ..." and goes on: the command would end 0) is raised again 20 ms later."""
    if isinstance(unraisable.exc_value, Terminated) and signal.SIGALRM in STOP.replaced:
        _retry_soon()
        return
    (STOP.replaced_unraisablehook or sys.__unraisablehook__)(unraisable)


def _on_alarm(signum: int, frame: Any) -> None:
    if STOP.pending is not None:
        _on_sigterm(STOP.pending, frame)


def stop_requested() -> bool:
    """Whether this process is being stopped (SIGTERM, SIGINT / Ctrl-C, or :func:`record_stop`)."""
    return STOP.pending is not None or STOP.reason is not None


def stop_reason() -> str | None:
    """Why this process is being stopped (``killed by SIGTERM``, ``interrupted by SIGINT (Ctrl-C)``)."""
    return STOP.reason


def check_stop() -> None:
    """Raise the stop exception when a stop signal arrived but was swallowed (called between jobs)."""
    if STOP.pending is not None:
        signal.signal(STOP.pending, signal.SIG_DFL)
        _cancel_retry()
        raise _stop_exception(STOP.pending)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Run a block that must not be cut in half (creating a run, ending a sweep): SIGTERM / Ctrl-C inside
    it are recorded (:func:`stop_requested` turns true, the block can look) and raised when it ends.

    Example:
        >>> with signals_deferred():
        ...     pass
        >>> stop_requested()
        False
    """
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield  # (a helper thread's block, e.g. the heartbeat's writes, must not hold the main thread's stop)
        return
    STOP.deferring += 1
    before = STOP.received
    try:
        yield
    finally:
        STOP.deferring -= 1
    if not STOP.deferring and STOP.received != before:  # a stop that was already raised is not raised again
        check_stop()


def install_signal_handlers() -> bool:
    """Install SIGTERM -> :class:`Terminated` and SIGINT -> :class:`Interrupted` (main thread only).

    Returns whether the SIGTERM handler is active. A signal someone else handles (a launcher, a test
    harness) is left alone.
    """
    if STOP.installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        return False  # someone else (a launcher, a test harness) owns SIGTERM
    STOP.replaced[signal.SIGTERM] = signal.signal(signal.SIGTERM, _on_sigterm)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        STOP.replaced[signal.SIGINT] = signal.signal(signal.SIGINT, _on_sigterm)
    if signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None):
        STOP.replaced[signal.SIGALRM] = signal.signal(signal.SIGALRM, _on_alarm)
        STOP.replaced_unraisablehook, sys.unraisablehook = sys.unraisablehook, _on_unraisable
    return True


def owner() -> str:
    """This process as ``<host>:<pid>``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host (zombies count as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is dead for our purposes
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def owner_is_dead(value: str | None, host: str | None = None) -> bool:
    """``True`` when ``value`` (``host:pid``) names a process of this host that no longer runs.

    Example:
        >>> owner_is_dead("otherhost:1", host="thishost")
        False
        >>> owner_is_dead(None)
        False
    """
    if not value or ":" not in value:
        return False
    owner_host, _, pid = value.rpartition(":")
    if owner_host != (host or socket.gethostname()) or not pid.isdigit():
        return False
    return not pid_alive(int(pid))


def trial_owner(trial: Any) -> str | None:
    """The ``host:pid`` that asked for ``trial`` (a ``FrozenTrial``), ``None`` when unknown.

    Trials of studies written before owners became user attrs carry it as a system attr.
    """
    return trial.user_attrs.get(OWNER_ATTR) or trial.system_attrs.get(OWNER_ATTR)


def trial_fail_reason(trial: Any) -> str | None:
    """Why ``trial`` (a ``FrozenTrial``) failed: the project's user attr, else Optuna's own system attr.

    Example:
        >>> import optuna
        >>> study = optuna.create_study()
        >>> trial = study.ask()
        >>> trial.set_user_attr(FAIL_REASON_ATTR, "killed by SIGTERM")
        >>> study.tell(trial, state=optuna.trial.TrialState.FAIL)  # doctest: +ELLIPSIS
        FrozenTrial(...)
        >>> trial_fail_reason(study.trials[0])
        'killed by SIGTERM'
    """
    return trial.user_attrs.get(FAIL_REASON_ATTR) or trial.system_attrs.get(FAIL_REASON_ATTR)


def storage_trial_id(storage: Any, study_name: str, number: int) -> int:
    """The storage's id of trial ``number`` of study ``study_name``: what a write on a RUNNING trial needs.

    Optuna 5.0 (``tests/unit/test_optuna_storage_access.py``) writes a trial's user attrs only through the
    ``Trial`` that ``Study.ask`` returned, which the plugin keeps; ``FrozenTrial`` keeps the id private and
    ``optuna.trial.Trial(study, trial_id)`` is "not recommended" (it runs the sampler's ``before_trial``).
    So this, on the storage whose methods Optuna's ``BaseStorage`` says are not for library users, is the
    one isolated place that asks for storage ids.
    """
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def fail_trial(study: Any, storage: Any, number: int, reason: str) -> None:
    """Mark the ``RUNNING`` trial ``number`` of ``study`` ``FAIL`` with user attr ``fail_reason=reason``.

    ``storage`` is the ``optuna.storages`` object the study was opened on (a ``Study`` does not hand out
    its storage publicly). Raises ``RuntimeError`` / ``ValueError`` when the trial finished meanwhile.
    """
    import optuna

    storage.set_trial_user_attr(storage_trial_id(storage, study.study_name, number), FAIL_REASON_ATTR, reason)
    study.tell(number, state=optuna.trial.TrialState.FAIL)


def fail_stale_trials(study: Any, storage: Any) -> list[int]:
    """Mark ``RUNNING`` trials whose owner process is dead as ``FAIL`` (reason in user attr ``fail_reason``).

    ``storage``: the storage object ``study`` was opened on. Returns the trial numbers that were failed.
    """
    import optuna

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        who = trial_owner(trial)
        if not owner_is_dead(who):
            continue
        reason = f"owner process {who} died while the trial was running"
        try:
            fail_trial(study, storage, trial.number, reason)
        except (RuntimeError, ValueError) as exc:  # finished meanwhile: nothing to clean
            log.info("trial %d not failed: %s", trial.number, exc)
            continue
        log.warning("optuna trial %d: %s; marked FAIL", trial.number, reason)
        failed.append(trial.number)
    return failed


def fail_own_trials(study: Any, storage: Any, reason: str) -> list[int]:
    """Mark the ``RUNNING`` trials owned by this process as ``FAIL`` (used when the sweep is stopped)."""
    import optuna

    me, failed = owner(), []
    try:
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    except Exception as exc:  # the storage cannot be read: the next sweep fails them (owner dead)
        log.warning("could not read the RUNNING trials to mark them FAIL: %s", exc)
        return failed
    for trial in running:
        if trial_owner(trial) != me:
            continue
        try:
            fail_trial(study, storage, trial.number, reason)
            failed.append(trial.number)
        except (RuntimeError, ValueError):
            continue
        except Exception as exc:  # e.g. a full disk: the stop goes on; the next sweep fails the trial
            log.warning("optuna trial %d could not be marked FAIL (%s); the next sweep will", trial.number,
                        (str(exc).splitlines() or [type(exc).__name__])[0])
    return failed


def kill_stale_runs(client: Any, experiment_id: str, dead_owners: Collection[str] = ()) -> list[str]:
    """Mark ``RUNNING`` MLflow runs of a dead owner (tag ``aqs.owner``) as ``KILLED`` with a reason.

    Children of a stale parent are killed too when their own owner is dead or unknown, and so is every
    ``RUNNING`` child without an owner whose parent sweep has ended (``KILLED`` / ``FAILED`` /
    ``FINISHED``): nothing can still be running it. ``dead_owners``: owners known dead although their pid
    cannot be checked here (another host, failed by Optuna's heartbeat); their runs' children are killed
    unless they run in a live process of this host.
    """
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                              max_results=5000)
    running = {r.info.run_id for r in runs}

    def is_dead(who: str | None) -> bool:
        return owner_is_dead(who) or (who is not None and who in dead_owners)

    stale_parents = {r.info.run_id for r in runs if is_dead(r.data.tags.get(OWNER_TAG))}
    remote_parents = {r.info.run_id for r in runs if r.data.tags.get(OWNER_TAG) in dead_owners}
    ended_parents: dict[str, bool] = {}

    def parent_ended(parent_id: str | None) -> bool:
        if not parent_id or parent_id in running:
            return False
        if parent_id not in ended_parents:
            try:
                ended_parents[parent_id] = client.get_run(parent_id).info.status != "RUNNING"
            except Exception:  # deleted: nothing runs it either
                ended_parents[parent_id] = True
        return ended_parents[parent_id]

    killed = []
    for run in runs:
        tags = run.data.tags
        who = tags.get(OWNER_TAG)
        parent = tags.get("mlflow.parentRunId")
        dead = (is_dead(who) or (who is None and (parent in stale_parents or parent_ended(parent)))
                or (parent in remote_parents and not _alive_here(who)))
        if not dead:
            continue
        reason = f"killed: owner process {who or 'of the parent sweep'} died while the run was RUNNING"
        client.set_tag(run.info.run_id, "failure_reason", reason)
        client.set_tag(run.info.run_id, "failure_kind", "killed")
        client.set_terminated(run.info.run_id, "KILLED")
        log.warning("MLflow run %s: %s; marked KILLED", run.info.run_id, reason)
        killed.append(run.info.run_id)
    return killed


def _alive_here(who: str | None) -> bool:
    """Whether ``who`` (``host:pid``) is a live process of this host."""
    if not who or ":" not in who:
        return False
    host, _, pid = who.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and pid_alive(int(pid))


def staging_owner(name: str) -> str | None:
    """The ``host:pid`` encoded in a staging folder name made by :func:`autoquant_sweep.layout.staging_name`.

    Example:
        >>> staging_owner(".report.staging-node1-123-ab12cd34")
        'node1:123'
    """
    for marker in (".staging-", ".old-"):
        if marker in name:
            rest = name.split(marker, 1)[1]
            parts = rest.rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit():
                return f"{parts[0]}:{parts[1]}"
    return None


def clean_stale_staging(root: Path) -> list[Path]:
    """Remove staging / replaced folders under ``root`` left by dead processes of this host."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for path in root.rglob(".*"):
        if not path.is_dir() or (".staging-" not in path.name and ".old-" not in path.name):
            continue
        if owner_is_dead(staging_owner(path.name)):
            shutil.rmtree(path, ignore_errors=True)
            log.warning("removed stale staging folder %s", path)
            removed.append(path)
    return removed
