"""The gallery index file: its format and header, its errors, and writing and checked reading.

The file is one ``.npz`` (``allow_pickle=False``): the serialized FAISS index as a uint8 array, a
JSON header (format name and version, kind, dimension, parameters, recall, the identity of the
model that made the embeddings) and the per-row metadata arrays of
:class:`~mambapro.retrieval.gallery.GalleryLabels`. It is written atomically (temporary file in
the same folder + ``os.replace``). Reading checks everything before a row is used: a missing,
corrupt or mismatched file raises :class:`GalleryIndexError` with a one-line message.

FAISS (``faiss-cpu``, the ``deploy`` extra) is imported where used (:func:`import_faiss`), so
the package imports without it and the functions that need it say which extra to install.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mambapro.errors import UserError, short_reason
from mambapro.extras import import_extra
from mambapro.files import atomic_write
from mambapro.retrieval.gallery import LABELS
from mambapro.retrieval.identity import stored_identity

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "KINDS",
    "FaissMissingError",
    "GalleryIndexError",
    "IndexFile",
    "import_faiss",
    "index_header",
    "read_index_file",
    "write_index_file",
]

FORMAT = "mambapro-gallery-index"
FORMAT_VERSION = 1
KINDS = ("flat", "ivf-pq")
_KEYS = {"header", "index", *LABELS}


class GalleryIndexError(UserError, ValueError):
    """A gallery index file or its input is missing, corrupt or does not fit; the message names it."""


class FaissMissingError(UserError, ImportError):
    """FAISS is not installed (it is the ``deploy`` extra)."""


def import_faiss() -> Any:
    """The ``faiss`` module, or :class:`FaissMissingError` naming the extra that installs it."""
    (faiss,) = import_extra("faiss", error=FaissMissingError)
    return faiss


@dataclass
class IndexFile:
    """The checked contents of a gallery index file."""

    index: Any  # the deserialized FAISS index
    kind: str
    header: dict
    meta: dict[str, np.ndarray]  # LABELS -> one entry per row of the index
    identity: dict | None


def index_header(
    kind: str,
    dim: int,
    ntotal: int,
    params: dict,
    recall: float | None,
    recall_queries: int,
    built_from: int,
    identity: dict | None,
) -> dict:
    """The JSON header of a file: the format, then what :func:`read_index_file` checks and returns."""
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind,
        "dim": dim,
        "ntotal": ntotal,
        "metric": "inner_product",
        "params": params,
        "recall_at_10": recall,
        "recall_queries": recall_queries,
        "built_from": built_from,
        "identity": identity,
    }


def write_index_file(path: str | Path, index: Any, header: dict, arrays: dict[str, np.ndarray]) -> Path:
    """Write a FAISS index, its header and metadata atomically (temporary file + ``os.replace``)."""
    faiss = import_faiss()
    path = Path(path)
    blob = faiss.serialize_index(index)
    with atomic_write(path) as fh:  # a file object: NumPy appends no suffix
        np.savez(
            fh,
            header=np.asarray(json.dumps(header)),
            index=np.asarray(blob, dtype=np.uint8),
            **arrays,
        )
    return path


def read_index_file(path: str | Path) -> IndexFile:
    """Read and check a file of :func:`write_index_file`; a bad file raises :class:`GalleryIndexError`."""
    path = Path(path)
    header, blob, meta = _read_arrays(path)
    kind = header.get("kind")
    if kind not in KINDS:
        raise GalleryIndexError(f"{path}: unknown index kind {kind!r}")
    index = _deserialize(path, blob, kind, header)
    for name, arr in meta.items():
        if arr.ndim != 1 or len(arr) != index.ntotal:
            raise GalleryIndexError(
                f"{path}: {name} has {arr.shape} entries but the index holds {index.ntotal} rows"
            )
    identity = stored_identity(
        header.get("identity"), path, "gallery index", "rebuild it from new features", GalleryIndexError
    )
    return IndexFile(index, kind, header, meta, identity)


def _read_arrays(path: Path) -> tuple[dict, np.ndarray, dict[str, np.ndarray]]:
    """The header (format and version checked), the index bytes and the metadata of the archive."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise GalleryIndexError(f"gallery index {path}: {what}")
    bad = f"{path} is not a gallery index written by `mambapro index build`"
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as err:
        raise GalleryIndexError(f"gallery index {path}: cannot read it ({err.strerror})") from None
    if magic[:2] != b"PK":
        raise GalleryIndexError(f"{bad} (not an .npz archive)")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise GalleryIndexError(
            f"{path}: corrupt gallery index (truncated or overwritten: {short_reason(err)}); rebuild it"
        ) from None
    with z:
        missing = _KEYS - set(z.files)
        if missing:
            hint = "; it looks like a features file" if {"feats", "paths"} <= set(z.files) else ""
            raise GalleryIndexError(f"{bad}: it lacks the arrays {sorted(missing)}{hint}")
        try:
            header = json.loads(str(z["header"][()]))
            blob = z["index"]
            meta = {name: z[name] for name in LABELS}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
            raise GalleryIndexError(f"{path}: corrupt gallery index ({short_reason(err)})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise GalleryIndexError(f"{bad} (no {FORMAT} header)")
    if header.get("version") != FORMAT_VERSION:
        raise GalleryIndexError(
            f"{path}: gallery index format version {header.get('version')!r}, this mambapro reads "
            f"version {FORMAT_VERSION}; rebuild it with `mambapro index build`"
        )
    return header, blob, meta


def _deserialize(path: Path, blob: np.ndarray, kind: str, header: dict) -> Any:
    """The FAISS index of the file's bytes, checked against its header."""
    faiss = import_faiss()
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise GalleryIndexError(f"{path}: corrupt gallery index (index bytes of {blob.dtype} {blob.shape})")
    try:
        index = faiss.deserialize_index(blob)
    except (RuntimeError, MemoryError, ValueError) as err:
        raise GalleryIndexError(f"{path}: corrupt gallery index ({short_reason(err)})") from None
    expected = faiss.IndexFlatIP if kind == "flat" else faiss.IndexIVFPQ
    if not isinstance(index, expected) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise GalleryIndexError(f"{path}: the header says {kind} but the index is a {type(index).__name__}")
    if index.d != header.get("dim") or index.ntotal != header.get("ntotal"):
        raise GalleryIndexError(
            f"{path}: the header says {header.get('ntotal')} x {header.get('dim')} but the index "
            f"holds {index.ntotal} x {index.d}"
        )
    return index
