"""Exceptions shared by every layer, and the file-system checks that raise them early.

Everything a user can fix (a config value, a data file, a checkpoint, an output path) raises a
:class:`UserError` subclass with a one-line message naming the culprit; the CLI prints that line
and exits with status 2. The classes also derive from the built-in type a library caller would
expect (``ValueError``), so ``except ValueError`` keeps working.

This module imports nothing heavy: the CLI catches these without importing torch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "TrainingError",
    "UserError",
    "WeightsError",
    "check_output_dir",
    "check_output_file",
    "short_reason",
]


class UserError(Exception):
    """An error caused by user input (a bad flag value, a file that is not what it should be).

    The CLI prints its message as one line and exits with status 2, without a traceback.
    """


class ConfigError(UserError, ValueError):
    """A configuration value or key is invalid; the message names it."""


class DatasetError(UserError, ValueError):
    """A dataset folder, file name or image is invalid; the message names it."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file is missing, unreadable or not a mambapro checkpoint."""


class WeightsError(UserError, ValueError):
    """A pre-trained weights file (``model.weights``) is unreadable or does not fit the backbone."""


class TrainingError(UserError, RuntimeError):
    """The run cannot start or continue (non-finite loss, a clashing run, ...); the message says why."""


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable(folder: Path) -> bool:
    # A real probe rather than os.access: it also answers for read-only mounts, ACLs and root
    # without CAP_DAC_OVERRIDE. The probe file is gone when the with-block ends.
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_output_dir(path: str | Path, what: str) -> Path:
    """Refuse now, before any long computation, a folder that could not be created or written.

    ``what`` names the option in the message (``--output``, ``data.root``). Nothing is created.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p} is a file, not a folder")
    base = _nearest_existing(p)
    if not base.is_dir():
        raise UserError(f"{what} {p}: {base} is a file, not a folder")
    if not _writable(base):
        raise UserError(f"{what} {p}: cannot write in {base} (permission denied or read-only)")
    return p


def check_output_file(path: str | Path, what: str) -> Path:
    """Refuse now a file path that could not be written (a folder, below a file, no permission)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder; give a file name")
    check_output_dir(p.parent, what)
    if p.exists():
        try:
            with open(p, "r+b"):  # opened for writing without truncating: the file is unchanged
                pass
        except OSError as err:
            raise UserError(f"{what} {p}: cannot overwrite it ({err.strerror})") from None
    return p


def short_reason(err: BaseException) -> str:
    """An exception's message on one line, or its type name when it has none."""
    return " ".join(str(err).split()) or type(err).__name__
