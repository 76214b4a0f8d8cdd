"""The FAISS gallery index (``mambapro.retrieval.index``) against the package's exact search, in one run.

Synthetic clustered features (``--ids`` identities, Gaussian noise around each identity's centre,
float32) of ``--n`` gallery rows x ``--dim``, and 1,000 queries drawn the same way (not in the
gallery). Measured:

* baseline: exact top-10 with :func:`mambapro.evaluation.compute_distmat` (squared Euclidean on
  L2-normalised features) in blocks of queries, then a partial sort; its "index" is the raw
  float32 features;
* ``flat``: ``GalleryIndex.build(kind="flat")`` (exact inner product);
* ``ivf-pq``: ``GalleryIndex.build(kind="ivf-pq")`` (``--nlist`` cells, ``--m`` sub-quantizers of
  ``--nbits`` bits), searched with each ``--nprobe``. Its build time includes training and the
  build-time recall@10 (1,000 of its own vectors against an exact index of the same data).

For each: build time, index size (bytes of the serialized FAISS index), queries per second for
the 1,000 queries (one batch), and recall@10 against the baseline's top-10. "same top-10" is the
share of queries whose top-10 list (order included) equals the baseline's.

Usage: ``python benchmarks/bench_index.py [--n 1000000] [--dim 512] [--nprobe 16 64]``
(writes ``benchmarks/results/bench_index.txt`` unless ``--out`` says otherwise)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from _machine import describe
from mambapro.evaluation import compute_distmat
from mambapro.retrieval.features import FeatureSet
from mambapro.retrieval.index import GalleryIndex

GIB = 1024**3


def machine() -> str:
    import faiss

    return describe(f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)")


def synthetic(
    n: int, queries: int, dim: int, ids: int, noise: float, seed: int
) -> tuple[FeatureSet, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim), dtype=np.float32)
    pids = rng.integers(0, ids, size=n)
    feats = np.empty((n, dim), np.float32)
    for a in range(0, n, 65536):  # in blocks: no (n, dim) float64 temporary
        b = min(a + 65536, n)
        feats[a:b] = centres[pids[a:b]] + noise * rng.standard_normal((b - a, dim), dtype=np.float32)
    q_pids = rng.integers(0, ids, size=queries)
    q = centres[q_pids] + noise * rng.standard_normal((queries, dim), dtype=np.float32)
    zeros = np.zeros(n, np.int64)
    return FeatureSet(feats, pids, zeros, zeros, [f"g/{i:07d}.jpg" for i in range(n)]), q, q_pids


def exact_topk(q: np.ndarray, g: np.ndarray, k: int, block: int) -> np.ndarray:
    """Top-k rows by compute_distmat (ascending distance, ties to the lower row)."""
    out = np.empty((len(q), k), np.int64)
    for a in range(0, len(q), block):
        d = compute_distmat(q[a : a + block], g)
        part = np.argpartition(d, k, axis=1)[:, :k]
        pd = np.take_along_axis(d, part, 1)
        order = np.lexsort((part, pd), axis=1)
        out[a : a + block] = np.take_along_axis(part, order, 1)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--ids", type=int, default=10_000)
    ap.add_argument("--noise", type=float, default=1.0, help="noise std per dimension (centres: std 1)")
    ap.add_argument("--nlist", type=int, default=None, help="default: the power of two nearest 2 sqrt(n)")
    ap.add_argument("--m", type=int, default=64)
    ap.add_argument("--nbits", type=int, default=8)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--block", type=int, default=100, help="query rows per compute_distmat call")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_index.txt")
    args = ap.parse_args()
    k = 10
    nlist = args.nlist or int(2 ** round(np.log2(2 * np.sqrt(args.n))))

    lines = ["mambapro.retrieval.index (FAISS gallery index) benchmark", machine()]
    lines.append("command: python benchmarks/bench_index.py " + " ".join(sys.argv[1:]))
    lines.append(
        f"gallery {args.n:,} x {args.dim} float32 ({args.n * args.dim * 4 / GIB:.2f} GiB), "
        f"{args.ids:,} identities, noise {args.noise}; {args.queries:,} queries (not in the gallery), top-{k}"
    )
    print("\n".join(lines), flush=True)
    (gallery, q, q_pids), t_gen = timed(
        lambda: synthetic(args.n, args.queries, args.dim, args.ids, args.noise, 0)
    )
    print(f"  synthetic features: {t_gen:.1f} s", flush=True)

    def same_id(found: np.ndarray) -> float:
        return float(np.mean(gallery.pids[found] == q_pids[:, None]))

    rows = []  # (method, build s, bytes, qps, recall, same top-10, same-identity share of the top-10)
    truth, t_exact = timed(lambda: exact_topk(q, gallery.feats, k, args.block))
    rows.append(
        (
            "exact compute_distmat (baseline)",
            0.0,
            gallery.feats.nbytes,
            len(q) / t_exact,
            1.0,
            1.0,
            same_id(truth),
        )
    )
    print(f"  exact baseline: {t_exact:.1f} s", flush=True)

    flat, t_build = timed(lambda: GalleryIndex.build(gallery, kind="flat"))
    (_, found), t_search = timed(lambda: flat.search(q, k))
    same = float(np.mean(np.all(found == truth, axis=1)))
    name = "faiss flat (IndexFlatIP)"
    rows.append((name, t_build, flat.nbytes(), len(q) / t_search, recall(found, truth), same, same_id(found)))
    print(f"  flat: build {t_build:.1f} s, search {t_search:.2f} s", flush=True)
    flat = None  # frees the flat index before building the next one

    ivf, t_build = timed(
        lambda: GalleryIndex.build(
            gallery, kind="ivf-pq", nlist=nlist, m=args.m, nbits=args.nbits, nprobe=args.nprobe[0]
        )
    )
    size = ivf.nbytes()
    print(f"  ivf-pq: build {t_build:.1f} s; {ivf.summary()}", flush=True)
    for nprobe in args.nprobe:
        ivf.search(q[:10], k, nprobe=nprobe)  # warm-up
        (_, found), t_search = timed(lambda nprobe=nprobe: ivf.search(q, k, nprobe=nprobe))
        same = float(np.mean(np.all(found == truth, axis=1)))
        name = f"faiss ivf-pq nlist {nlist} m {args.m}x{args.nbits}b nprobe {nprobe}"
        rows.append((name, t_build, size, len(q) / t_search, recall(found, truth), same, same_id(found)))
        print(f"  ivf-pq nprobe {nprobe}: search {t_search:.2f} s", flush=True)

    width = max(len(r[0]) for r in rows)
    table = [
        "",
        f"  {'method':<{width}}  {'build s':>8}  {'index MiB':>9}  {'queries/s':>9}  {'recall@10':>9}  "
        f"{'same top-10':>11}  {'same-id@10':>10}",
    ]
    for name, build, nbytes, qps, rec, same, sid in rows:
        table.append(
            f"  {name:<{width}}  {build:>8.1f}  {nbytes / 2**20:>9.1f}  {qps:>9.0f}  {rec:>9.3f}  "
            f"{same:>11.1%}  {sid:>10.1%}"
        )
    table.append(
        f"  ivf-pq build-time recall@10 (its own vectors as queries, self left out, nprobe "
        f"{ivf.params['nprobe']}): {ivf.recall:.3f} on {ivf.recall_queries} queries"
    )
    table.append(
        "  index MiB: the serialized FAISS index (baseline: the raw float32 features); build s of "
        "ivf-pq includes training and that recall measurement"
    )
    table.append(
        "  same top-10: the top-10 list, order included, equals the baseline's; same-id@10: share of "
        "the top-10 with the query's identity"
    )
    lines += table
    print("\n".join(table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
