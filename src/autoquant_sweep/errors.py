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
