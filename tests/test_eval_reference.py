"""Slow reference implementations of the evaluation, written straight from the definitions, and
hand-computed checks of those references.

``reference_evaluate`` is the per-query loop of SPEC §2 and ``reference_re_ranking`` a literal
transcription of Zhong et al. (CVPR 2017) with Python sets. The fast implementations in
``mambapro.evaluation`` are tested against them (test_eval_metrics, test_eval_rerank) and the
benchmark times against ``reference_evaluate``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest


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


# ---------------------------------------------------------------- checks of the references


def test_reference_evaluate_hand_computed() -> None:
    # Query 0 (pid 1, cam 0): gallery 0 and 5 are junk; kept ranking 1 (pid 2), 2 (match),
    # 3 (pid 3), 4 (match) -> ranks 2 and 4: AP = (1/2 + 2/4) / 2, INP = 2/4, first hit at 2.
    # Query 1 (pid 2, cam 1): its only pid-2 entry is same-camera junk -> skipped.
    # Query 2 (pid 3, cam 1): gallery 3 (pid 3, cam 0) is nearest -> AP = INP = 1.
    g_pids = np.array([1, 2, 1, 3, 1, 1])
    g_cams = np.array([0, 1, 1, 0, 2, 0])
    dist = np.array(
        [
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.05],
            [0.3, 0.1, 0.2, 0.4, 0.5, 0.6],
            [0.9, 0.8, 0.7, 0.1, 0.6, 0.5],
        ]
    )
    res = reference_evaluate(dist, np.array([1, 2, 3]), g_pids, np.array([0, 1, 1]), g_cams, max_rank=4)
    assert res["num_valid"] == 2 and res["num_skipped"] == 1
    assert res["mAP"] == pytest.approx((0.5 + 1.0) / 2)
    assert res["mINP"] == pytest.approx((0.5 + 1.0) / 2)
    np.testing.assert_allclose(res["cmc"], [0.5, 1.0, 1.0, 1.0])


def test_reference_evaluate_ties_by_gallery_index() -> None:
    # All distances equal: the order is the gallery order, matches at ranks 2 and 4.
    res = reference_evaluate(
        np.full((1, 4), 0.5),
        np.array([1]),
        np.array([2, 1, 2, 1]),
        np.array([0]),
        np.ones(4, int),
        max_rank=3,
    )
    assert res["mAP"] == pytest.approx(0.5)
    assert res["mINP"] == pytest.approx(0.5)
    np.testing.assert_allclose(res["cmc"], [0.0, 1.0, 1.0])


def test_reference_evaluate_scene_protocol() -> None:
    # Same camera but another scene is a valid match under MSVR310; same scene is junk.
    dist = np.array([[0.1, 0.2, 0.3]])
    pids, cams, scenes = np.array([7, 7, 8]), np.array([0, 0, 0]), np.array([1, 2, 1])
    res = reference_evaluate(
        dist, np.array([7]), pids, np.array([0]), cams, np.array([1]), scenes, max_rank=2
    )
    # Gallery 0 is junk (same scene); gallery 1 is the match, first in the kept ranking.
    assert res["mAP"] == 1.0 and res["cmc"][0] == 1.0
    # The market protocol drops both same-camera entries: no match left, the query is skipped.
    market = reference_evaluate(
        np.hstack([dist, [[0.4]]]), np.array([7]), np.append(pids, 7), np.array([0]), np.append(cams, 1)
    )
    # Only the added other-camera entry (rank 2 after pid 8) counts under the market protocol.
    assert market["num_valid"] == 1 and market["mAP"] == pytest.approx(0.5)


def test_reference_re_ranking_hand_computed() -> None:
    # 1-D points 0, 1 | 10, 11 (squared Euclidean), query = point 0, k1 = 1, k2 = 1.
    # N(p, 1) = {p, nearest}: R(0) = R(1) = {0, 1}, R(2) = R(3) = {2, 3}; round(1/2) = 0 so
    # R(q, 0) = {q} and the expansion adds nothing. Row maxima: 121 (point 0), 100 (point 1).
    x = np.array([0.0, 1.0, 10.0, 11.0])
    dist = (x[:, None] - x[None, :]) ** 2
    v0 = np.array([1.0, math.exp(-1 / 121)])
    v0 /= v0.sum()
    v1 = np.array([math.exp(-1 / 100), 1.0])
    v1 /= v1.sum()
    jac = 1 - np.minimum(v0, v1).sum() / np.maximum(v0, v1).sum()
    lam = 0.3
    expected = np.array([[(1 - lam) * jac + lam * 1 / 121, (1 - lam) + lam * 100 / 121, (1 - lam) + lam]])
    np.testing.assert_allclose(
        reference_re_ranking(dist, 1, k1=1, k2=1, lambda_value=lam), expected, rtol=1e-12
    )
