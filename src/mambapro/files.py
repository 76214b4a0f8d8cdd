"""Writing files without losing any: atomic replacement, signals held during a write, and
outputs that never replace one of their inputs or a file of another kind.

* :func:`atomic_write` writes a temporary file beside the target and renames it over the target
  when the block ends; SIGINT and SIGTERM that arrive meanwhile are held back
  (:func:`deferred_signals`) and handled as usual once the file is complete, so Ctrl-C or a
  scheduler's stop never leaves a half-written checkpoint, features file, index or export.
* :func:`artefact_kind` recognises what a file is from its content (a checkpoint, a features
  file, a gallery index, an exported model, a rank list, an image ...);
  :func:`check_output` refuses an output path that is one of the command's inputs (resolved
  paths, symlinks and hard links included) or an existing file of another kind, before any
  computation starts.

This module imports nothing heavy (no torch, no NumPy): the CLI runs these checks before the
torch-based modules load.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from mambapro.errors import UserError, check_output_dir, check_output_file

__all__ = [
    "KIND_NAMES",
    "OUTPUT_MARKER",
    "RANK_LIST_TAG",
    "artefact_kind",
    "atomic_write",
    "check_output",
    "check_output_folder",
    "claim_output_folder",
    "deferred_signals",
    "npz_path",
]

#: What each kind is called in messages.
KIND_NAMES = {
    "checkpoint": "a PyTorch checkpoint",
    "features": "a features file of `mambapro extract`",
    "index": "a gallery index of `mambapro index`",
    "onnx": "an ONNX model of `mambapro export`",
    "pt2": "a pt2 model of `mambapro export`",
    "rank list": "a rank-list image of `mambapro search`",
    "rankings": "a rankings file of `mambapro search`",
    "image": "an image (not one mambapro wrote)",
    "archive": "a zip archive mambapro did not write",
}
#: The PNG text chunk (key ``Software``) a rank-list image carries, so that a later search may
#: replace it while refusing to replace any other image.
RANK_LIST_TAG = "mambapro search rank list"

_IMAGE_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"BM",
    b"GIF8",
    b"II*\x00",  # TIFF
    b"MM\x00*",
    b"RIFF",  # WebP
    b"P5",  # PGM / PPM
    b"P6",
)
_ONNX_TAIL = 1 << 16


# ----------------------------------------------------------------------------- signals


class _Deferral:
    """Process-wide state of :func:`deferred_signals` (signal handlers are process-wide too)."""

    depth = 0
    pending: list[int] = []
    previous: dict[int, object] = {}
    what = ""


def _hold(signum: int, frame: object) -> None:  # noqa: ARG001
    if signum not in _Deferral.pending:
        _Deferral.pending.append(signum)
        name = signal.Signals(signum).name
        print(f"mambapro: {name} received; finishing the write of {_Deferral.what} first", file=sys.stderr)


def _deliver(signum: int, handler: object) -> None:
    if callable(handler):
        handler(signum, None)  # Python's default SIGINT handler raises KeyboardInterrupt here
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)  # the default action (SIGTERM ends the process), now the file is whole


@contextlib.contextmanager
def deferred_signals(
    what: str = "a file", signums: Iterable[int] = (signal.SIGINT, signal.SIGTERM)
) -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs; then run the handlers that were
    installed before it, once per signal received (Ctrl-C raises ``KeyboardInterrupt`` at the
    end of the block). Nested blocks deliver at the end of the outermost one. Outside the main
    thread (where Python cannot install handlers) the block runs unprotected."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = _Deferral.depth == 0
    if outermost:
        _Deferral.pending, _Deferral.what = [], what
        _Deferral.previous = {s: signal.signal(s, _hold) for s in signums}
    _Deferral.depth += 1
    try:
        yield
    finally:
        _Deferral.depth -= 1
        if outermost:
            for s, handler in _Deferral.previous.items():
                signal.signal(s, handler)  # type: ignore[arg-type]
            pending, _Deferral.pending = _Deferral.pending, []
            for s in pending:
                _deliver(s, _Deferral.previous[s])


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` only when the block ends without error.

    It writes a temporary file in the same folder (parents created), flushes and fsyncs it, then
    renames it over ``path``; on any exception the temporary file is removed and ``path`` is
    left as it was. SIGINT and SIGTERM wait until the file is complete (:func:`deferred_signals`).
    """
    path = Path(path)
    with deferred_signals(str(path)):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# ----------------------------------------------------------------------------- kinds


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return "archive"
    base = {n.rsplit("/", 1)[-1] for n in names}
    if "archive_format" in base:
        return "pt2"
    if "data.pkl" in base:
        return "checkpoint"
    if {"feats.npy", "paths.npy"} <= base:
        return "features"
    if {"header.npy", "index.npy"} <= base:
        return "index"
    return "archive"


def _png_is_rank_list(path: Path) -> bool:
    # The tag sits in a tEXt chunk before the image data; the first 4 KiB hold it.
    with open(path, "rb") as fh:
        head = fh.read(4096)
    return RANK_LIST_TAG.encode() in head


def _is_onnx_export(path: Path, head: bytes) -> bool:
    # A ModelProto starts with field 1 (ir_version, a varint: tag byte 0x08); mambapro's metadata
    # entry, the last field written, names its format.
    if not head.startswith(b"\x08"):
        return False
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - _ONNX_TAIL))
        return b"mambapro-export" in fh.read()


def _is_rankings(path: Path, head: bytes) -> bool:
    if not head.lstrip().startswith(b"{") or path.stat().st_size > 1 << 28:
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"checkpoint", "gallery", "queries"} <= set(data)


def artefact_kind(path: str | Path) -> str | None:
    """What an existing file is, from its content: one of :data:`KIND_NAMES`' keys, ``"empty"``
    for a zero-byte file, or None for anything else (text, unknown binary)."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        return "empty"
    if head.startswith(b"PK"):
        return _zip_kind(path)
    if head.startswith(b"\x89PNG") and _png_is_rank_list(path):
        return "rank list"
    if head.startswith(_IMAGE_MAGIC):
        return "image"
    if _is_onnx_export(path, head):
        return "onnx"
    if _is_rankings(path, head):
        return "rankings"
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(
    path: str | Path, what: str, kind: str, inputs: Iterable[tuple[str, str | Path | None]] = ()
) -> Path:
    """Refuse, before any computation, an output ``path`` (named ``what`` in messages) that

    * is one of ``inputs`` (``(option, path)`` pairs; resolved paths, so symlinks and hard
      links to an input count as the input), or
    * exists and is not a ``kind`` artefact (an empty file may be replaced), or
    * could not be written (:func:`mambapro.errors.check_output_file`).
    """
    p = Path(path)
    exists = p.is_file()
    for option, source in inputs:
        if source is None or not Path(source).exists():
            continue
        if (exists and _same_file(p, Path(source))) or os.path.realpath(p) == os.path.realpath(source):
            link = "" if str(p) == str(source) else " (the same file through a link)"
            raise UserError(
                f"{what} {p} is the input {option} {source}{link}; writing there would destroy it: "
                "choose another output"
            )
    if exists:
        try:
            found = artefact_kind(p)
        except OSError as err:
            raise UserError(f"{what} {p}: cannot read it to check what it is ({err.strerror})") from None
        if found not in (kind, "empty"):
            name = KIND_NAMES.get(found or "", "a file mambapro did not write")
            raise UserError(
                f"{what} {p} exists and is {name}, not {KIND_NAMES.get(kind, kind)}; refusing to replace it: "
                "choose another output or remove that file first"
            )
    return check_output_file(p, what)


def npz_path(path: str | Path) -> Path:
    """``path`` with ``.npz`` appended unless it ends so: the name NumPy would give the file."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


#: The file a folder-output command (train, test, analyze) writes into its folder before anything
#: else: the folder is then that command's output, which the same command may write again.
OUTPUT_MARKER = ".mambapro-output.json"


def _written_by(folder: Path) -> str | None:
    """The command whose output ``folder`` is (its marker), or None."""
    try:
        data = json.loads((folder / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("command") if isinstance(data, dict) else None


def check_output_folder(folder: str | Path, what: str, command: str, names: Iterable[str]) -> Path:
    """Refuse, before any computation, an output ``folder`` (named ``what`` in messages) that
    ``mambapro <command>`` could not write into without destroying files it did not write.

    The folder may be new, or hold none of ``names`` (the files and folders the command writes
    there; ``*`` patterns allowed), or be an earlier output of the same command (its
    :data:`OUTPUT_MARKER` says so); and it must be writable
    (:func:`mambapro.errors.check_output_dir`).
    """
    p = check_output_dir(folder, what)
    if not p.is_dir() or _written_by(p) == command:
        return p
    clash = sorted({hit.name for name in names for hit in p.glob(name)})
    if clash:
        more = f" (and {len(clash) - 1} more: {', '.join(clash[1:4])}{', ...' if len(clash) > 4 else ''})"
        raise UserError(
            f"{what} {p} holds {clash[0]}{more if len(clash) > 1 else ''}, which `mambapro {command}` "
            f"writes there, and is not the output of an earlier `mambapro {command}`: refusing to replace "
            "it; choose another folder (a new one is created) or move those files away"
        )
    return p


def claim_output_folder(folder: str | Path, command: str) -> Path:
    """Create ``folder`` (and its parents) and mark it as the output of ``mambapro <command>``."""
    p = Path(folder)
    p.mkdir(parents=True, exist_ok=True)
    if _written_by(p) != command:
        (p / OUTPUT_MARKER).write_text(json.dumps({"command": command}) + "\n", encoding="utf-8")
    return p
