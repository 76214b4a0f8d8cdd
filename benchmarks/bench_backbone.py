"""Backbone speed: the three modalities as one (3B, L, D) batch vs three passes per block.

The baseline runs the same modules and the same prompt exchange, but sends each modality's
(B, L, D) sequence through every block separately (lock-step over layers, as the exchange
needs). Both are measured in the same run; the table shows the ratio baseline / batched.

    python benchmarks/bench_backbone.py [--threads 2] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from mambapro.config import ModelConfig
from mambapro.models import MODALITIES, MultiModalBackbone, build_backbone


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny preset only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
