"""Exceptions whose message is a complete, one-line answer for the user.

Every error a user can cause by configuration (a key, a path, a combination) is raised as a
:class:`UserInputError` subclass; the entry points print ``autoquant-sweep: error: <message>`` and exit
with status 2 instead of a traceback.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad configuration or input: the message names the key or path and what to do."""


class CapabilityRefusedError(UserInputError):
    """The pair x granularity combination is known not to work (or to be silently ignored) here."""


class SensitivityResultError(RuntimeError):
    """ModelOpt returned something that is not a sensitivity result (all zeros, non-finite)."""


class OneLineExit(SystemExit):
    """Exit status 2 after the one-line error was printed; ``message`` lets the sweep's end quote it.

    A ``SystemExit``, so Hydra's launcher does not turn it into a failed job: it stops the sweep.
    """

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


class DiskFullError(UserInputError):
    """A write failed because the file system is full: the message names the path. It stops a sweep (every
    next trial would fail the same way) instead of failing one trial."""


_DISK_FULL_TEXT = ("database or disk is full", "No space left on device", "Disk quota exceeded")


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it wraps: ``__cause__``, ``__context__``, SQLAlchemy's ``orig``)
    means the file system is full (``ENOSPC`` / ``EDQUOT``, or SQLite's ``database or disk is full``).

    Example:
        >>> import errno
        >>> disk_full(RuntimeError("write failed")), disk_full(OSError(errno.ENOSPC, "No space left"))
        (False, True)
    """
    import errno

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(exc) for text in _DISK_FULL_TEXT):
            return True
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return False
