"""``compute_distmat`` against float64 formulas written out directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mambapro.evaluation import compute_distmat


def features(seed: int, n: int, d: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_default_is_squared_euclidean_of_normalised_features() -> None:
    q, g = features(0, 17), features(1, 53)
    expected = ((unit(q)[:, None, :] - unit(g)[None, :, :]) ** 2).sum(-1)
    out = compute_distmat(q, g)
    assert out.dtype == np.float32 and out.shape == (17, 53)
    np.testing.assert_allclose(out, expected, atol=2e-6)


def test_unnormalised_squared_euclidean() -> None:
    q, g = features(2, 9) * 3, features(3, 11) * 3
    expected = ((q.astype(np.float64)[:, None] - g.astype(np.float64)[None]) ** 2).sum(-1)
    np.testing.assert_allclose(compute_distmat(q, g, normalize=False), expected, rtol=1e-5, atol=1e-4)


def test_cosine_is_one_minus_cosine_similarity_and_half_the_euclidean() -> None:
    q, g = features(4, 8), features(5, 12)
    cos = unit(q) @ unit(g).T
    out = compute_distmat(q, g, metric="cosine")
    np.testing.assert_allclose(out, 1 - cos, atol=2e-6)
    # Whatever `normalize` says, cosine compares directions.
    np.testing.assert_allclose(compute_distmat(q, g, metric="cosine", normalize=False), out, atol=1e-6)
    np.testing.assert_allclose(compute_distmat(q, g), 2 * out, atol=4e-6)


@pytest.mark.parametrize("block_size", [1, 5, 1000])
def test_blocks_give_the_same_matrix(block_size: int) -> None:
    q, g = features(6, 23), features(7, 31)
    np.testing.assert_allclose(compute_distmat(q, g, block_size=block_size), compute_distmat(q, g), atol=1e-6)


def test_torch_and_float64_inputs() -> None:
    q, g = features(8, 6), features(9, 7)
    ref = compute_distmat(q, g)
    np.testing.assert_allclose(compute_distmat(torch.from_numpy(q), torch.from_numpy(g)), ref, atol=1e-7)
    np.testing.assert_allclose(compute_distmat(q.astype(np.float64), g.astype(np.float64)), ref, atol=1e-6)


def test_zero_feature_is_at_distance_one_not_nan() -> None:
    q = np.zeros((1, 4), np.float32)
    g = features(10, 3, 4)
    np.testing.assert_allclose(compute_distmat(q, g), np.ones((1, 3)), atol=1e-6)
    np.testing.assert_allclose(compute_distmat(q, g, metric="cosine"), np.ones((1, 3)), atol=1e-6)


@pytest.mark.parametrize(
    "q, g, kwargs, message",
    [
        (np.zeros((2, 4)), np.zeros((3, 5)), {}, "dimension 4 but gallery features have 5"),
        (np.zeros(4), np.zeros((3, 4)), {}, "query features must be 2-D"),
        (np.zeros((2, 4)), np.full((3, 4), np.nan), {}, "gallery features row 0 holds NaN"),
        (np.zeros((2, 4)), np.zeros((3, 4)), {"metric": "manhattan"}, "metric = 'manhattan' is not one of"),
        (np.zeros((2, 4)), np.zeros((3, 4)), {"block_size": 0}, "block_size must be positive"),
    ],
)
def test_bad_input_raises(q: np.ndarray, g: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_distmat(q, g, **kwargs)
