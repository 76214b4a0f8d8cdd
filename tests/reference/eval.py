"""Slow reference implementations of the evaluation, written straight from the definitions.

``reference_evaluate`` is the per-query loop of the benchmarks' protocol and
``reference_re_ranking`` a literal
transcription of Zhong et al. (CVPR 2017) with Python sets. The fast implementations in
``mambapro.evaluation`` are tested against them (tests/test_eval_metrics.py,
tests/test_eval_rerank.py), the benchmark (benchmarks/bench_eval.py) times against
``reference_evaluate``, and tests/test_eval_reference.py checks the references themselves on
hand-computed cases.
"""

from __future__ import annotations

import math

import numpy as np


def reference_evaluate(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    q_sceneids: np.ndarray | None = None,
    g_sceneids: np.ndarray | None = None,
    max_rank: int = 50,
) -> dict:
    """CMC / mAP / mINP with one plain loop over the queries."""
    distmat = np.asarray(distmat)
    aps, inps, cmcs = [], [], []
    skipped = 0
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")  # ascending distance, ties by gallery index
        if q_sceneids is None:
            junk = (g_pids == q_pids[i]) & (g_camids == q_camids[i])
        else:
            junk = (g_pids == q_pids[i]) & (g_sceneids == q_sceneids[i])
        order = order[~junk[order]]
        hits = g_pids[order] == q_pids[i]
        if not hits.any():
            skipped += 1
            continue
        ranks = np.flatnonzero(hits) + 1  # 1-based ranks of the true matches
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))  # precision at each match
        inps.append(len(ranks) / ranks[-1])
        cmcs.append(ranks[0] <= np.arange(1, max_rank + 1))
    return {
        "cmc": np.mean(cmcs, axis=0),
        "mAP": float(np.mean(aps)),
        "mINP": float(np.mean(inps)),
        "num_valid": len(aps),
        "num_skipped": skipped,
    }


def reference_re_ranking(
    dist: np.ndarray,
    num_query: int,
    k1: int,
    k2: int,
    lambda_value: float,
    stats: dict | None = None,
) -> np.ndarray:
    """k-reciprocal re-ranking, literally, from the (N, N) distances of probes then gallery.

    The authors' code's conventions (see mambapro.evaluation.rerank): N(p, k) holds k + 1
    samples (p included), distances are divided by their row's maximum, the expansion test is
    strict, V rows sum to 1, k2 = 1 skips the expansion; ties are broken by index. ``stats``
    (optional) receives the number of expansions that added new samples.
    """
    dist = np.asarray(dist, dtype=np.float64)
    n = len(dist)
    d = dist / dist.max(axis=1, keepdims=True)
    order = [np.argsort(d[p], kind="stable") for p in range(n)]

    def neighbours(p: int, k: int) -> set[int]:
        return set(order[p][: k + 1].tolist())

    def reciprocal(p: int, k: int) -> set[int]:
        return {g for g in neighbours(p, k) if p in neighbours(g, k)}

    half = int(np.around(k1 / 2))
    V = np.zeros((n, n))
    for p in range(n):
        r = reciprocal(p, k1)
        expanded = set(r)
        for q in r:
            rq = reciprocal(q, half)
            if len(r & rq) > 2 / 3 * len(rq):
                if stats is not None and not rq <= expanded:
                    stats["expansions"] = stats.get("expansions", 0) + 1
                expanded |= rq
        for g in expanded:
            V[p, g] = math.exp(-d[p, g])
        if expanded:
            V[p] /= V[p].sum()
    if k2 > 1:
        V = np.array([V[order[p][:k2]].mean(axis=0) for p in range(n)])
    jaccard = np.empty((num_query, n - num_query))
    for i in range(num_query):
        for j in range(n - num_query):
            a, b = V[i], V[num_query + j]
            both = np.maximum(a, b).sum()
            jaccard[i, j] = 1 - np.minimum(a, b).sum() / both if both > 0 else 1.0
    return (1 - lambda_value) * jaccard + lambda_value * d[:num_query, num_query:]
