"""Data pipeline speed: synthetic generation, per-item decode + augmentation, train loader.

Run on demand (``python benchmarks/bench_data.py [--out benchmarks/results/bench_data.txt]``);
prints a table. Each measurement comes with
a baseline measured in the same run, reported as a ratio, so numbers from a busy or different
machine stay comparable:

* generation of the default synthetic tree vs. only JPEG-encoding the same number of images;
* a train item (decode + joint augmentation) vs. decoding only, and independent vs. joint;
* the train loader with 2 workers vs. 0 workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402
from mambapro.config import DataConfig
from mambapro.data import (
    TripletDataset,
    build_dataset,
    build_train_loader,
    build_train_transform,
    dataset_spec,
    read_triplet,
    synth,
)

NAMES = {"rgbnt201": "RGBNT201", "rgbnt100": "RGBNT100", "msvr310": "MSVR310"}


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--items", type=int, default=64, help="train items timed per repeat")
    ap.add_argument("--batches", type=int, default=6, help="loader batches timed per repeat")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows: list[tuple[str, str, str, str]] = []
    machine = describe()  # the load average before this run adds to it

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fresh = itertools.count()
        made: dict[str, Path] = {}  # layout -> the data root its last timed generation wrote

        for layout, name in NAMES.items():

            def generate(layout: str = layout) -> None:
                # generate refuses to replace a dataset, so every repeat writes a fresh folder.
                made[layout] = root / f"gen{next(fresh)}"
                synth.generate(layout, made[layout])

            t_gen = _time(generate, args.repeats)
            ds = build_dataset(name, made[layout])
            n_files = sum(1 for _ in synth.dataset_dir(layout, made[layout]).rglob("*.jpg"))
            # Baseline: JPEG-encoding the same number of images of the same kind, nothing else.
            first = next(iter(sorted(synth.dataset_dir(layout, made[layout]).rglob("*.jpg"))))
            arr = np.array(Image.open(first))

            def encode_only(arr=arr, n=n_files) -> None:
                for _ in range(n):
                    Image.fromarray(arr).save(root / "enc.jpg", quality=92)

            t_enc = _time(encode_only, args.repeats)
            captures = len(ds.train) + len(ds.gallery)
            rows.append(
                (
                    f"generate {layout} (default size)",
                    f"{t_gen:.2f} s",
                    f"{captures} captures, {n_files} files",
                    f"{t_gen / t_enc:.1f}x JPEG-encode only",
                )
            )

        ds = build_dataset("RGBNT201", made["rgbnt201"])
        cfg = DataConfig()
        size = dataset_spec("RGBNT201").img_size
        items = [(i % len(ds.train), i) for i in range(args.items)]
        joint = TripletDataset(ds.train, ds.name, build_train_transform(cfg, size))
        indep = TripletDataset(ds.train, ds.name, build_train_transform(cfg, size, independent=True))
        t_dec = _time(lambda: [read_triplet(ds.train[i], ds.name) for i, _ in items], args.repeats)
        t_joint = _time(lambda: [joint[it] for it in items], args.repeats)
        t_ind = _time(lambda: [indep[it] for it in items], args.repeats)
        ms = 1000 / args.items
        rows.append(("decode triplet (RGBNT201)", f"{t_dec * ms:.2f} ms", "per item", "1.0x (baseline)"))
        rows.append(
            (
                "decode + joint train aug",
                f"{t_joint * ms:.2f} ms",
                "per item",
                f"{t_joint / t_dec:.2f}x decode",
            )
        )
        rows.append(
            ("decode + independent aug", f"{t_ind * ms:.2f} ms", "per item", f"{t_ind / t_joint:.2f}x joint")
        )

        def run_loader(workers: int) -> float:
            c = dataclasses.replace(cfg, batch_size=32, num_instances=4, num_workers=workers)
            loader = build_train_loader(c, ds, size, seed=0, iters_per_epoch=args.batches)
            it = iter(loader)
            next(it)  # worker start-up is not part of the throughput
            t0 = time.perf_counter()
            for _ in it:
                pass
            return (time.perf_counter() - t0) / (args.batches - 1)

        t0w = min(run_loader(0) for _ in range(args.repeats))
        t2w = min(run_loader(2) for _ in range(args.repeats))
        rows.append(("train loader, 0 workers", f"{t0w * 1000:.0f} ms", "per batch of 32", "1.0x (baseline)"))
        rows.append(
            (
                "train loader, 2 workers",
                f"{t2w * 1000:.0f} ms",
                "per batch of 32",
                f"{t2w / t0w:.2f}x 0 workers",
            )
        )

    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [machine, *("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
