"""Labelled gallery rows and a ranking of them: the one vocabulary of features files, gallery
indexes, ``search`` and ``serve``.

:class:`GalleryLabels` holds, per row, the identity, camera, scene and image path; a features
file and a gallery index store them as the same four arrays (:meth:`GalleryLabels.arrays`),
paths absolute so that the file finds its images from any working folder.
:meth:`GalleryLabels.ranking` turns rows in ranked order into :class:`Match` records, leaving out
the query's own capture (RGBNT201 uses one folder for query and gallery); ``search`` prints and
draws them, ``serve`` returns them as JSON.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LABELS", "GalleryLabels", "Match"]

#: The label arrays of a features file or an index, in the order they are written.
LABELS = ("pids", "camids", "sceneids", "paths")


@dataclass(frozen=True)
class Match:
    """One ranked gallery row."""

    rank: int  # 1-based
    index: int  # row in the gallery (features file or index)
    distance: float
    path: str
    pid: int
    camid: int
    same_identity: bool | None  # None when the query's identity is unknown (serve)


class GalleryLabels:
    """Per-row ``pids``, ``camids``, ``sceneids`` and image ``paths`` of a gallery."""

    pids: np.ndarray
    camids: np.ndarray
    sceneids: np.ndarray
    paths: list[str]

    def arrays(self) -> dict[str, np.ndarray]:
        """The label arrays as a file stores them (paths absolute)."""
        return {
            "pids": np.asarray(self.pids),
            "camids": np.asarray(self.camids),
            "sceneids": np.asarray(self.sceneids),
            "paths": np.asarray([os.path.abspath(p) for p in self.paths], dtype=str),
        }

    def ranking(
        self,
        rows: Iterable[int],
        distances: Iterable[float],
        k: int,
        query_path: str | None = None,
        query_pid: Any = None,
    ) -> list[Match]:
        """The first ``k`` of ``rows`` (already in ranked order, with their ``distances``) as
        matches; rows < 0 (an approximate index that found fewer) and the query's own file
        (compared as absolute paths) are left out."""
        own = os.path.abspath(query_path) if query_path is not None else None
        out: list[Match] = []
        for j, d in zip(rows, distances):
            j = int(j)
            if j < 0 or (own is not None and os.path.abspath(self.paths[j]) == own):
                continue
            pid = int(self.pids[j])
            out.append(
                Match(
                    rank=len(out) + 1,
                    index=j,
                    distance=float(d),
                    path=self.paths[j],
                    pid=pid,
                    camid=int(self.camids[j]),
                    same_identity=None if query_pid is None else pid == int(query_pid),
                )
            )
            if len(out) == k:
                break
        return out
