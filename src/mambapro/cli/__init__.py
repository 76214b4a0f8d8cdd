"""The ``mambapro`` console script (``mambapro.cli:main``, ``python -m mambapro.cli``).

Every sub-command that builds something takes ``--config FILE`` and trailing dotted overrides
(``key.sub=value``). Heavy imports happen inside the handlers (:mod:`mambapro.cli.commands`) so
``mambapro --help`` is instant and bad input is refused before torch loads. Errors a user can
fix (bad config, bad data, bad checkpoint, the file system) print one line and exit 2.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence

from mambapro.cli.parser import build_parser
from mambapro.errors import UserError

__all__ = ["main", "build_parser"]


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _os_error_message(err: OSError) -> str:
    """``cannot write /x/y: Permission denied`` rather than ``[Errno 13] ...`` and a traceback."""
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    reason = err.strerror or type(err).__name__
    return f"{where}: {reason}" if where else _one_line(str(err)) or reason


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    # One line per warning, without the source line Python prints by default.
    print(f"mambapro: warning: {_one_line(str(message))}", file=file or sys.stderr)


def _passive_openmp_waits() -> None:
    """Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``), unless the
    environment already sets a policy.

    libgomp (PyTorch's OpenMP on Linux) otherwise keeps the main process's intra-op threads
    spinning between parallel regions, so training holds every core even while it runs Python.
    With as many threads as cores, any other runnable process (the DataLoader workers, another
    job) preempts one of them and every parallel op then waits out a scheduler slice: on the
    2-core demo machine that made a training epoch 2-5x slower and burnt 2-3x the CPU time.
    The policy changes no number (the same threads split the same work). libgomp reads it
    once, when torch is imported, which the handlers do after this runs (this module imports
    no torch).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: Sequence[str] | None = None) -> int:
    _passive_openmp_waits()
    parser = build_parser()
    # Overrides may stand anywhere among the options: argparse takes the positional list once,
    # so the key=value tokens after an option come back as extras and join the overrides.
    args, extras = parser.parse_known_args(argv)
    stray = [a for a in extras if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extras:
        args.overrides = [*args.overrides, *extras]
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    warnings.showwarning = _show_warning
    try:
        return args.handler(args)
    except UserError as err:
        print(f"mambapro {args.command}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:
        # File-system failures (permission denied, read-only, no space, a file where a folder
        # should be) are the environment's, not bugs: one line naming the path.
        print(f"mambapro {args.command}: error: {_os_error_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mambapro {args.command}: interrupted", file=sys.stderr)
        return 130
