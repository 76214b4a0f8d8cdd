"""Which queries the Grad-CAM and rank-list figures show: each query's average precision under
the evaluation protocol, and the best and worst of them."""

from __future__ import annotations

import numpy as np

from mambapro.evaluation import evaluate
from mambapro.retrieval.features import FeatureSet

__all__ = ["per_query_ap", "pick_queries"]


def per_query_ap(dist: np.ndarray, qf: FeatureSet, gf: FeatureSet, use_scenes: bool) -> np.ndarray:
    """Average precision of each query under the evaluation protocol (NaN: no valid match)."""
    out = np.full(len(qf.paths), np.nan)
    for i in range(len(out)):
        q = slice(i, i + 1)
        scenes = (qf.sceneids[q], gf.sceneids) if use_scenes else (None, None)
        try:
            res = evaluate(
                dist[q], qf.pids[q], gf.pids, qf.camids[q], gf.camids, *scenes, max_rank=1, num_workers=1
            )
        except ValueError:
            continue
        out[i] = res.mAP
    return out


def pick_queries(ap: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """(best, worst) query indices by AP: ``k - k // 2`` best and ``k // 2`` worst (at least one
    worst when ``k`` >= 1), disjoint, among the queries with a valid match."""
    valid = np.flatnonzero(~np.isnan(ap))
    order = valid[np.argsort(-ap[valid], kind="stable")]
    k = min(k, len(order))
    n_worst = min(len(order), max(k // 2, 1 if k else 0))
    worst = list(order[::-1][:n_worst])
    best = [i for i in order[: k - n_worst] if i not in worst]
    return [int(i) for i in best], [int(i) for i in worst]
