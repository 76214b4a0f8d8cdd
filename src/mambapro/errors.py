"""Exceptions shared by the command-line layer and the engine."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An error caused by user input (a bad flag value, a file that is not what it should be).

    The CLI prints its message as one line and exits with status 2, without a traceback.
    """
