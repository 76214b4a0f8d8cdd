"""Training-step throughput and peak memory of the full paper model (ViT-B/16, random weights).

Times forward + backward + optimiser steps on synthetic tensors at RGBNT201 geometry
(3 x 256x128 per sample) for three configurations of Table 3 and reports each one's
samples/s and peak memory, with ratios against the CLIP(L)-only baseline (row A) measured
in the same run. On CUDA it uses bf16 autocast and fused attention (SDPA); on CPU fp32. MA's
selective scan runs ``--scan-backend`` (default ``auto``: the Triton kernels on CUDA, the torch
backend on CPU). A row that fails (out of memory, say) is reported and the others still run.

    python benchmarks/bench_train.py                 # CPU, batch 4
    python benchmarks/bench_train.py --device cuda --batch 64
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
import warnings

import torch

from mambapro.config import load_config
from mambapro.models import build_model
from mambapro.ops import resolve_backend
from mambapro.runtime import amp_dtype
from mambapro.train.losses import ReIDLoss
from mambapro.train.optim import build_optimizer

ROWS = {
    "A: CLIP(L) only": ["model.adapter=none", "model.prompt=none", "model.aggregator=none"],
    "F: MambaPro (CLIP(L)+PFA+SRP+MA)": [],
    "G: CLIP(F)+PFA+SRP+MA": ["model.freeze=finetune"],
}


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


#: The GPU target for row F at batch 64 with bf16 autocast, read as 12.5e9 bytes.
TARGET_PEAK_BYTES = 12.5e9


def bench(
    overrides: list[str], batch: int, steps: int, device: torch.device, scan_backend: str = "auto"
) -> dict[str, float]:
    # P x K with at least two identities (batch-hard triplet needs negatives): K = 4 as the paper
    # from batch 8 on, K = 2 for the small CPU batches.
    k = 4 if batch >= 8 else 2
    sizes = [f"data.batch_size={batch}", f"data.num_instances={k}", f"model.scan_backend={scan_backend}"]
    cfg = load_config("rgbnt201", [*overrides, *sizes])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg, num_classes=171, num_cameras=4).to(device)
    opt = build_optimizer(model.named_parameters(), cfg.train)
    loss_fn = ReIDLoss()
    amp = amp_dtype("auto", device)
    h, w = cfg.img_size()
    g = torch.Generator().manual_seed(0)
    inputs = {m: torch.randn(batch, 3, h, w, generator=g).to(device) for m in ("RGB", "NI", "TI")}
    inputs["camids"] = torch.randint(0, 4, (batch,), generator=g).to(device)
    labels = torch.arange(batch, device=device) // k

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = loss_fn(model(inputs), labels)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    step()  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    took = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else _rss_gib()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"samples_s": batch * steps / took, "peak_gib": peak, "trainable_m": trainable / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument(
        "--scan-backend", default="auto", help="model.scan_backend: auto, torch, triton or mamba_ssm"
    )
    ap.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: one row, JSON out
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.row is not None:
        print(json.dumps(bench(ROWS[args.row], args.batch, args.steps, device, args.scan_backend)))
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    threads = torch.get_num_threads()
    backend = resolve_backend(args.scan_backend, device)
    print(
        f"device: {device} ({name}), threads {threads}, batch {args.batch}, steps {args.steps}, "
        f"scan backend {backend}"
    )
    print("peak memory: CUDA max allocated on GPU; process max RSS on CPU (each row in its own process)")
    results = {}
    for label in ROWS:
        # A fresh process per row so each peak-memory figure is that configuration's own.
        cmd = [
            sys.executable,
            __file__,
            "--device",
            args.device,
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--row",
            label,
            "--scan-backend",
            args.scan_backend,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{label}: FAILED (exit {proc.returncode}): {last[:200]}", flush=True)
            print(proc.stderr[-3000:], file=sys.stderr, flush=True)
            continue
        results[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    base = results.get("A: CLIP(L) only")
    print(f"{'configuration':<36}{'trainable M':>12}{'samples/s':>11}{'x A':>7}{'peak GiB':>10}{'x A':>7}")
    for label, r in results.items():
        rel_speed = f"{r['samples_s'] / base['samples_s']:>7.2f}" if base else f"{'-':>7}"
        rel_peak = f"{r['peak_gib'] / base['peak_gib']:>7.2f}" if base else f"{'-':>7}"
        print(
            f"{label:<36}{r['trainable_m']:>12.2f}{r['samples_s']:>11.2f}{rel_speed}"
            f"{r['peak_gib']:>10.2f}{rel_peak}"
        )
    full = results.get("F: MambaPro (CLIP(L)+PFA+SRP+MA)")
    if device.type == "cuda" and full is not None:
        gb = full["peak_gib"] * 2**30 / 1e9
        verdict = "met" if gb * 1e9 <= TARGET_PEAK_BYTES else "NOT met"
        at = "" if args.batch == 64 else f" (measured at batch {args.batch}, the target is for batch 64)"
        print(f"target: row F peak memory <= 12.5 GB at batch 64: {gb:.2f} GB -> {verdict}{at}")
    if len(results) < len(ROWS):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
