"""``re_ranking`` against the literal reference of the paper's algorithm on small inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mambapro.evaluation import compute_distmat, evaluate, re_ranking
from reference.eval import reference_re_ranking


def clustered(
    seed: int, n: int, ids: int, dim: int = 16, noise: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """Features around one centre per identity, so k-reciprocal sets are non-trivial."""
    rng = np.random.default_rng(seed)
    pids = rng.integers(0, ids, n)
    centres = rng.normal(size=(ids, dim))
    return (centres[pids] + noise * rng.normal(size=(n, dim))).astype(np.float32), pids


@pytest.mark.parametrize(
    "num_q, num_g, k1, k2, lam",
    [
        (12, 48, 6, 3, 0.3),
        (15, 60, 20, 6, 0.3),
        (20, 50, 5, 1, 0.0),
        (8, 30, 3, 2, 1.0),
        (1, 25, 4, 4, 0.5),
        (10, 80, 50, 15, 0.3),  # the authors' release runs k1 = 50, k2 = 15
    ],
)
def test_matches_literal_reference(num_q: int, num_g: int, k1: int, k2: int, lam: float) -> None:
    feats, _ = clustered(num_q + k1, num_q + num_g, ids=6)
    stats: dict = {}
    expected = reference_re_ranking(compute_distmat(feats, feats), num_q, k1, k2, lam, stats)
    out = re_ranking(feats[:num_q], feats[num_q:], k1, k2, lam, block_size=7)
    assert out.dtype == np.float32 and out.shape == (num_q, num_g)
    np.testing.assert_allclose(out, expected, atol=2e-6, rtol=0)
    if k1 >= 6:
        # The R* expansion added samples (impossible for k1 < 6: |R(q, round(k1 / 2))| <= 3
        # and a strict 2/3 overlap then means R(q) is inside R(p) already).
        assert stats["expansions"] > 0


def test_default_parameters_at_a_few_hundred_samples() -> None:
    feats, _ = clustered(3, 300, ids=20, dim=32)
    expected = reference_re_ranking(compute_distmat(feats, feats), 60, 20, 6, 0.3)
    np.testing.assert_allclose(re_ranking(feats[:60], feats[60:]), expected, atol=2e-6, rtol=0)


def test_ties_from_duplicate_features() -> None:
    # Small integer features: distances are exact in float32, duplicates tie exactly, and the
    # stable (index) order decides the neighbour lists in both implementations.
    rng = np.random.default_rng(1)
    feats = rng.integers(0, 3, (40, 3)).astype(np.float32)
    feats[10:20] = feats[0]  # a block of exact duplicates
    expected = reference_re_ranking(compute_distmat(feats, feats, normalize=False), 8, 6, 3, 0.3)
    out = re_ranking(feats[:8], feats[8:], 6, 3, 0.3, normalize=False, block_size=5)
    np.testing.assert_allclose(out, expected, atol=2e-6, rtol=0)


def test_cosine_metric_matches_reference() -> None:
    feats, _ = clustered(4, 50, ids=5)
    expected = reference_re_ranking(compute_distmat(feats, feats, metric="cosine"), 10, 8, 3, 0.3)
    np.testing.assert_allclose(re_ranking(feats[:10], feats[10:], 8, 3, metric="cosine"), expected, atol=2e-6)


def test_hand_computed_example() -> None:
    # Same setting as test_eval_reference.test_reference_re_ranking_hand_computed.
    x = np.array([[0.0], [1.0], [10.0], [11.0]], dtype=np.float32)
    v0 = np.array([1.0, math.exp(-1 / 121)])
    v1 = np.array([math.exp(-1 / 100), 1.0])
    v0, v1 = v0 / v0.sum(), v1 / v1.sum()
    jac = 1 - np.minimum(v0, v1).sum() / np.maximum(v0, v1).sum()
    expected = [[0.7 * jac + 0.3 / 121, 0.7 + 0.3 * 100 / 121, 1.0]]
    np.testing.assert_allclose(re_ranking(x[:1], x[1:], 1, 1, 0.3, normalize=False), expected, atol=1e-6)


def test_lambda_one_is_the_row_normalised_original_distance() -> None:
    feats, _ = clustered(5, 40, ids=4)
    d = compute_distmat(feats, feats).astype(np.float64)
    expected = d[:7, 7:] / d[:7].max(1, keepdims=True)
    np.testing.assert_allclose(re_ranking(feats[:7], feats[7:], 5, 2, 1.0), expected, atol=1e-6)


def test_values_in_unit_interval_and_block_invariance_and_torch() -> None:
    feats, _ = clustered(6, 500, ids=25, dim=24)
    out = re_ranking(feats[:100], feats[100:], 20, 6, 0.3)
    assert np.all((out >= 0) & (out <= 1))
    np.testing.assert_allclose(re_ranking(feats[:100], feats[100:], block_size=37), out, atol=1e-6)
    t = torch.from_numpy(feats)
    np.testing.assert_allclose(re_ranking(t[:100], t[100:]), out, atol=1e-6)


def test_improves_ranking_on_clustered_identities() -> None:
    # Each identity is a tight cluster seen from several cameras: the k-reciprocal distance
    # should not do worse than the original one here (the paper's premise).
    feats, pids = clustered(7, 400, ids=30, dim=32, noise=0.9)
    cams = np.arange(400) % 4
    q, g = slice(0, 80), slice(80, None)
    base = evaluate(compute_distmat(feats[q], feats[g]), pids[q], pids[g], cams[q], cams[g])
    rr = evaluate(re_ranking(feats[q], feats[g]), pids[q], pids[g], cams[q], cams[g])
    assert rr.mAP > base.mAP


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k1": 30}, r"max\(k1 \+ 1, k2\) samples; there are 20"),
        ({"k2": 0}, "k2 = 0 must be a positive integer"),
        ({"lambda_value": 1.5}, r"lambda_value = 1.5 must lie in \[0, 1\]"),
        ({"block_size": 0}, "block_size must be positive"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, message: str) -> None:
    feats, _ = clustered(8, 20, ids=3)
    args = {"k1": 5, "k2": 2, "lambda_value": 0.3, **kwargs}
    with pytest.raises(ValueError, match=message):
        re_ranking(feats[:5], feats[5:], **args)


def test_feature_dimension_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="dimension 4 but gallery features have 3"):
        re_ranking(np.zeros((2, 4)), np.zeros((5, 3)))


def test_members_beyond_the_stored_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep only k1 + 1 neighbour distances: most expanded-set weights are then computed pair
    # by pair, and must agree with the reference as well.
    import mambapro.evaluation.rerank as rerank

    monkeypatch.setattr(rerank, "_KEPT_NEIGHBOURS", 1)
    feats, _ = clustered(9, 70, ids=5)
    expected = reference_re_ranking(compute_distmat(feats, feats), 10, 10, 4, 0.3)
    np.testing.assert_allclose(re_ranking(feats[:10], feats[10:], 10, 4, 0.3), expected, atol=2e-6, rtol=0)
