"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), exact and memory-bounded.

The algorithm over the N = Q + G probe and gallery samples, with ``d`` the original distance:

1. ``N(p, k)``: the k + 1 nearest samples of p (p itself included, as in the authors' code);
   ``R(p, k) = {g in N(p, k) : p in N(g, k)}``, the k-reciprocal neighbours.
2. ``R*(p, k1) = R(p, k1) ∪ R(q, round(k1 / 2))`` for every ``q in R(p, k1)`` with
   ``|R(p, k1) ∩ R(q, round(k1 / 2))| > 2/3 |R(q, round(k1 / 2))|``.
3. ``V[p, g] = exp(-d(p, g))`` for ``g in R*(p)``, normalised to sum 1 per row.
4. Local query expansion (k2 > 1): ``V[p] = mean of V[g] over the k2 nearest g of p``.
5. ``d_J(p, g) = 1 - sum_c min(V[p, c], V[g, c]) / sum_c max(V[p, c], V[g, c])``.
6. ``d*(p, g) = (1 - lambda) d_J(p, g) + lambda d(p, g)``.

Conventions follow the authors' released code where it refines the paper: ``d`` is the squared
Euclidean distance of the features divided by each row's maximum (the paper leaves it
unnormalised), the expansion test is a strict ``>`` (the paper writes ``>=``), V rows are
normalised, and k2 = 1 skips the expansion. Neighbour lists use a stable order (ties by index)
so the result is deterministic; the authors' ``np.argsort`` breaks ties arbitrarily and stores V
in float16, so their output can differ from this one by about 1e-3 where that matters.

Memory design (the authors' code holds several dense N x N float64/float16 matrices, ~2.7 GB at
N = 13,000 and quadratic beyond): distances are computed once, ``block_size`` rows at a time,
keeping only each row's maximum, its ``3 (k1 + 1)`` nearest neighbours with their distances and,
for probe rows, the normalised probe-gallery distances that are also the (Q, G) float32 output.
The weights ``exp(-d(p, g))`` of V read those stored distances; the few members of R*(p) beyond
them are computed pair by pair (cheaper than a second pass of matrix products). V is sparse
(CSR, float32); the Jaccard term joins each probe's V row with a column index of the gallery
rows of V, in blocks whose pair count is bounded. Peak memory is O(block x N + N x k1^2 + Q x G).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mambapro.evaluation.distance import paired_distance, pairwise_distance, prepare_features

__all__ = ["re_ranking"]

#: Distance-matrix entries per row block when ``block_size`` is not given.
_BLOCK_ELEMENTS = 1 << 24
#: Probe-gallery pairs joined at once in the Jaccard step.
_PAIRS_PER_CHUNK = 1 << 23
#: Rows per chunk of the query-expansion step.
_ROWS_PER_CHUNK = 2048
#: Neighbour distances kept per sample, in units of k1 + 1; members of the expanded sets
#: beyond them (a few percent) are computed pair by pair.
_KEPT_NEIGHBOURS = 3


def _stable_topk(dist: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest entries of each row, ordered by (value, index).

    Args:
        dist: (b, N) with k <= N.

    Returns:
        (b, k) int64. A partition finds each row's k-th value; only entries up to it are sorted,
        which keeps ties at the boundary exact without sorting whole rows.
    """
    b = dist.shape[0]
    kth = np.partition(dist, k - 1, axis=1)[:, k - 1]
    cand = dist <= kth[:, None]
    rows, cols = np.nonzero(cand)
    order = np.lexsort((cols, dist[rows, cols], rows))
    rows, cols = rows[order], cols[order]
    counts = cand.sum(1)
    slot = np.arange(len(rows)) - (np.cumsum(counts) - counts)[rows]
    keep = slot < k
    out = np.empty((b, k), dtype=np.int64)
    out[rows[keep], slot[keep]] = cols[keep]
    return out


def _reciprocal(ranks: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """For probes ``rows``, which of their k + 1 nearest neighbours hold them among their own
    k + 1 nearest: (c,) -> (c, k + 1) bool."""
    nbrs = ranks[rows, : k + 1]
    back = ranks[nbrs, : k + 1]  # (c, k + 1, k + 1)
    return (back == rows[:, None, None]).any(-1)


def _expansion_sets(ranks: np.ndarray, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """The expanded k-reciprocal sets R*(p, k1) of every sample, as CSR (indptr, indices)."""
    n = len(ranks)
    kh = int(np.around(k1 / 2))
    indptr = [np.zeros(1, dtype=np.int64)]
    indices = []
    # The overlap test compares (k1 + 1) x (kh + 1) x (k1 + 1) index pairs per sample.
    chunk = max(1, _BLOCK_ELEMENTS // ((k1 + 1) ** 2 * (kh + 1)))
    for a in range(0, n, chunk):
        rows = np.arange(a, min(a + chunk, n))
        fwd = ranks[rows, : k1 + 1]  # (c, k1 + 1)
        in_r = _reciprocal(ranks, rows, k1)  # fwd[i, j] in R(p_i, k1)
        half = ranks[fwd, : kh + 1]  # (c, k1 + 1, kh + 1): N(q, kh) of each candidate q
        in_half = _reciprocal(ranks, fwd.ravel(), kh).reshape(half.shape)  # membership of R(q, kh)
        # |R(p, k1) ∩ R(q, kh)|: members of R(q, kh) found among p's k1-reciprocal neighbours.
        shared = ((half[..., None] == fwd[:, None, None, :]) & in_r[:, None, None, :]).any(-1) & in_half
        # The authors' strict "> 2/3 |R(q, kh)|", in integers.
        accept = in_r & (3 * shared.sum(-1) > 2 * in_half.sum(-1))
        members = np.concatenate(
            [np.where(in_r, fwd, -1), np.where(accept[..., None] & in_half, half, -1).reshape(len(rows), -1)],
            axis=1,
        )
        members.sort(axis=1)
        members[:, 1:][members[:, 1:] == members[:, :-1]] = -1
        valid = members >= 0
        indptr.append(indptr[-1][-1] + np.cumsum(valid.sum(1)))
        # Row-major boolean indexing keeps each row's members ascending.
        indices.append(members[valid])
    return np.concatenate(indptr), np.concatenate(indices)


def _lookup_distances(near: np.ndarray, near_d: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """d(rows[i], cols[i]) where cols[i] is among the stored neighbours ``near[rows[i]]``, else NaN.

    Args:
        near, near_d: (N, L) neighbour indices of each sample and their distances.
        rows, cols: (P,) pairs.
    """
    n = len(near)
    order = np.argsort(near, axis=1)
    # Row-major keys row * N + col are globally sorted once each row is sorted by col.
    keys = (np.arange(n)[:, None] * n + np.take_along_axis(near, order, 1)).ravel()
    values = np.take_along_axis(near_d, order, 1).ravel()
    query = rows * n + cols
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[pos] == query, values[pos], np.nan).astype(np.float32)


def _average_rows(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, nbrs: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local query expansion: row p of the result is the mean of rows ``nbrs[p]`` (CSR in/out)."""
    k = nbrs.shape[1]
    out_ptr = [np.zeros(1, dtype=np.int64)]
    out_idx, out_val = [], []
    lengths = np.diff(indptr)
    for a in range(0, len(nbrs), _ROWS_PER_CHUNK):
        b = min(a + _ROWS_PER_CHUNK, len(nbrs))
        src = nbrs[a:b].ravel()
        ln = lengths[src]
        total = int(ln.sum())
        dst = np.repeat(np.repeat(np.arange(b - a), k), ln)
        pos = np.repeat(indptr[src] - (np.cumsum(ln) - ln), ln) + np.arange(total)
        key = dst * n + indices[pos]
        order = np.argsort(key, kind="stable")
        key, vals = key[order], data[pos][order].astype(np.float64)
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if total else np.zeros(0, dtype=np.int64)
        ukey = key[starts]
        sums = np.add.reduceat(vals, starts) / k if total else np.zeros(0)
        out_ptr.append(out_ptr[-1][-1] + np.cumsum(np.bincount(ukey // n, minlength=b - a)))
        out_idx.append(ukey % n)
        out_val.append(sums.astype(np.float32))
    return np.concatenate(out_ptr), np.concatenate(out_idx), np.concatenate(out_val)


def re_ranking(
    q_feats: Any,
    g_feats: Any,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    metric: str = "euclidean",
    normalize: bool = True,
    block_size: int | None = None,
) -> np.ndarray:
    """Re-ranked (Q, G) distances between query and gallery features.

    Args:
        q_feats: (Q, D) query features, numpy or torch (distances computed in float32 on the
            features' device, as :func:`~mambapro.evaluation.compute_distmat`).
        g_feats: (G, D) gallery features.
        k1: size of the k-reciprocal neighbourhoods (paper default 20).
        k2: size of the local query expansion (paper default 6; 1 disables it).
        lambda_value: weight of the original distance (paper default 0.3).
        metric, normalize: the original distance, as in ``compute_distmat``.
        block_size: distance rows per block; ``None`` picks about 16M entries (64 MB).

    Returns:
        (Q, G) float32 numpy array of ``(1 - lambda) d_J + lambda d``.
    """
    q, qq = prepare_features(q_feats, "query features", metric, normalize)
    g, gg = prepare_features(g_feats, "gallery features", metric, normalize)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query features have dimension {q.shape[1]} but gallery features have {g.shape[1]}")
    feats = torch.cat([q, g.to(q.device)])
    norms = torch.cat([qq, gg.to(q.device)])
    num_q, n = q.shape[0], feats.shape[0]
    num_g = n - num_q
    if num_q == 0 or num_g == 0:
        raise ValueError(f"re-ranking needs queries and gallery, got {num_q} and {num_g}")
    for name, k in (("k1", k1), ("k2", k2)):
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"{name} = {k!r} must be a positive integer")
    if k1 + 1 > n or k2 > n:
        raise ValueError(f"k1 = {k1} and k2 = {k2} need at least max(k1 + 1, k2) samples; there are {n}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value = {lambda_value} must lie in [0, 1]")
    if block_size is None:
        block_size = max(1, _BLOCK_ELEMENTS // n)
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")

    # One pass over the distance rows: maxima, nearest neighbours (with their distances, a few
    # more than the neighbour lists need: the expanded sets mostly fall among them), and the
    # probe-gallery distances.
    num_nbrs = max(k1 + 1, k2)
    num_kept = min(n, max(num_nbrs, _KEPT_NEIGHBOURS * (k1 + 1)))
    near = np.empty((n, num_kept), dtype=np.int64)
    near_d = np.empty((n, num_kept), dtype=np.float32)
    row_max = np.empty(n, dtype=np.float32)
    out = np.empty((num_q, num_g), dtype=np.float32)
    with torch.no_grad():
        for a in range(0, n, block_size):
            b = min(a + block_size, n)
            d = pairwise_distance(feats[a:b], feats, norms[a:b], norms, metric).cpu().numpy()
            m = d.max(1)
            # All-identical features give a zero row; any positive scale leaves it zero.
            row_max[a:b] = np.where(m > 0, m, 1.0)
            near[a:b] = _stable_topk(d, num_kept)
            near_d[a:b] = np.take_along_axis(d, near[a:b], 1)
            if a < num_q:
                stop = min(b, num_q)
                out[a:stop] = d[: stop - a, num_q:] / row_max[a:stop, None]
            del d
    ranks = near[:, :num_nbrs]

    # V: Gaussian weights of the normalised distance on each expanded set, rows summing to 1.
    indptr, indices = _expansion_sets(ranks, k1)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    dist = _lookup_distances(near, near_d, rows, indices)
    missing = np.flatnonzero(np.isnan(dist))
    chunk = max(1, _BLOCK_ELEMENTS // feats.shape[1])
    with torch.no_grad():
        for a in range(0, len(missing), chunk):
            sel = missing[a : a + chunk]
            r = torch.from_numpy(rows[sel]).to(feats.device)
            c = torch.from_numpy(indices[sel]).to(feats.device)
            dist[sel] = paired_distance(feats[r], feats[c], norms[r], norms[c], metric).cpu().numpy()
    weights = np.exp(-dist / row_max[rows])
    row_sum = np.bincount(rows, weights=weights, minlength=n)
    data = (weights / np.where(row_sum > 0, row_sum, 1.0)[rows]).astype(np.float32)
    if k2 > 1:
        indptr, indices, data = _average_rows(indptr, indices, data, ranks[:, :k2], n)

    _mix_jaccard(out, indptr, indices, data, num_q, lambda_value)
    return out


def _mix_jaccard(
    out: np.ndarray, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, num_q: int, lam: float
) -> None:
    """``out <- (1 - lam) d_J + lam out`` in place, for the (Q, G) probe-gallery block.

    ``sum max(a, b) = sum a + sum b - sum min(a, b)``, so only the sum of minima needs the
    join over shared columns: each probe entry (p, c, v) meets the gallery entries of column c.
    """
    n = len(indptr) - 1
    num_g = n - num_q
    rows = np.repeat(np.arange(n), np.diff(indptr))
    row_sum = np.bincount(rows, weights=data, minlength=n)
    # Column index (CSC) of the gallery rows of V.
    gal = slice(int(indptr[num_q]), None)
    order = np.argsort(indices[gal], kind="stable")
    col_rows = rows[gal][order] - num_q
    col_vals = data[gal][order]
    col_len = np.bincount(indices[gal], minlength=n)
    col_ptr = np.concatenate([[0], np.cumsum(col_len)])

    probe_end = int(indptr[num_q])
    pairs_per_entry = col_len[indices[:probe_end]]
    pairs_per_probe = np.bincount(rows[:probe_end], weights=pairs_per_entry, minlength=num_q)
    cum_pairs = np.concatenate([[0], np.cumsum(pairs_per_probe)])
    rows_cap = max(1, (1 << 22) // max(num_g, 1))
    a = 0
    while a < num_q:
        # Largest probe block within both the pair budget and the dense (block, G) budget.
        b = int(np.searchsorted(cum_pairs, cum_pairs[a] + _PAIRS_PER_CHUNK, side="right")) - 1
        b = min(max(b, a + 1), a + rows_cap, num_q)
        e0, e1 = int(indptr[a]), int(indptr[b])
        probe = rows[e0:e1] - a
        cols, vals = indices[e0:e1], data[e0:e1]
        cnt = col_len[cols]
        total = int(cnt.sum())
        src = np.repeat(col_ptr[cols] - (np.cumsum(cnt) - cnt), cnt) + np.arange(total)
        mins = np.minimum(np.repeat(vals, cnt), col_vals[src])
        sum_min = np.bincount(
            np.repeat(probe, cnt) * num_g + col_rows[src], weights=mins, minlength=(b - a) * num_g
        ).reshape(b - a, num_g)
        sum_max = row_sum[a:b, None] + row_sum[None, num_q:] - sum_min
        jac = 1.0 - np.divide(sum_min, sum_max, out=np.zeros_like(sum_min), where=sum_max > 0)
        out[a:b] = (1.0 - lam) * jac + lam * out[a:b]
        a = b
