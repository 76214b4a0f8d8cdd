"""``evaluate`` equals the per-query loop reference (within 1e-9) on random and adversarial
inputs, under both protocols, and reproduces hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mambapro.evaluation import EvalResult, evaluate
from reference.eval import reference_evaluate


def assert_matches_reference(res: EvalResult, ref: dict) -> None:
    assert res.num_valid == ref["num_valid"]
    assert res.num_skipped == ref["num_skipped"]
    assert res.mAP == pytest.approx(ref["mAP"], abs=1e-9, rel=0)
    assert res.mINP == pytest.approx(ref["mINP"], abs=1e-9, rel=0)
    np.testing.assert_allclose(res.cmc, ref["cmc"], rtol=0, atol=1e-9)


def labels(
    rng: np.random.Generator, n: int, ids: int, cams: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return rng.integers(0, ids, n), rng.integers(0, cams, n), rng.integers(0, 3, n)


def run_both(dist, qp, gp, qc, gc, qs=None, gs=None, max_rank=50, **kw) -> None:
    ref = reference_evaluate(np.asarray(dist), qp, gp, qc, gc, qs, gs, max_rank=max_rank)
    assert_matches_reference(evaluate(dist, qp, gp, qc, gc, qs, gs, max_rank=max_rank, **kw), ref)


@pytest.mark.parametrize("scenes", [False, True], ids=["market", "msvr310"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("block_size", [None, 1, 13])
def test_random_matches_reference(scenes: bool, dtype: type, block_size: int | None) -> None:
    rng = np.random.default_rng(block_size or 0)
    q, g = 60, 400
    qp, qc, qs = labels(rng, q, 25, 4)
    gp, gc, gs = labels(rng, g, 25, 4)
    dist = rng.random((q, g)).astype(dtype)
    scene_args = (qs, gs) if scenes else (None, None)
    run_both(dist, qp, gp, qc, gc, *scene_args, block_size=block_size)


@pytest.mark.parametrize("num_workers", [1, 3])
def test_threads_do_not_change_results(num_workers: int) -> None:
    rng = np.random.default_rng(5)
    qp, qc, _ = labels(rng, 97, 30, 3)
    gp, gc, _ = labels(rng, 500, 30, 3)
    dist = rng.random((97, 500))
    run_both(dist, qp, gp, qc, gc, block_size=10, num_workers=num_workers)


@pytest.mark.parametrize("levels, ids", [(2, 3), (5, 8), (50, 8)])
def test_ties_broken_by_gallery_index(levels: int, ids: int) -> None:
    # Few distinct distances: matches tie with each other and with non-matches everywhere,
    # exercising both the vectorised tie count and the per-row fallback (many tied matches).
    rng = np.random.default_rng(levels)
    qp, qc, qs = labels(rng, 40, ids, 3)
    gp, gc, gs = labels(rng, 300, ids, 3)
    dist = rng.integers(0, levels, (40, 300)).astype(np.float32)
    run_both(dist, qp, gp, qc, gc, block_size=16)
    run_both(dist, qp, gp, qc, gc, qs, gs, block_size=16)


def test_float32_near_ties_match_reference() -> None:
    # float32 values on a coarse grid collide often, the realistic source of ties.
    rng = np.random.default_rng(11)
    qp, qc, _ = labels(rng, 50, 10, 4)
    gp, gc, _ = labels(rng, 2000, 10, 4)
    dist = (np.round(rng.random((50, 2000)) * 4096) / 4096).astype(np.float32)
    run_both(dist, qp, gp, qc, gc)


def test_queries_without_match_are_skipped_and_counted() -> None:
    rng = np.random.default_rng(2)
    gp, gc, _ = labels(rng, 200, 10, 3)
    qp = np.concatenate([rng.integers(0, 10, 20), np.arange(100, 110)])  # 10 unseen identities
    qc = rng.integers(0, 3, 30)
    dist = rng.random((30, 200))
    res = evaluate(dist, qp, gp, qc, gc)
    assert res.num_skipped >= 10 and res.num_valid + res.num_skipped == 30
    run_both(dist, qp, gp, qc, gc)


def test_all_junk_gallery_for_some_queries() -> None:
    # Queries 0-4 see only same-camera copies of their identity (junk): skipped.
    gp = np.array([0] * 5 + [1] * 5 + [2, 3, 2, 3])
    gc = np.array([0] * 5 + [1] * 5 + [0, 0, 1, 1])
    qp = np.array([0, 0, 0, 0, 0, 2, 3, 1])
    qc = np.array([0, 0, 0, 0, 0, 0, 0, 0])
    dist = np.random.default_rng(3).random((8, 14))
    res = evaluate(dist, qp, gp, qc, gc)
    assert res.num_skipped == 5 and res.num_valid == 3
    run_both(dist, qp, gp, qc, gc)


def test_gallery_entirely_junk_raises() -> None:
    dist = np.random.default_rng(0).random((3, 4))
    with pytest.raises(ValueError, match="none of the 3 queries has a true match"):
        evaluate(dist, np.array([1, 1, 1]), np.array([1, 1, 1, 1]), np.zeros(3, int), np.zeros(4, int))


def test_single_image_identities() -> None:
    # Every gallery identity has exactly one image: AP = 1 / rank of that image = INP.
    rng = np.random.default_rng(4)
    gp = rng.permutation(300)
    gc = np.ones(300, int)
    qp = rng.choice(300, 40, replace=False)
    qc = np.zeros(40, int)
    dist = rng.random((40, 300))
    res = evaluate(dist, qp, gp, qc, gc)
    col = np.array([np.flatnonzero(gp == p)[0] for p in qp])
    rank = (dist < dist[np.arange(40), col][:, None]).sum(1) + 1
    assert res.mAP == pytest.approx(np.mean(1 / rank), abs=1e-12)
    assert res.mINP == pytest.approx(res.mAP, abs=1e-12)
    run_both(dist, qp, gp, qc, gc)


def test_gallery_smaller_than_max_rank() -> None:
    # CMC keeps max_rank entries and reaches 1 by the number of kept gallery entries.
    rng = np.random.default_rng(6)
    qp, qc, _ = labels(rng, 12, 3, 2)
    gp, gc, _ = labels(rng, 7, 3, 2)
    gp[:3], gc[:3] = [0, 1, 2], [0, 0, 0]
    gp[3:6], gc[3:6] = [0, 1, 2], [1, 1, 1]
    dist = rng.random((12, 7))
    res = evaluate(dist, qp, gp, qc, gc, max_rank=50)
    assert res.cmc.shape == (50,)
    assert np.all(res.cmc[6:] == 1.0)
    run_both(dist, qp, gp, qc, gc)


def test_hand_computed_example() -> None:
    # Same setting as test_eval_reference.test_reference_evaluate_hand_computed.
    dist = np.array(
        [[0.1, 0.2, 0.3, 0.4, 0.5, 0.05], [0.3, 0.1, 0.2, 0.4, 0.5, 0.6], [0.9, 0.8, 0.7, 0.1, 0.6, 0.5]]
    )
    res = evaluate(
        dist, [1, 2, 3], np.array([1, 2, 1, 3, 1, 1]), [0, 1, 1], np.array([0, 1, 1, 0, 2, 0]), max_rank=10
    )
    assert (res.num_valid, res.num_skipped) == (2, 1)
    assert res.mAP == pytest.approx(0.75) and res.mINP == pytest.approx(0.75)
    assert res.as_dict() == pytest.approx(
        {"mAP": 0.75, "Rank-1": 0.5, "Rank-5": 1.0, "Rank-10": 1.0, "mINP": 0.75}
    )
    assert res.rank(2) == 1.0 and res.protocol == "market"


def test_scene_protocol_differs_from_market() -> None:
    # Same camera, other scene: a match under MSVR310, junk under the market protocol.
    dist = np.array([[0.1, 0.2, 0.3]])
    g_pids, g_cams, g_scenes = np.array([7, 8, 7]), np.array([0, 1, 1]), np.array([2, 1, 1])
    market = evaluate(dist, [7], g_pids, [0], g_cams)
    msvr = evaluate(dist, [7], g_pids, [0], g_cams, [1], g_scenes)
    assert market.mAP == pytest.approx(0.5)  # kept: 8 (rank 1), 7 at cam 1 (rank 2)
    assert msvr.mAP == pytest.approx(1.0) and msvr.protocol == "msvr310"  # gallery 0 (scene 2) first


def test_torch_inputs_match_numpy() -> None:
    rng = np.random.default_rng(7)
    qp, qc, _ = labels(rng, 30, 10, 3)
    gp, gc, _ = labels(rng, 150, 10, 3)
    dist = rng.random((30, 150)).astype(np.float32)
    a = evaluate(dist, qp, gp, qc, gc)
    b = evaluate(torch.from_numpy(dist), torch.from_numpy(qp), torch.from_numpy(gp), torch.from_numpy(qc), gc)
    assert a.mAP == b.mAP and np.array_equal(a.cmc, b.cmc)
    # float16 is ranked in float32 precision, the same as the reference on the cast values.
    half = torch.from_numpy(dist).half()
    run_both(half.float().numpy(), qp, gp, qc, gc)
    assert evaluate(half, qp, gp, qc, gc).mAP == pytest.approx(
        evaluate(half.float(), qp, gp, qc, gc).mAP, abs=1e-12
    )


def test_properties_on_random_input() -> None:
    rng = np.random.default_rng(8)
    qp, qc, _ = labels(rng, 80, 20, 4)
    gp, gc, _ = labels(rng, 600, 20, 4)
    res = evaluate(rng.random((80, 600)), qp, gp, qc, gc)
    assert np.all(np.diff(res.cmc) >= 0) and 0 <= res.cmc[0] <= res.cmc[-1] <= 1
    assert 0 < res.mINP <= 1 and 0 < res.mAP <= 1
    # A perfect ranking (true matches at distance 0) scores 1 everywhere.
    perfect = np.where(qp[:, None] == gp[None, :], 0.0, 1.0)
    best = evaluate(perfect, qp, gp, qc, gc)
    assert best.mAP == 1.0 and best.mINP == 1.0 and np.all(best.cmc == 1.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"distmat": np.zeros(5)}, "2-D"),
        ({"q_pids": np.zeros(4, int)}, "q_pids has 4 entries but distmat has 3 rows"),
        ({"g_camids": np.zeros(2, int)}, "g_camids has 2 entries but distmat has 5 columns"),
        ({"q_pids": np.array([0.5, 1, 2])}, "q_pids must hold integer labels"),
        ({"q_sceneids": np.zeros(3, int)}, "give both q_sceneids and g_sceneids"),
        ({"max_rank": 0}, "max_rank must be a positive integer"),
        ({"distmat": np.full((3, 5), np.nan)}, r"distmat\[0, 0\] = nan"),
    ],
)
def test_bad_input_raises(kwargs: dict, message: str) -> None:
    args = {
        "distmat": np.zeros((3, 5)),
        "q_pids": np.array([0, 1, 2]),
        "g_pids": np.array([0, 1, 2, 0, 1]),
        "q_camids": np.zeros(3, int),
        "g_camids": np.ones(5, int),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evaluate(**args)
