"""The FAISS gallery index: :class:`GalleryIndex`, built from, added to and searched with
the ``.npz`` features of ``mambapro extract``.

``GalleryIndex`` holds a FAISS index of the L2-normalised gallery features together with the
metadata of each row (pids, camids, sceneids, paths). Row ``i`` of the index is row ``i`` of the
features it was built from (then of each added file, in order): FAISS assigns sequential ids on
``add``, so ids stay stable and need no id map.

Kinds:

* ``flat``: exact inner product (``IndexFlatIP``). On unit vectors ``|q - g|^2 = 2 - 2 q.g``, so
  ranking by inner product is the ranking of the package's default distance (squared Euclidean
  on L2-normalised features, :func:`mambapro.evaluation.compute_distmat`), and the distances it
  returns are ``2 - 2 q.g``.
* ``ivf-pq``: an inverted file of ``nlist`` cells with product-quantised vectors (``m``
  sub-quantizers of ``nbits`` bits), inner-product metric, searching ``nprobe`` cells. It is
  approximate: at build time its recall@10 against the exact ranking is measured on up to 1,000
  of its own vectors (each vector's own entry left out) and stored in the file.

The file format and its checks are :mod:`mambapro.retrieval.index_file`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mambapro.evaluation.distance import prepare_features
from mambapro.retrieval.gallery import GalleryLabels
from mambapro.retrieval.identity import MODEL_KEYS, check_same_model
from mambapro.retrieval.index_file import (
    KINDS,
    GalleryIndexError,
    import_faiss,
    index_header,
    read_index_file,
    write_index_file,
)

__all__ = ["GALLERY_KEYS", "GalleryIndex"]

RECALL_K = 10
#: What the rows of one gallery share: the model, and the modalities present in their images.
GALLERY_KEYS = (*MODEL_KEYS, "modalities")
RECALL_QUERIES = 1000


def _normalised(feats: Any, what: str) -> np.ndarray:
    """(N, D) float32 C-contiguous L2-normalised rows, normalised exactly as ``compute_distmat`` does."""
    arr = np.asarray(feats)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise GalleryIndexError(f"{what}: features must be 2-D (num_samples, dim), got shape {arr.shape}")
    try:
        f, _ = prepare_features(arr, what)
    except (TypeError, ValueError) as err:
        raise GalleryIndexError(f"{what}: {err}") from None
    return np.ascontiguousarray(f.numpy(), dtype=np.float32)


def _default_nlist(n: int) -> int:
    """About 4 sqrt(N) cells, but at least 39 training vectors per cell (FAISS's minimum)."""
    return int(max(1, min(round(4 * np.sqrt(n)), n // 39)))


def _search_ids(index: Any, x: np.ndarray, k: int, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    sims, ids = [], []
    for a in range(0, len(x), batch):
        s, i = index.search(x[a : a + batch], k)
        sims.append(s)
        ids.append(i)
    return np.concatenate(sims), np.concatenate(ids)


def _recall_at_k(approx: Any, exact: Any, x: np.ndarray, k: int, seed: int = 0) -> tuple[float, int]:
    """Recall@k of ``approx`` against ``exact`` with up to RECALL_QUERIES rows of ``x`` as queries;
    each query's own row is left out of both lists. Returns (recall, number of queries)."""
    n = len(x)
    k = min(k, n - 1)
    if k < 1:
        return float("nan"), 0
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(RECALL_QUERIES, n), replace=False))
    q = x[rows]
    _, ex = _search_ids(exact, q, k + 1)
    _, ap = _search_ids(approx, q, k + 1)
    hits = 0
    for r, e, a in zip(rows, ex, ap):
        e_top = [i for i in e if i != r and i >= 0][:k]
        a_top = [i for i in a if i != r and i >= 0][:k]
        hits += len(set(e_top) & set(a_top))
    return hits / (k * len(rows)), len(rows)


class GalleryIndex(GalleryLabels):
    """A FAISS index of L2-normalised gallery features and the metadata of each row."""

    def __init__(
        self,
        index: Any,
        kind: str,
        pids: np.ndarray,
        camids: np.ndarray,
        sceneids: np.ndarray,
        paths: list[str],
        params: dict | None = None,
        recall: float | None = None,
        recall_queries: int = 0,
        built_from: int = 0,
        identity: dict | None = None,
    ) -> None:
        self.index = index
        self.kind = kind
        self.pids = np.asarray(pids)
        self.camids = np.asarray(camids)
        self.sceneids = np.asarray(sceneids)
        self.paths = list(paths)
        self.params = dict(params or {})
        self.recall = recall  # recall@10 measured at build (approximate kinds), else None
        self.recall_queries = recall_queries
        self.built_from = built_from or len(self.paths)
        self.identity = identity  # what made the embeddings (retrieval.identity), None if unknown
        self.source: Path | None = None  # the file it was loaded from, named in messages

    def _name(self) -> str:
        return f"the index {self.source}" if self.source is not None else "the index"

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return f"GalleryIndex(kind={self.kind!r}, ntotal={self.ntotal}, dim={self.dim})"

    # ------------------------------------------------------------------ build / add

    @classmethod
    def build(
        cls,
        features: Any,
        kind: str = "flat",
        nlist: int | None = None,
        m: int = 64,
        nbits: int = 8,
        nprobe: int = 16,
        train_size: int | None = None,
        seed: int = 0,
        what: str = "features",
    ) -> GalleryIndex:
        """Index a FeatureSet (``what`` names it in messages).

        ``nlist`` defaults to about 4 sqrt(N) cells; ``m`` must divide the feature width; the
        IVF-PQ index is trained on ``train_size`` random rows (default ``min(N, 64 * nlist)``).
        """
        faiss = import_faiss()
        if kind not in KINDS:
            raise GalleryIndexError(f"--kind {kind!r}: must be one of {', '.join(KINDS)}")
        x = _normalised(features.feats, what)
        n, d = x.shape
        if n == 0:
            raise GalleryIndexError(f"{what}: no feature rows to index")
        params: dict = {}
        recall, recall_queries = None, 0
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
            index.add(x)
        else:
            nlist = _default_nlist(n) if nlist is None else int(nlist)
            if nlist < 1 or nlist > n:
                raise GalleryIndexError(f"--nlist {nlist}: must be between 1 and the {n} rows of {what}")
            if m < 1 or d % m:
                raise GalleryIndexError(f"--m {m}: must divide the feature dimension {d}")
            if not 1 <= nbits <= 16:
                raise GalleryIndexError(f"--nbits {nbits}: must be between 1 and 16")
            if n < 2**nbits:
                raise GalleryIndexError(
                    f"{what}: {n} rows cannot train {2**nbits} PQ centroids (--nbits {nbits}); "
                    "use fewer bits or --kind flat"
                )
            if nprobe < 1:
                raise GalleryIndexError(f"--nprobe {nprobe}: must be at least 1")
            train_size = min(n, max(64 * nlist, 2**nbits * 39)) if train_size is None else min(n, train_size)
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            sample = x if train_size >= n else x[np.sort(rng.choice(n, size=train_size, replace=False))]
            index.cp.seed = seed
            # FAISS prints a warning per sub-quantizer on small training sets; one line instead.
            index.cp.min_points_per_centroid = index.pq.cp.min_points_per_centroid = 1
            if len(sample) < 39 * max(nlist, 2**nbits):
                warnings.warn(
                    f"{what}: training {nlist} cells and {2**nbits} PQ centroids on {len(sample)} vectors "
                    f"(FAISS advises at least {39 * max(nlist, 2**nbits)}); check the recall@10",
                    stacklevel=2,
                )
            index.train(sample)
            index.add(x)
            index.nprobe = min(nprobe, nlist)
            params = {
                "nlist": nlist,
                "m": m,
                "nbits": nbits,
                "nprobe": index.nprobe,
                "train_size": train_size,
            }
            exact = faiss.IndexFlatIP(d)
            exact.add(x)
            recall, recall_queries = _recall_at_k(index, exact, x, RECALL_K, seed)
            del exact
        return cls(
            index,
            kind,
            np.asarray(features.pids),
            np.asarray(features.camids),
            np.asarray(features.sceneids),
            list(features.paths),
            params,
            recall,
            recall_queries,
            n,
            getattr(features, "identity", None),
        )

    def add(self, features: Any, what: str = "features") -> range:
        """Append captures; returns the row ids they got (continuing after the existing rows)."""
        feats = np.asarray(features.feats)
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            width = feats.shape[1] if feats.ndim == 2 else f"shape {feats.shape}"
            raise GalleryIndexError(
                f"{what}: features have dimension {width} but {self._name()} holds {self.dim}-d features; "
                "extract them with the checkpoint the index was built from"
            )
        check_same_model(getattr(features, "identity", None), what, self.identity, self._name(), GALLERY_KEYS)
        known = set(self.paths)
        dup = [p for p in features.paths if p in known]
        if dup:
            raise GalleryIndexError(
                f"{what}: {len(dup)} capture(s) already in the index (first: {dup[0]}); add only new captures"
            )
        x = _normalised(feats, what)
        start = self.ntotal
        self.index.add(x)
        self.pids = np.concatenate([self.pids, np.asarray(features.pids)])
        self.camids = np.concatenate([self.camids, np.asarray(features.camids)])
        self.sceneids = np.concatenate([self.sceneids, np.asarray(features.sceneids)])
        self.paths.extend(features.paths)
        return range(start, self.ntotal)

    # ------------------------------------------------------------------ search

    def search(
        self, query_feats: Any, k: int = 10, metric: str = "euclidean", nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows for each query: ``(distances, rows)``, both (Q, min(k, ntotal)).

        Distances are those of ``compute_distmat`` on L2-normalised features: ``2 - 2 q.g``
        (``euclidean``, squared Euclidean) or ``1 - q.g`` (``cosine``), ascending; ties go to
        the lower row. Rows an approximate index could not fill are -1 with distance inf.
        ``nprobe`` overrides, for this call only, the cells an IVF index searches.
        """
        if metric not in ("euclidean", "cosine"):
            raise GalleryIndexError(f"metric {metric!r}: must be euclidean or cosine")
        if k < 1:
            raise GalleryIndexError(f"-k {k}: must be at least 1")
        q = np.asarray(query_feats)
        if q.ndim != 2 or q.shape[1] != self.dim:
            width = q.shape[1] if q.ndim == 2 else f"shape {q.shape}"
            raise GalleryIndexError(
                f"query features have dimension {width} but {self._name()} holds {self.dim}-d features; "
                "build the index from features of the same checkpoint"
            )
        q = _normalised(q, "query features")
        k = min(k, self.ntotal)
        if k == 0 or len(q) == 0:
            return np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64)
        saved = getattr(self.index, "nprobe", None)
        if nprobe is not None and saved is not None:
            if nprobe < 1:
                raise GalleryIndexError(f"--nprobe {nprobe}: must be at least 1")
            self.index.nprobe = int(nprobe)
        try:
            sims, ids = _search_ids(self.index, q, k)
        finally:
            if saved is not None:
                self.index.nprobe = saved
        if metric == "euclidean":
            dist = np.clip(np.float32(2.0) - np.float32(2.0) * sims, 0.0, None)
        else:
            dist = np.clip(np.float32(1.0) - sims, 0.0, 2.0)
        dist = dist.astype(np.float32)
        dist[ids < 0] = np.inf
        ids = ids.astype(np.int64)
        key = np.where(ids < 0, np.iinfo(np.int64).max, ids)
        order = np.lexsort((key, dist), axis=1)  # by distance, then by row
        return np.take_along_axis(dist, order, 1), np.take_along_axis(ids, order, 1)

    # ------------------------------------------------------------------ files

    def header(self) -> dict:
        return index_header(
            self.kind,
            self.dim,
            self.ntotal,
            self.params,
            self.recall,
            self.recall_queries,
            self.built_from,
            self.identity,
        )

    def save(self, path: str | Path) -> Path:
        """Write the index atomically (temporary file + ``os.replace``); returns ``path``."""
        return write_index_file(path, self.index, self.header(), self.arrays())

    @classmethod
    def load(cls, path: str | Path) -> GalleryIndex:
        """Read an index written by :meth:`save`; a bad file raises :class:`GalleryIndexError`."""
        path = Path(path)
        f = read_index_file(path)
        params = f.header.get("params") or {}
        if "nprobe" in params and hasattr(f.index, "nprobe"):
            f.index.nprobe = int(params["nprobe"])
        gi = cls(
            f.index,
            f.kind,
            f.meta["pids"],
            f.meta["camids"],
            f.meta["sceneids"],
            [str(p) for p in f.meta["paths"]],
            params,
            f.header.get("recall_at_10"),
            int(f.header.get("recall_queries") or 0),
            int(f.header.get("built_from") or 0),
            f.identity,
        )
        gi.source = path
        return gi

    def nbytes(self) -> int:
        """Size of the serialized FAISS index (without the metadata)."""
        return int(import_faiss().serialize_index(self.index).size)

    def summary(self) -> str:
        line = f"{self.ntotal} captures of dimension {self.dim}, kind {self.kind}"
        if self.params:
            line += " (" + ", ".join(f"{k} {v}" for k, v in self.params.items()) + ")"
        if self.recall is not None:
            line += (
                f", recall@10 {self.recall:.3f} against exact search on {self.recall_queries} of the "
                f"{self.built_from} vectors it was built from"
            )
        return line
