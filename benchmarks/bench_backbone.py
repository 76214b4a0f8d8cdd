"""Backbone speed: the three modalities as one (3B, L, D) batch vs three passes per block; and,
with ``--compare``, the encoders against each other.

Default table: the baseline runs the same modules and the same prompt exchange, but sends each
modality's (B, L, D) sequence through every block separately (lock-step over layers, as the
exchange needs). Both are measured in the same run; the table shows the ratio baseline / batched.

``--compare``: forward and forward+backward time and the step's peak memory per triplet (one
sample: RGB + NI + TI) of each encoder as its RGBNT201 preset builds it (adapters, prompts,
camera embedding; frozen, so the backward reaches the adapters and prompts through the encoder),
at the preset's image size (256x128, or 252x126 for a patch of 14), random weights. The peaks
come from one process per encoder, so that each is its own; the times from one process in which
the encoders take turns, round after round, so that a shared machine's changing load reaches
them alike. The CLIP row is the baseline of the ratio columns. The forward MACs per triplet come
from ``mambapro params --flops`` (``backbone_macs``).

    python benchmarks/bench_backbone.py [--threads 2] [--repeats 5] [--quick]
    python benchmarks/bench_backbone.py --compare [--batch 2] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from _machine import describe
from mambapro.config import ModelConfig, load_config
from mambapro.models import MODALITIES, MultiModalBackbone, build_backbone
from mambapro.reports.params import backbone_macs

#: ``--compare``: each encoder under the RGBNT201 preset that uses it (the ImageNet ViT's is
#: Table 9's, with its camera term on every token and drop path 0.1); the first is the baseline.
COMPARED = {
    "clip_vit_b16": "rgbnt201",
    "vit_b16_imagenet": "ablations/table9_vit_l",
    "dinov2_vitb14": "rgbnt201_dinov2",
    "dinov3_vitb16": "rgbnt201_dinov3",
}


def three_pass_forward(backbone: MultiModalBackbone, images: dict[str, Tensor], camids: Tensor) -> dict:
    """The batched forward's result, computed one modality at a time inside every block."""
    enc, prompts = backbone.encoder, backbone.prompts
    batch = camids.shape[0]
    cam = backbone.camera_coef * backbone.camera_embedding[camids]
    xs = [enc.embed(images[m], cam) for m in MODALITIES]
    previous = None
    for index, block in enumerate(enc.blocks):
        layer = prompts.get(index) if prompts is not None else None
        if layer is None:
            xs = [block(x) for x in xs]
            continue
        groups = layer(batch, previous)  # (3, B, G, N, D)
        n = groups.shape[2] * groups.shape[3]
        xs = [block(torch.cat([x, groups[k].reshape(batch, n, -1)], dim=1)) for k, x in enumerate(xs)]
        previous = torch.stack([x[:, -n:] for x in xs]).reshape(groups.shape)
        xs = [x[:, :-n] for x in xs]
    return {m: enc.project(x) for m, x in zip(MODALITIES, xs)}


def _infer(
    forward: Callable, backbone: MultiModalBackbone, images: dict[str, Tensor], camids: Tensor
) -> None:
    with torch.no_grad():
        forward(backbone, images, camids)


def _train(
    forward: Callable, backbone: MultiModalBackbone, images: dict[str, Tensor], camids: Tensor
) -> None:
    out = forward(backbone, images, camids)
    sum(t.float().mean() for t in out.values()).backward()
    backbone.zero_grad(set_to_none=True)


def _time(step: Callable, args: tuple, repeats: int) -> float:
    step(*args)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _step_peak_mib(step: Callable[[], None], device: torch.device) -> float:
    """Peak memory above what was in use before, during one call of ``step``, in MiB: CUDA's
    allocator peak on a GPU; on Linux the process's resident high-water mark, reset first
    (``/proc/self/clear_refs``), against its resident size before."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    status = Path("/proc/self/status")

    def kib(field: str) -> int:
        line = next(ln for ln in status.read_text().splitlines() if ln.startswith(field))
        return int(line.split()[1])

    before = kib("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    step()
    return (kib("VmHWM:") - before) / 1024


Step = Callable[[], None]


def _setup(name: str, batch: int, device: torch.device) -> tuple[dict, Step, Step]:
    """One encoder as its RGBNT201 preset builds it, random weights, with random inputs: its
    description, and its forward and forward+backward steps."""
    logging.getLogger("mambapro.models").setLevel(logging.ERROR)  # "randomly initialised"
    cfg = load_config(COMPARED[name], [f"model.backbone={name}"])
    size = cfg.img_size()
    macs = backbone_macs(cfg)
    torch.manual_seed(0)
    backbone = build_backbone(cfg.model, size, num_cameras=4).to(device).train()
    images = {m: torch.randn(batch, 3, *size, device=device) for m in MODALITIES}
    camids = torch.randint(0, 4, (batch,), device=device)

    def synced(step: Callable) -> Callable[[], None]:
        def run() -> None:
            step(MultiModalBackbone.forward, backbone, images, camids)
            if device.type == "cuda":
                torch.cuda.synchronize()

        return run

    info = {"backbone": name, "size": list(size), "tokens": macs["tokens"], "gmacs": macs["total"] / 1e9}
    return info, synced(_infer), synced(_train)


def peak_one(name: str, batch: int, device: torch.device) -> dict:
    """One encoder's description and its first forward+backward step's peak, in MiB per triplet
    (run in a process of its own: the first step, because after it freed memory stays resident
    in the allocator's pools and a later step's peak would not show in the high-water mark)."""
    info, _, train = _setup(name, batch, device)
    return {**info, "peak_mib": _step_peak_mib(train, device) / batch}


def compare(args: argparse.Namespace) -> int:
    """The ``--compare`` table: each encoder's peak memory in a process of its own; the times in
    this process, the encoders taking turns in every round, so that a change in the machine's
    load reaches all of them alike; the CLIP row is the baseline."""
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "fp32 CPU"
    print(describe())
    print(
        f"encoders as their RGBNT201 presets build them (PFA + SRP-Fusion, frozen), random weights, "
        f"{where}, batch {args.batch} triplets; per triplet (RGB + NI + TI)"
    )
    rows = {}
    for name in COMPARED:
        cmd = [sys.executable, __file__, "--one", name, "--batch", str(args.batch)]
        cmd += ["--threads", str(args.threads), "--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{name}: FAILED (exit {proc.returncode}): {last[:200]}", flush=True)
            return 1
        rows[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = {name: _setup(name, args.batch, device)[1:] for name in COMPARED}
    times: dict[str, dict[str, list[float]]] = {name: {"fwd": [], "train": []} for name in COMPARED}
    for round_ in range(args.repeats + 1):  # round 0 warms up (allocations, kernels)
        for name, (infer, train) in steps.items():
            for mode, step in (("fwd", infer), ("train", train)):
                t = time.perf_counter()
                step()
                if round_:
                    times[name][mode].append((time.perf_counter() - t) * 1e3 / args.batch)
    peak = "CUDA allocator" if device.type == "cuda" else "resident (VmHWM)"
    print(
        f"times: median of {args.repeats} rounds, the encoders in turn; peak: the first fwd+bwd "
        f"step's {peak} memory above what was in use before it, in a process per encoder"
    )
    header = (
        f"{'backbone':<18}{'H x W':>9}{'tokens':>8}{'GMACs':>8}{'fwd ms':>9}{'fwd+bwd ms':>12}"
        f"{'peak MiB':>10}{'x time':>8}{'x MiB':>7}"
    )
    print(header)
    print("-" * len(header))
    base = None
    for name, r in rows.items():
        r["fwd_ms"] = statistics.median(times[name]["fwd"])
        r["train_ms"] = statistics.median(times[name]["train"])
        base = base or r
        h, w = r["size"]
        print(
            f"{name:<18}{f'{h}x{w}':>9}{r['tokens']:>8}{r['gmacs']:>8.1f}{r['fwd_ms']:>9.1f}"
            f"{r['train_ms']:>12.1f}{r['peak_mib']:>10.1f}{r['train_ms'] / base['train_ms']:>8.2f}"
            f"{r['peak_mib'] / base['peak_mib']:>7.2f}"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        "tokens: per image into the first block (cls, registers, patches; each prompted layer "
        "appends 12 prompt tokens); GMACs: forward, per triplet (mambapro params --flops); "
        f"x time, x MiB: fwd+bwd time and peak against the first row; load average at the end {load:.1f}"
    )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (5; --compare: 3)")
    parser.add_argument("--quick", action="store_true", help="tiny preset only")
    parser.add_argument("--compare", action="store_true", help="the encoders against each other")
    parser.add_argument("--batch", type=int, default=2, help="--compare: triplets per step")
    parser.add_argument("--device", default="cpu", help="--compare: cpu or cuda")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one --compare row
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one is not None:
        print(json.dumps(peak_one(args.one, args.batch, torch.device(args.device))))
        return
    if args.compare:
        args.repeats = args.repeats or 3
        raise SystemExit(compare(args))
    args.repeats = args.repeats or 5
    torch.manual_seed(0)

    cases = [("tiny", (128, 64), 16), ("tiny", (128, 64), 64)]
    if not args.quick:
        cases += [("clip_vit_b16", (256, 128), 2), ("clip_vit_b16", (256, 128), 8)]
    print(f"threads={args.threads}, median of {args.repeats}; CLIP(L) + PFA + SRP-Fusion, fp32 CPU")
    header = (
        f"{'backbone':<14}{'H x W':>10}{'B':>5}  {'mode':<9}{'batched ms':>12}{'3-pass ms':>12}{'ratio':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, size, batch in cases:
        backbone = build_backbone(ModelConfig(backbone=name), size, num_cameras=4)
        images = {m: torch.randn(batch, 3, *size) for m in MODALITIES}
        camids = torch.randint(0, 4, (batch,))
        with torch.no_grad():
            a, b = backbone(images, camids), three_pass_forward(backbone, images, camids)
        assert all(torch.allclose(a[m], b[m], atol=1e-4) for m in MODALITIES), "the two paths disagree"

        for mode, step in (("forward", _infer), ("fwd+bwd", _train)):
            t_batched = _time(step, (MultiModalBackbone.forward, backbone, images, camids), args.repeats)
            t_three = _time(step, (three_pass_forward, backbone, images, camids), args.repeats)
            print(
                f"{name:<14}{f'{size[0]}x{size[1]}':>10}{batch:>5}  {mode:<9}"
                f"{1e3 * t_batched:>12.1f}{1e3 * t_three:>12.1f}{t_three / t_batched:>8.2f}"
            )


if __name__ == "__main__":
    main()
