"""The search service (``mambapro serve``) under a bounded burst of real HTTP requests.

Per model (random weights: latency does not depend on them; ``demo``: the tiny backbone at
128x64, ``rgbnt201``: CLIP ViT-B/16 at 256x128 with MA), on a synthetic RGBNT201 tree:

1. extract the gallery features and build a ``flat`` index (``mambapro extract`` + ``index build``);
2. baseline: :meth:`SearchService.search` called in this process, one request at a time (decode +
   preprocess + forward + index search, no HTTP);
3. ``mambapro serve`` started as a subprocess on a free loopback port, then ``--requests``
   POST /search requests over HTTP (httpx), first one at a time, then ``--concurrency`` at a
   time. The queries cycle through the test captures and through the dataset's modality subsets
   (full, then each missing setting: seven for RGB, NI, TI), so every code path of the
   preprocessing is exercised.

Reported per row: errors (a status other than 200 or a transport error), latency percentiles
(p50, p90, p99, max, in milliseconds, from the client's side), requests per second, and the
p50 against the in-process baseline. Only 127.0.0.1 is contacted.

Usage: ``python benchmarks/bench_serve.py [--presets demo,rgbnt201] [--requests 200]
[--concurrency 8]`` (writes ``benchmarks/results/bench_serve.txt``)
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fastapi
import httpx
import numpy as np
import uvicorn

from _checkpoint import random_checkpoint
from _machine import describe
from mambapro.cli import main as cli
from mambapro.data import dataset_spec, samples_at, triplet_paths
from mambapro.data.synth import generate
from mambapro.deploy.serve import SearchService
from mambapro.retrieval.index import GalleryIndex
from mambapro.train.checkpoint import load_model

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = {"demo": ["model.backbone=tiny"], "rgbnt201": ["model.weights=null"]}
NUM_CAMERAS = 2


def _checkpoint(preset: str, folder: Path) -> Path:
    overrides = ["data.synthetic=false", "data.num_workers=0", *PRESETS[preset]]
    return random_checkpoint(preset, overrides, folder / f"{preset}.ckpt", NUM_CAMERAS)[0]


def _queries(data: Path) -> list[tuple[dict, str]]:
    """(multipart files, camid) per request pattern: each test capture under each subset."""
    out = []
    samples = samples_at(data / "RGBNT201" / "test", "RGBNT201")
    modalities = dataset_spec("RGBNT201").modalities
    for i, sample in enumerate(samples):
        files = dict(zip(modalities, triplet_paths(sample.paths[0], "RGBNT201")))
        gone = modalities.missing(modalities.settings[i % len(modalities.settings)])
        upload = {
            m: (Path(f).name, Path(f).read_bytes(), "image/jpeg") for m, f in files.items() if m not in gone
        }
        out.append((upload, str(sample.camid)))
    return out


def _percentiles(ms: list[float]) -> tuple[float, ...]:
    a = np.asarray(ms)
    return tuple(float(np.percentile(a, q)) for q in (50, 90, 99)) + (float(a.max()),)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _in_process(ckpt: Path, index: Path, queries: list, n: int) -> tuple[list[float], int]:
    model, cfg, _ = load_model(ckpt)
    service = SearchService(model, cfg, GalleryIndex.load(index))
    uploads = [({m: f[1] for m, f in files.items()}, camid) for files, camid in queries]
    service.search(uploads[0][0], camid=uploads[0][1])  # warm-up
    times = []
    for i in range(n):
        start = time.perf_counter()
        service.search(uploads[i % len(uploads)][0], camid=uploads[i % len(uploads)][1])
        times.append(1000 * (time.perf_counter() - start))
    return times, 0


def _burst(base: str, queries: list, n: int, concurrency: int) -> tuple[list[float], int, float]:
    def one(i: int) -> tuple[float, bool]:
        files, camid = queries[i % len(queries)]
        start = time.perf_counter()
        try:
            r = httpx.post(f"{base}/search", files=files, data={"camid": camid}, timeout=120)
            ok = r.status_code == 200 and len(r.json()["matches"]) > 0
        except httpx.HTTPError:
            ok = False
        return 1000 * (time.perf_counter() - start), ok

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    return [t for t, _ in results], sum(not ok for _, ok in results), wall


def _serve(ckpt: Path, index: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    argv = [sys.executable, "-m", "mambapro.cli", "serve", "-q", "--checkpoint", str(ckpt)]
    proc = subprocess.Popen([*argv, "--index", str(index), "--port", str(port)], stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.3)
    proc.terminate()
    raise SystemExit("the server did not come up in 300 s")


def run(presets: list[str], requests: int, concurrency: int) -> str:
    lines = [
        "mambapro serve (search service) benchmark",
        describe(f"fastapi {fastapi.__version__}, uvicorn {uvicorn.__version__}, httpx {httpx.__version__}"),
        f"command: python benchmarks/bench_serve.py --presets {','.join(presets)} --requests {requests} "
        f"--concurrency {concurrency}",
        "",
    ]
    header = (
        f"  {'model':<9} {'mode':<28} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p90 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8} {'req/s':>7} {'p50 vs in-process':>18}"
    )
    rows = [header]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        generate("rgbnt201", data, seed=3, ids=40, test_ids=20, cameras=NUM_CAMERAS, shots=3)
        for preset in presets:
            ckpt = _checkpoint(preset, tmp)
            gallery, index = tmp / f"{preset}.npz", tmp / f"{preset}.index"
            argv = [
                "extract",
                "-q",
                "--checkpoint",
                str(ckpt),
                "--data-root",
                str(data),
                "--split",
                "gallery",
            ]
            assert cli([*argv, "--out", str(gallery)]) == 0
            assert cli(["index", "build", "--features", str(gallery), "--out", str(index)]) == 0
            queries = _queries(data)
            captures = GalleryIndex.load(index).ntotal
            print(f"{preset}: {captures} gallery captures; in-process baseline ...", flush=True)
            base_ms, _ = _in_process(ckpt, index, queries, requests)
            base_p50 = _percentiles(base_ms)[0]
            measured = [("in-process (baseline)", base_ms, 0, sum(base_ms) / 1000)]
            proc, url = _serve(ckpt, index)
            try:
                _burst(url, queries, 4, 1)  # warm-up
                for c in (1, concurrency):
                    print(f"{preset}: {requests} requests over HTTP, {c} at a time ...", flush=True)
                    ms, errors, wall = _burst(url, queries, requests, c)
                    measured.append((f"HTTP, {c} concurrent", ms, errors, wall))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            for mode, ms, errors, wall in measured:
                p50, p90, p99, worst = _percentiles(ms)
                rows.append(
                    f"  {preset:<9} {mode:<28} {len(ms):>8} {errors:>6} {p50:>8.1f} {p90:>8.1f} {p99:>8.1f} "
                    f"{worst:>8.1f} {len(ms) / wall:>7.1f} {p50 / base_p50:>17.2f}x"
                )
            rows.append(f"  {'':<9} ({captures} gallery captures, flat index)")
    lines += rows
    lines += [
        "",
        "latency: from sending the request to reading the JSON answer (client side); the baseline",
        "calls SearchService.search in this process (decode + preprocess + model + index search).",
        "The server runs one model forward at a time (a lock), so under concurrency latency grows with",
        "the queue while requests per second stay those of one forward pass using every core.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--presets", default="demo,rgbnt201")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    presets = [p for p in args.presets.split(",") if p]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    text = run(presets, args.requests, args.concurrency)
    print(text, end="")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_serve.txt").write_text(text)


if __name__ == "__main__":
    main()
