"""Input pipeline throughput: triplets per second delivered to the train step.

Run on demand: ``python benchmarks/bench_input.py [--out benchmarks/results/bench_input.txt]``.
A synthetic RGBNT201-layout dataset at 256x128 (``mambapro.data.synth.generate``), batch 64
(16 identities x 4), the paper's train augmentation (flip, pad 10 + crop, normalise, erasing,
independent per modality). Each row times ``--batches`` batches after the first (worker start-up
and cache building are not throughput; the cache build is its own row), best of ``--repeats``,
and reports the ratio to today's pipeline with 0 workers measured in the same run:

* today's pipeline (PIL decode + per-item CPU augmentation) with 0 and 2 workers;
* ``data.cache=memory`` (decoded once, per-item CPU augmentation) with 0 and 2 workers;
* ``data.cache=memory`` + ``data.augment_on=device`` with the "device" being this CPU: the
  loader yields uint8, the batch is augmented at once before the train step would run;
* the same on CUDA when a GPU is present (``benchmarks/gpu_check.sh`` runs it there).

Also: decoding one 256x128 JPEG with PIL vs ``torchvision.io.decode_jpeg``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe  # noqa: E402
from mambapro.config import DataConfig  # noqa: E402
from mambapro.data import build_dataset, build_train_loader, synth  # noqa: E402
from mambapro.data.cache import _tv_decode, build_cache  # noqa: E402
from mambapro.data.device_aug import DeviceAugment  # noqa: E402

SIZE = (256, 128)


def _throughput(cfg: DataConfig, ds, batches: int, device: torch.device | None) -> float:
    """Triplets per second delivered by the loader (plus the batched augmentation, on ``device``)."""
    loader = build_train_loader(cfg, ds, SIZE, seed=0, iters_per_epoch=batches + 1)
    aug = DeviceAugment(cfg, SIZE) if cfg.augment_on == "device" else None
    it = iter(loader)

    def deliver(batch):
        if aug is not None:
            batch = {
                k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
            }
            batch = aug(batch)
        return batch

    deliver(next(it))  # worker start-up is not throughput
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 0
    for batch in it:
        out = deliver(batch)
        n += len(out["pids"])
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=6, help="timed batches of 64 per row")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cuda-only", action="store_true", help="only the CUDA rows (and the baseline)")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of this process (loader workers use 1); more stall on a busy small machine",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lines = [describe(f"torchvision {__import__('torchvision').__version__}")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth.generate("rgbnt201", root)  # default: 256x128 images
        ds = build_dataset("RGBNT201", root)
        files = sorted(str(p) for p in (root / "RGBNT201").rglob("*.jpg"))[:150]
        assert Image.open(files[0]).size == (SIZE[1], SIZE[0])

        def per_file(fn) -> float:
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                for f in files:
                    fn(f)
                best = min(best, time.perf_counter() - t0)
            return best / len(files) * 1000

        pil = per_file(lambda f: np.asarray(Image.open(f).convert("RGB")))
        tv = per_file(_tv_decode)
        lines.append(
            f"decode one 256x128 JPEG: PIL {pil:.3f} ms, torchvision.io.decode_jpeg {tv:.3f} ms "
            f"({pil / tv:.2f}x); identical pixels on these files"
        )
        t0 = time.perf_counter()
        cache = build_cache(ds.train, ds.name, SIZE, "bicubic", "memory")
        lines.append(
            f"cache build (memory): {len(cache)} triplets, {cache.nbytes / 2**20:.0f} MiB, "
            f"{time.perf_counter() - t0:.2f} s, decoder {cache.decoder}"
        )
        base = dataclasses.replace(DataConfig(), batch_size=64, num_instances=4)
        rows = [("today's pipeline (PIL decode + CPU aug per item)", "none", "cpu", 0, None)]
        if not args.cuda_only:
            rows += [
                ("today's pipeline (PIL decode + CPU aug per item)", "none", "cpu", 2, None),
                ("data.cache=memory, CPU aug per item", "memory", "cpu", 0, None),
                ("data.cache=memory, CPU aug per item", "memory", "cpu", 2, None),
                ("data.cache=memory + augment_on=device (device = CPU)", "memory", "device", 0, "cpu"),
                ("data.cache=memory + augment_on=device (device = CPU)", "memory", "device", 2, "cpu"),
            ]
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            rows += [
                (f"data.cache=memory + augment_on=device (CUDA, {name})", "memory", "device", 0, "cuda"),
                (f"data.cache=memory + augment_on=device (CUDA, {name})", "memory", "device", 2, "cuda"),
            ]
        table = []
        baseline = None
        for label, cache_mode, aug_on, workers, dev in rows:
            cfg = dataclasses.replace(base, cache=cache_mode, augment_on=aug_on, num_workers=workers)
            device = torch.device(dev) if dev else None
            tps = max(_throughput(cfg, ds, args.batches, device) for _ in range(args.repeats))
            baseline = baseline or tps
            table.append(
                (label, str(workers), f"{tps:.0f}", f"{1000 * 64 / tps:.0f} ms", f"{tps / baseline:.1f}x")
            )
            print(*table[-1], sep="  |  ", flush=True)
    head = (
        "pipeline (batch 64, 256x128, paper augmentation)",
        "workers",
        "triplets/s",
        "per batch",
        "vs row 1",
    )
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(5)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *table]]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
