"""Speed and memory of ``mambapro.evaluation``, each measured against a baseline in the same run.

1. ``evaluate`` on a 2,000 x 10,000 distance matrix against the per-query loop reference of the
   tests (``tests/reference/eval.py``): time of each, the speed-up, and the difference of
   the results.
2. ``evaluate`` on 20,000 x 100,000 (an 8 GB float32 matrix): time and the peak memory it adds
   on top of the matrix, against the size of one evaluation block.
3. ``re_ranking`` on 3,000 x 10,000 features: time and peak memory, against the dense
   (Q + G)^2 float64 matrix that the authors' implementation holds (several such matrices).

Each step runs in a fresh process, and peak memory is that process's resident high-water mark
(``VmHWM``) minus its resident size when the measured call starts (memory freed by earlier work
in the same process would otherwise be reused unseen).

Usage: ``python benchmarks/bench_eval.py [--skip-large] [--out benchmarks/results/bench_eval.txt]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _machine import describe  # noqa: E402
from mambapro.evaluation import compute_distmat, evaluate, re_ranking  # noqa: E402
from reference.eval import reference_evaluate  # noqa: E402

GIB = 1024**3


def _status(field: str) -> int:
    """A memory field of /proc/self/status in bytes (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def measure(fn: Callable[[], object]) -> tuple[object, float, int]:
    """(result, seconds, peak resident bytes added above the RSS at the start)."""
    _reset_peak()
    base = _status("VmRSS")
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    return out, seconds, max(0, _status("VmHWM") - base)


def clustered_features(rng: np.random.Generator, pids: np.ndarray, dim: int, noise: float) -> np.ndarray:
    centres = rng.normal(size=(int(pids.max()) + 1, dim)).astype(np.float32)
    feats = centres[pids]
    feats += noise * rng.normal(size=feats.shape).astype(np.float32)
    return feats


def machine() -> str:
    return describe()


def bench_small(repeats: int) -> list[str]:
    lines: list[str] = []
    rng = np.random.default_rng(0)
    num_q, num_g, ids, cams = 2000, 10000, 200, 4
    q_pids, g_pids = rng.integers(0, ids, num_q), rng.integers(0, ids, num_g)
    q_cams, g_cams = rng.integers(0, cams, num_q), rng.integers(0, cams, num_g)
    feats = clustered_features(rng, np.concatenate([q_pids, g_pids]), 256, 1.8)
    dist, t_dist, _ = measure(lambda: compute_distmat(feats[:num_q], feats[num_q:]))
    args = (dist, q_pids, g_pids, q_cams, g_cams)

    times = {}
    for name, kw in (("evaluate", {}), ("evaluate, 1 thread", {"num_workers": 1})):
        best = float("inf")
        for _ in range(repeats):
            res, t, _ = measure(lambda kw=kw: evaluate(*args, **kw))
            best = min(best, t)
        times[name] = best
    ref, t_ref, _ = measure(lambda: reference_evaluate(*args))
    diff = max(
        abs(res.mAP - ref["mAP"]), abs(res.mINP - ref["mINP"]), float(np.abs(res.cmc - ref["cmc"]).max())
    )
    lines += [
        f"evaluate, {num_q:,} x {num_g:,} (float32 distances of clustered 256-d features; "
        f"mAP {100 * res.mAP:.1f}%, best of {repeats})",
        f"  {'method':<34}{'seconds':>10}{'speed-up':>10}",
        f"  {'per-query loop reference (tests)':<34}{t_ref:>10.3f}{1.0:>10.1f}",
    ]
    for name, t in times.items():
        lines.append(f"  {name:<34}{t:>10.3f}{t_ref / t:>10.1f}")
    lines += [
        f"  max |difference| to the reference (mAP, mINP, CMC): {diff:.1e}",
        f"  (compute_distmat for this matrix: {t_dist:.3f} s)",
        "",
    ]
    return lines


def bench_large(num_q: int, num_g: int) -> list[str]:
    rng = np.random.default_rng(1)
    ids = num_g // 50
    q_pids, g_pids = rng.integers(0, ids, num_q), rng.integers(0, ids, num_g)
    q_cams, g_cams = rng.integers(0, 8, num_q), rng.integers(0, 8, num_g)
    dist = np.empty((num_q, num_g), dtype=np.float32)
    for a in range(0, num_q, 1000):
        rng.random(out=dist[a : a + 1000], dtype=np.float32)
    block = max(1, (1 << 22) // num_g)
    res, t, peak = measure(lambda: evaluate(dist, q_pids, g_pids, q_cams, g_cams, block_size=block))
    workers = torch.get_num_threads()
    return [
        f"evaluate, {num_q:,} x {num_g:,} (random float32 distances, {dist.nbytes / GIB:.1f} GiB matrix)",
        f"  time {t:.1f} s ({num_q * num_g / t / 1e6:.0f} M entries/s); "
        f"blocks of {block} queries, {workers} threads",
        f"  peak memory above the matrix: {peak / GIB:.2f} GiB "
        f"({peak / (block * num_g * workers):.0f} bytes per entry of the {workers} blocks in flight)",
        f"  mAP {100 * res.mAP:.2f}% (chance level: random distances)",
        "",
    ]


def bench_rerank(num_q: int, num_g: int, dim: int) -> list[str]:
    rng = np.random.default_rng(2)
    pids = rng.integers(0, num_g // 20, num_q + num_g)
    feats = clustered_features(rng, pids, dim, 3.3)
    cams = np.arange(num_q + num_g) % 4
    q, g = slice(0, num_q), slice(num_q, None)
    rr, t_rr, peak = measure(lambda: re_ranking(feats[q], feats[g]))
    base, t_base, _ = measure(lambda: compute_distmat(feats[q], feats[g]))
    n = num_q + num_g
    m_base = evaluate(base, pids[q], pids[g], cams[q], cams[g]).mAP
    m_rr = evaluate(rr, pids[q], pids[g], cams[q], cams[g]).mAP
    return [
        f"re_ranking, {num_q:,} x {num_g:,}, {dim}-d features, k1=20 k2=6 lambda=0.3",
        f"  time {t_rr:.1f} s (compute_distmat alone: {t_base:.2f} s)",
        f"  peak memory {peak / GIB:.2f} GiB; one dense (Q+G)^2 float64 matrix: {n * n * 8 / GIB:.2f} GiB",
        f"  mAP {100 * m_base:.1f}% -> {100 * m_rr:.1f}% on clustered synthetic features",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-large", action="store_true", help="skip the 20,000 x 100,000 step")
    parser.add_argument("--large", type=int, nargs=2, default=(20000, 100000), metavar=("Q", "G"))
    parser.add_argument("--rerank", type=int, nargs=3, default=(3000, 10000, 1536), metavar=("Q", "G", "DIM"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_eval.txt")
    args = parser.parse_args()

    lines = ["mambapro.evaluation benchmark", machine(), ""]
    print("\n".join(lines), flush=True)
    steps: list[tuple[Callable[..., list[str]], tuple]] = [(bench_small, (args.repeats,))]
    if not args.skip_large:
        steps.append((bench_large, tuple(args.large)))
    steps.append((bench_rerank, tuple(args.rerank)))
    ctx = multiprocessing.get_context("spawn")
    for fn, fn_args in steps:
        with ctx.Pool(1) as pool:
            out = pool.apply(fn, fn_args)
        print("\n".join(out), flush=True)
        lines += out
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines).rstrip() + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
