"""Hand-computed checks of the slow evaluation references in ``tests/reference/eval.py``
(the per-query loop of the benchmarks' protocol and the literal k-reciprocal re-ranking), which the fast
implementations are tested against."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reference.eval import reference_evaluate, reference_re_ranking


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
