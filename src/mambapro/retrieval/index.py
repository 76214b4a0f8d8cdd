"""The ``mambapro index build|add`` command (:func:`run_index`) and its input: one gallery of
one or several ``.npz`` features files, checked to come from the same model
(:func:`load_features`).

The gallery index itself is :mod:`mambapro.retrieval.gallery_index` and its file
:mod:`mambapro.retrieval.index_file`; their public names are re-exported here, where the CLI,
the server and the benchmarks have always imported them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mambapro.options import check_index_options
from mambapro.retrieval.features import FeatureSet
from mambapro.retrieval.gallery import LABELS
from mambapro.retrieval.gallery_index import GALLERY_KEYS, GalleryIndex
from mambapro.retrieval.identity import check_same_model
from mambapro.retrieval.index_file import (
    FORMAT,
    FORMAT_VERSION,
    KINDS,
    FaissMissingError,
    GalleryIndexError,
    import_faiss,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "KINDS",
    "FaissMissingError",
    "GalleryIndex",
    "GalleryIndexError",
    "load_features",
    "run_index",
]


def load_features(features: str | Path | Sequence[str | Path]) -> tuple[Any, str]:
    """One FeatureSet from one or several ``.npz`` files (concatenated in order) and their names."""
    paths = [Path(features)] if isinstance(features, (str, Path)) else [Path(p) for p in features]
    if not paths:
        raise GalleryIndexError("--features: give at least one features .npz file")
    sets = [FeatureSet.load(p) for p in paths]
    for p, fs in zip(paths, sets):
        if fs.feats.ndim != 2:
            raise GalleryIndexError(
                f"{p}: features must be 2-D (num_samples, dim), got shape {fs.feats.shape}"
            )
        n = len(fs.feats)
        for name in LABELS:
            if len(getattr(fs, name)) != n:
                raise GalleryIndexError(f"{p}: {len(getattr(fs, name))} {name} for {n} feature rows")
        if fs.feats.shape[1] != sets[0].feats.shape[1]:
            raise GalleryIndexError(
                f"{p}: features have dimension {fs.feats.shape[1]} but {paths[0]} has "
                f"{sets[0].feats.shape[1]}; extract them with the same checkpoint"
            )
    for p, fs in zip(paths[1:], sets[1:]):
        check_same_model(fs.identity, str(p), sets[0].identity, str(paths[0]), GALLERY_KEYS)
    names = ", ".join(str(p) for p in paths)
    if len(sets) == 1:
        return sets[0], names
    # One file without an identity (an older one) leaves the whole gallery unchecked.
    identity = None if any(s.identity is None for s in sets) else sets[0].identity
    return (
        FeatureSet(
            np.concatenate([s.feats for s in sets]),
            np.concatenate([s.pids for s in sets]),
            np.concatenate([s.camids for s in sets]),
            np.concatenate([s.sceneids for s in sets]),
            [p for s in sets for p in s.paths],
            identity,
        ),
        names,
    )


def run_index(
    action: str,
    features: str | Path | Sequence[str | Path],
    out: str | Path,
    kind: str = "flat",
    nlist: int | None = None,
    m: int = 64,
    nbits: int = 8,
    nprobe: int = 16,
    index: str | Path | None = None,
) -> GalleryIndex:
    """The ``mambapro index build|add`` command; prints one summary line.

    ``build``: index ``features`` (one or several .npz files, concatenated) into ``out``.
    ``add``: append ``features`` to the index at ``index`` (default ``out``, updated in place)
    and write the result to ``out``; the kind and parameters are those of the existing index.
    """
    sources = [features] if isinstance(features, (str, Path)) else list(features)
    out = check_index_options(action, sources, out, index)
    import_faiss()  # before reading gigabytes of features
    start = time.perf_counter()
    if action == "build":
        fs, names = load_features(features)
        gi = GalleryIndex.build(fs, kind=kind, nlist=nlist, m=m, nbits=nbits, nprobe=nprobe, what=names)
        verb = "indexed"
    else:
        gi = GalleryIndex.load(out if index is None else index)
        fs, names = load_features(features)
        before = gi.ntotal
        gi.add(fs, what=names)
        verb = f"added {gi.ntotal - before} captures; now"
    gi.save(out)
    took = time.perf_counter() - start
    print(f"{verb} {gi.summary()}; written to {out} in {took:.1f} s")
    return gi
