"""The Grad-CAM figure (paper Figs. 10-11): each modality's feature after MA explained on its
image with ``pytorch-grad-cam`` for the best and worst queries, and the ``grad_cam`` section of
the report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from torch import Tensor, nn

from mambapro.config import Config
from mambapro.data.transforms import channel_stats
from mambapro.reports.analysis.context import Context, save_figure
from mambapro.reports.analysis.features import mixed_taps
from mambapro.retrieval.features import eval_loader

__all__ = ["grad_cam_maps", "grad_cam_section", "plot_grad_cam"]


def _token_grid_transform(grid: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    h, w = grid

    def reshape(tokens: Tensor) -> Tensor:
        # (B, H*W, C) row-major tokens -> (B, C, H, W), the layout Grad-CAM expects.
        return tokens.reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)

    return reshape


class _StackedInput(nn.Module):
    """The model as ``pytorch-grad-cam`` calls it: one (B, 3·M, H, W) tensor, the images of the
    model's M modalities (RGB, NI and TI: 9 channels) stacked on channels, to the modalities'
    features after MA, (B, M·C): the means of their mixed patch tokens, read from the
    aggregator's ``mixed_taps``."""

    def __init__(self, model: nn.Module, camids: Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.camids = camids

    def forward(self, x: Tensor) -> Tensor:
        keys = self.model.modalities.keys
        images = dict(zip(keys, x.chunk(len(keys), dim=1)))
        mixed: list[Tensor | None] = [None] * len(keys)

        def keep(k: int) -> Callable[..., None]:
            def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
                mixed[k] = output

            return hook

        handles = [tap.register_forward_hook(keep(k)) for k, tap in enumerate(mixed_taps(self.model))]
        try:
            self.model.features({**images, "camids": self.camids})
        finally:
            for h in handles:
                h.remove()
        return torch.cat([m.mean(dim=1) for m in mixed], dim=1)


class _ModalityNorm:
    """Grad-CAM target: the L2 norm of modality ``k``'s feature after MA, a (M·C,) row's chunk."""

    def __init__(self, k: int, dim: int) -> None:
        self.k, self.dim = k, dim

    def __call__(self, output: Tensor) -> Tensor:
        return output[self.k * self.dim : (self.k + 1) * self.dim].norm()


def grad_cam_maps(model: nn.Module, batch: dict[str, Any], modality: str) -> np.ndarray:
    """Grad-CAM of ``modality``'s feature after MA for a batch: (B, H, W) maps in [0, 1] at the
    image size. Activations: the modality's mixed patch tokens f_ir^M (the aggregator's
    ``mixed_taps``, reshaped to the token grid); target: the L2 norm of their mean, the
    modality's feature after MA (as ReID Grad-CAMs take the norm of a pooled embedding).

    Not the readout's output f_final^M: the readout normalises [cls, mean(f_ir^M)] with a
    LayerNorm, which is scale-invariant, so for any target behind it the gradient g satisfies
    g·mean(f_ir^M) = -g_cls·cls: the sum of the Grad-CAM map's terms takes the sign of the cls
    token's gradient, and on a trained model whole maps came out negative, i.e. zero after the
    ReLU.
    """
    taps = mixed_taps(model)
    if taps is None:
        raise ValueError("Grad-CAM after MA needs a mixing aggregator (model.aggregator with a readout)")
    keys = model.modalities.keys
    k = keys.index(modality)
    device = next(model.parameters()).device
    x = torch.cat([batch[m].to(device) for m in keys], dim=1)
    camids = batch.get("camids")
    wrapper = _StackedInput(model, camids.to(device) if torch.is_tensor(camids) else None)
    was_training = model.training
    cam = GradCAM(wrapper, [taps[k]], reshape_transform=_token_grid_transform(model.aggregator.grid))
    try:
        with torch.enable_grad():
            maps = cam(x, targets=[_ModalityNorm(k, model.aggregator.dim)] * len(x))
    finally:
        cam.activations_and_grads.release()
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return np.asarray(maps, dtype=np.float32)


def _denormalise(img: Tensor, cfg: Config) -> np.ndarray:
    mean, std = channel_stats(cfg.data.mean, cfg.data.std)
    arr = img.detach().float().cpu().numpy().transpose(1, 2, 0) * np.array(std) + np.array(mean)
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def plot_grad_cam(
    path: Path, images: dict[str, Tensor], maps: dict[str, np.ndarray], row_labels: list[str], cfg: Config
) -> Path:
    """Rows: queries; columns: the modalities of ``images`` in its order (RGB, NI, TI), each image
    with its Grad-CAM overlaid."""
    n = len(row_labels)
    keys = list(images)
    h, w = images[keys[0]].shape[-2:]
    cell = 1.9
    fig = Figure(
        figsize=(len(keys) * cell * w / max(h, w) * 1.6 + 2.2, n * cell * h / max(h, w) * 1.15 + 0.4)
    )
    axes = fig.subplots(n, len(keys), squeeze=False)
    for r in range(n):
        for c, m in enumerate(keys):
            ax = axes[r][c]
            overlay = show_cam_on_image(_denormalise(images[m][r], cfg), maps[m][r], use_rgb=True)
            ax.imshow(overlay, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(m, fontsize=9)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return save_figure(fig, path)


def grad_cam_section(ctx: Context, best: list[int], worst: list[int]) -> None:
    """``gradcam-<label>.png`` of the chosen queries per checkpoint with a mixing aggregator
    (``None`` in the report for one without)."""
    ctx.report["grad_cam"] = {}
    chosen = [*best, *worst]
    if not chosen:
        return
    first = ctx.runs[0]
    q_samples = [ctx.ds.query[i] for i in chosen]
    row_labels = [
        f"{'best' if i in best else 'worst'}\nid {int(first.query.pids[i])}\nAP {100 * first.ap[i]:.0f}%"
        for i in chosen
    ]
    for r in ctx.bar(ctx.runs, "Grad-CAM"):
        if mixed_taps(r.model) is None:
            ctx.report["grad_cam"][r.label] = None
            continue
        batch = _one_batch(eval_loader(r.cfg, q_samples, ctx.ds.spec))
        keys = r.model.modalities.keys
        maps = {m: grad_cam_maps(r.model, batch, m) for m in keys}
        file = f"gradcam-{r.label}.png"
        plot_grad_cam(ctx.out / file, {m: batch[m] for m in keys}, maps, row_labels, r.cfg)
        ctx.report["grad_cam"][r.label] = file
        ctx.figure(
            file,
            f"Grad-CAM after MA: {r.label} (paper Figs. 10-11)",
            "Each modality's feature after MA, best then worst queries: look for heat on the object "
            "(head, clothes, wheels) rather than the background, and for the modalities "
            "highlighting different, complementary regions.",
        )


def _one_batch(loader: Any) -> dict[str, Any]:
    """Every batch of ``loader`` as one (the chosen queries go to Grad-CAM together)."""
    batches = list(loader)
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    return {
        k: torch.cat([b[k] for b in batches]) if torch.is_tensor(v) else [x for b in batches for x in b[k]]
        for k, v in first.items()
    }
