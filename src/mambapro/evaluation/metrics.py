"""Exact ReID metrics (CMC, mAP, mINP) under the market and MSVR310 protocols.

Definitions, per query:

* **Junk** gallery entries are removed before ranking: same pid and same camid (market
  protocol, RGBNT201 / RGBNT100) or same pid and same sceneid (MSVR310 protocol, used when
  scene ids are given). The remaining entries with the query's pid are its true matches; a
  query without any is skipped and counted in ``num_skipped``.
* **Ranking** is by ascending distance; equal distances are ordered by gallery index (a stable
  sort), so every result is deterministic. Ranks are 1-based and count only kept entries.
* With the ranks ``r_1 < ... < r_M`` of the M true matches: ``AP = mean_j j / r_j``;
  ``CMC@k = [r_1 <= k]``; ``INP = M / r_M`` (Ye et al., 2021). mAP, mINP and CMC are means over
  the valid queries.
* CMC has ``max_rank`` entries whatever the gallery size: when fewer than ``max_rank`` entries
  are kept for a query, its first match is within them, so CMC reaches 1 at that rank and stays
  there. This is the definition applied as is, not a padding convention (torchreid instead
  shortens the curve with a warning).

Design: the work is vectorised over blocks of queries, never looping over the gallery in Python.
A full argsort of every row would dominate the cost, so each block is instead *value-sorted*
(numpy's SIMD sort, several times faster than an argsort) and each true match's rank is read off
with a batched binary search: ``rank = #kept entries with a smaller distance + #matches tied
before it + 1``. A query's same-pid gallery entries come from a per-pid index of the gallery,
so no (block, G) label masks are built. The rare matches that tie in distance with a non-match
need the gallery index to break the tie; they are detected exactly and counted explicitly (or
the row is re-ranked with a stable argsort when it has many), so the result equals the
stable-sort definition exactly. Memory is bounded by the blocks in flight: each holds a sorted
copy of its rows (``block_size x G`` entries of the distance dtype, plus the converted rows when
the input is a torch tensor or another dtype).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["EvalResult", "evaluate", "REPORT_RANKS"]

#: The CMC ranks reported in tables and ``EvalResult.as_dict``.
REPORT_RANKS = (1, 5, 10)

#: Entries of the distance matrix processed per block when ``block_size`` is not given.
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one evaluation; every value is a fraction in [0, 1].

    ``cmc[k - 1]`` is the fraction of valid queries with a true match in the top ``k``.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid: int
    num_skipped: int
    protocol: str = field(default="market")

    def rank(self, k: int) -> float:
        """CMC at rank ``k`` (1-based)."""
        if not 1 <= k <= len(self.cmc):
            raise ValueError(f"rank {k} is outside the computed CMC (1..{len(self.cmc)})")
        return float(self.cmc[k - 1])

    def as_dict(self) -> dict[str, float]:
        """``{"mAP", "Rank-1", "Rank-5", "Rank-10", "mINP"}`` as fractions (ranks beyond the
        computed ``max_rank`` are left out)."""
        out = {"mAP": float(self.mAP)}
        out.update({f"Rank-{k}": self.rank(k) for k in REPORT_RANKS if k <= len(self.cmc)})
        out["mINP"] = float(self.mINP)
        return out

    def to_json(self) -> dict[str, Any]:
        """The summary plus the whole CMC curve and the query counts (JSON serialisable)."""
        return {
            **self.as_dict(),
            "cmc": [float(x) for x in self.cmc],
            "num_valid": int(self.num_valid),
            "num_skipped": int(self.num_skipped),
            "protocol": self.protocol,
        }


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as err:  # e.g. a ragged list
        raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}") from err


def _labels(x: Any, name: str, n: int, what: str) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} entries but distmat has {n} {what}")
    if arr.dtype.kind not in "iub":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    return arr


def _float_block(distmat: Any, a: int, b: int) -> np.ndarray:
    """Rows ``a:b`` as a float32/float64 numpy array (torch rows are moved block by block)."""
    blk = distmat[a:b]
    if torch.is_tensor(blk):
        if blk.dtype not in (torch.float32, torch.float64):
            blk = blk.float()
        blk = blk.detach().cpu().numpy()
    elif blk.dtype not in (np.float32, np.float64):
        blk = blk.astype(np.float32 if blk.dtype.kind == "f" and blk.dtype.itemsize < 4 else np.float64)
    if not np.isfinite(blk).all():
        r, c = np.argwhere(~np.isfinite(blk))[0]
        raise ValueError(
            f"distmat[{a + r}, {c}] = {blk[r, c]}: distances must be finite (NaN or inf cannot be ranked)"
        )
    return blk


class _GalleryIndex:
    """Gallery indices grouped by pid, so a query's same-pid entries are found without
    comparing it with the whole gallery.

    Args:
        pids: (G,) gallery pids.
        keys: (G,) camera ids (market) or scene ids (MSVR310): same pid and same key is junk.
    """

    def __init__(self, pids: np.ndarray, keys: np.ndarray) -> None:
        self.order = np.argsort(pids, kind="stable")  # within a pid, indices stay ascending
        self.sorted_pids = pids[self.order]
        self.pids, self.keys = pids, keys

    def same_pid(self, q_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(b,) query pids -> (b, M) ascending gallery indices with the query's pid, padded
        with G, and the (b, M) mask of real entries."""
        lo = np.searchsorted(self.sorted_pids, q_pids, side="left")
        hi = np.searchsorted(self.sorted_pids, q_pids, side="right")
        width = int((hi - lo).max(initial=0))
        pos = lo[:, None] + np.arange(width)[None, :]
        real = pos < hi[:, None]
        num_g = len(self.pids)
        return np.where(real, self.order[np.minimum(pos, num_g - 1)], num_g), real


def _match_ranks_block(
    dist: np.ndarray, q_pids: np.ndarray, q_keys: np.ndarray, gallery: _GalleryIndex
) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of every true match among the kept entries of each row.

    Args:
        dist: (b, G) distances of a block of queries.
        q_pids, q_keys: (b,) their pids and cameras (or scenes).
        gallery: the gallery's pid index.

    Returns:
        ranks: (b, M) int64, row ``i``'s first ``num_rel[i]`` entries ascending, rest 0.
        num_rel: (b,) number of true matches per row.
    """
    b, num_g = dist.shape
    cand, real = gallery.same_pid(q_pids)
    safe = np.minimum(cand, num_g - 1)
    junk = real & (gallery.keys[safe] == q_keys[:, None])
    match = real & ~junk
    num_rel = match.sum(1)
    m_max = int(num_rel.max(initial=0))
    if m_max == 0:
        return np.zeros((b, 0), dtype=np.int64), num_rel

    # Junk goes to +inf: inputs are checked finite, so junk never precedes a true match.
    kept = np.array(dist, copy=True)
    jr, jc = np.nonzero(junk)
    kept[jr, cand[jr, jc]] = np.inf
    kept.sort(axis=1)

    # Match distances (padded with +inf) and gallery indices, ordered by (distance, index):
    # candidates come in index order and a stable sort keeps that order on ties.
    rows = np.arange(b)[:, None]
    thr = np.where(match, dist[rows, safe], np.inf).astype(dist.dtype)
    order = np.argsort(thr, axis=1, kind="stable")[:, :m_max]
    thr = np.take_along_axis(thr, order, 1)
    idx = np.take_along_axis(cand, order, 1)

    pos = np.arange(m_max)
    valid = pos[None, :] < num_rel[:, None]
    # less: kept entries (matches included) strictly closer than each match.
    less = torch.searchsorted(torch.from_numpy(kept), torch.from_numpy(np.ascontiguousarray(thr))).numpy()
    # Matches at equal distance form a group [first, last); (pos - first) of them precede
    # this match by index.
    first, last = _tie_groups(thr)
    ranks = np.where(valid, less + (pos[None, :] - first) + 1, 0)

    # From position `less` the sorted row holds the (last - first) matches at distance t and
    # any other entries at t; one more entry equal to t means a non-match ties with the match,
    # and those of smaller gallery index rank before it and must be counted.
    after = np.minimum(less + (last - first), num_g - 1)
    tied = valid & (np.take_along_axis(kept, after, 1) == thr)
    if tied.any():
        _count_tied_nonmatches(dist, q_pids, q_keys, gallery, thr, idx, tied, ranks)
    return ranks, num_rel


def _tie_groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows sorted ascending, the bounds [first, last) of each entry's run of equal values."""
    b, m = values.shape
    pos = np.broadcast_to(np.arange(m), (b, m))
    starts = np.ones((b, m), dtype=bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    ends = np.ones((b, m), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, pos, m)[:, ::-1], axis=1)[:, ::-1] + 1
    return first, last


def _count_tied_nonmatches(
    dist: np.ndarray,
    q_pids: np.ndarray,
    q_keys: np.ndarray,
    gallery: _GalleryIndex,
    thr: np.ndarray,
    idx: np.ndarray,
    tied: np.ndarray,
    ranks: np.ndarray,
) -> None:
    """Add to ``ranks`` (in place) the kept non-matches tied with a match and of smaller index.

    Kept non-matches are exactly the entries of another pid. Rows with many tied matches
    (e.g. integer distances) are re-ranked with a stable argsort, cheaper there than comparing
    the whole row once per tied match.
    """
    num_g = dist.shape[1]
    heavy = tied.sum(1) > 32
    for r in np.flatnonzero(heavy):
        same = gallery.pids == q_pids[r]
        junk = same & (gallery.keys == q_keys[r])
        order = np.argsort(dist[r], kind="stable")
        order = order[~junk[order]]
        hits = np.flatnonzero(same[order]) + 1
        ranks[r, : len(hits)] = hits
    pr, pm = np.nonzero(tied & ~heavy[:, None])
    chunk = max(1, _BLOCK_ELEMENTS // (4 * num_g))
    cols = np.arange(num_g)
    for s in range(0, len(pr), chunk):
        r, m = pr[s : s + chunk], pm[s : s + chunk]
        before = (
            (dist[r] == thr[r, m][:, None])
            & (gallery.pids[None, :] != q_pids[r][:, None])
            & (cols[None, :] < idx[r, m][:, None])
        )
        ranks[r, m] += before.sum(1)


def evaluate(
    distmat: np.ndarray | torch.Tensor,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    q_sceneids: Any | None = None,
    g_sceneids: Any | None = None,
    max_rank: int = 50,
    block_size: int | None = None,
    num_workers: int | None = None,
) -> EvalResult:
    """CMC, mAP and mINP of a (Q, G) query-gallery distance matrix.

    Args:
        distmat: (Q, G) distances, numpy or torch (any device; rows are moved to the CPU one
            block at a time). float32 and float64 are ranked in their own precision.
        q_pids, g_pids, q_camids, g_camids: (Q,) / (G,) integer labels.
        q_sceneids, g_sceneids: give both for the MSVR310 protocol (junk = same pid and same
            scene); leave both out for the market protocol (junk = same pid and same camera).
        max_rank: length of the CMC curve.
        block_size: queries per block; ``None`` picks about 4M matrix entries per block.
            Peak memory is one or two copies of a block, times ``num_workers``.
        num_workers: blocks evaluated concurrently by threads; ``None`` uses
            ``torch.get_num_threads()``. Results do not depend on it.

    Returns:
        An :class:`EvalResult`. Raises ``ValueError`` when no query has a true match.
    """
    if not (hasattr(distmat, "shape") and len(distmat.shape) == 2):
        raise ValueError(f"distmat must be a 2-D (num_query, num_gallery) array, got {type(distmat)}")
    if not torch.is_tensor(distmat):
        distmat = np.asarray(distmat)
    num_q, num_g = (int(s) for s in distmat.shape)
    if num_q == 0 or num_g == 0:
        raise ValueError(f"distmat has shape {tuple(distmat.shape)}: need at least one query and one gallery")
    if not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    if (q_sceneids is None) != (g_sceneids is None):
        raise ValueError(
            "give both q_sceneids and g_sceneids (MSVR310 protocol) or neither (market protocol)"
        )
    qp, gp = _labels(q_pids, "q_pids", num_q, "rows"), _labels(g_pids, "g_pids", num_g, "columns")
    if q_sceneids is None:
        protocol = "market"
        qs = _labels(q_camids, "q_camids", num_q, "rows")
        gs = _labels(g_camids, "g_camids", num_g, "columns")
    else:
        protocol = "msvr310"
        # Camera ids are still validated although this protocol does not use them.
        _labels(q_camids, "q_camids", num_q, "rows")
        _labels(g_camids, "g_camids", num_g, "columns")
        qs = _labels(q_sceneids, "q_sceneids", num_q, "rows")
        gs = _labels(g_sceneids, "g_sceneids", num_g, "columns")
    if block_size is None:
        block_size = max(1, _BLOCK_ELEMENTS // num_g)
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")

    gallery = _GalleryIndex(gp, gs)

    def block_stats(start: int) -> tuple[float, float, np.ndarray, int]:
        stop = min(start + block_size, num_q)
        dist = _float_block(distmat, start, stop)
        ranks, num_rel = _match_ranks_block(dist, qp[start:stop], qs[start:stop], gallery)
        valid = num_rel > 0
        ranks, num_rel = ranks[valid], num_rel[valid]
        hist = np.zeros(max_rank + 1, dtype=np.int64)  # first-match ranks, clipped at max_rank + 1
        if len(ranks) == 0:
            return 0.0, 0.0, hist, 0
        pos = np.arange(1, ranks.shape[1] + 1)
        real = pos[None, :] <= num_rel[:, None]
        precision = np.where(real, pos[None, :] / np.maximum(ranks, 1), 0.0)
        ap = float((precision.sum(1) / num_rel).sum())
        inp = float((num_rel / ranks[np.arange(len(ranks)), num_rel - 1]).sum())
        hist += np.bincount(np.minimum(ranks[:, 0], max_rank + 1) - 1, minlength=max_rank + 1)
        return ap, inp, hist, len(ranks)

    starts = range(0, num_q, block_size)
    workers = min(num_workers or torch.get_num_threads(), len(starts))
    if workers > 1:
        # numpy's sort and torch's search release the GIL, so blocks overlap on several cores.
        with ThreadPoolExecutor(workers) as pool:
            stats = list(pool.map(block_stats, starts))
    else:
        stats = [block_stats(s) for s in starts]
    ap_sum = sum(s[0] for s in stats)
    inp_sum = sum(s[1] for s in stats)
    first_hist = np.sum([s[2] for s in stats], axis=0)
    num_valid = sum(s[3] for s in stats)

    num_skipped = num_q - num_valid
    if num_valid == 0:
        key = "sceneid" if protocol == "msvr310" else "camid"
        raise ValueError(
            f"none of the {num_q} queries has a true match in the gallery (same pid, different {key}); "
            "check that query and gallery come from the same identities"
        )
    cmc = np.cumsum(first_hist[:max_rank]) / num_valid
    return EvalResult(
        cmc=cmc,
        mAP=ap_sum / num_valid,
        mINP=inp_sum / num_valid,
        num_valid=num_valid,
        num_skipped=num_skipped,
        protocol=protocol,
    )
