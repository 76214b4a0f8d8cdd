"""The optional dependencies (the package's extras), imported where they are used.

A missing one is a one-line :class:`~mambapro.errors.UserError` (of the caller's kind) naming
the module and the extra that installs it, instead of an ``ImportError`` traceback.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from mambapro.errors import UserError

__all__ = ["import_extra"]


def import_extra(
    *modules: str, error: type[UserError], extra: str = "deploy", why: str = ""
) -> tuple[ModuleType, ...]:
    """Import ``modules`` (in order); the first missing one raises ``error`` saying
    ``NAME is not installed (WHY): pip install 'mambapro[EXTRA]'``."""
    try:
        return tuple(import_module(name) for name in modules)
    except ImportError as err:
        note = f" ({why})" if why else ""
        raise error(
            f"{err.name or modules[0]} is not installed{note}: pip install 'mambapro[{extra}]'"
        ) from None
