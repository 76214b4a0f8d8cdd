"""The ImageNet-pre-trained ViT-B/16 alternative backbone (Table 9), from a local timm checkpoint.

timm's ``vit_base_patch16_224`` is the same pre-norm ViT as CLIP's image tower up to four
details, which ``VisionTransformer``'s flags express: exact (erf) GELU instead of QuickGELU,
LayerNorm epsilon 1e-6, a patch embedding with bias, and no ``ln_pre``. It has no projection:
the backbone's output width is D = 768 (timm's final ``norm`` plays ``ln_post``), so an
aggregator after it works at 768 rather than CLIP's 512. The ImageNet classifier (``head.*``)
is dropped.

The authors' release runs this backbone with two settings that its CLIP path does not have
(both are config keys here, set in ``configs/ablations/table9_vit_*.yaml``):

- stochastic depth 0.1 (``model.drop_path``): ``vit_base_patch16_224(drop_path_rate=0.1)``
  (``modeling/backbones/vit_pytorch.py`` l. 712-713; ``make_model.py`` l. 60 passes
  ``cfg.MODEL.DROP_PATH``, 0.1 in ``config/defaults.py`` l. 44), per block
  ``torch.linspace(0, rate, depth)`` (l. 582) on the MHSA and FFN branches (l. 218-225);
- the camera embedding on every token (``model.camera_tokens: all``):
  ``x + pos_embed + sie_xishu * sie_embed[camera_id]`` (l. 630).

Checkpoints: any file :func:`mambapro.models.weights.read_checkpoint` reads (``torch.save``
state dicts, ``model.safetensors`` from timm's hub folders) in timm's key layout.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from mambapro.errors import WeightsError
from mambapro.models.clip_vit import VisionTransformer
from mambapro.models.weights import (
    read_checkpoint,
    resize_pos_embed,
    strip_prefix,
    timm_to_openai_layout,
    to_fp32,
)

__all__ = ["imagenet_vit", "load_timm_vit_state_dict"]


def imagenet_vit(
    img_size: tuple[int, int] = (224, 224),
    width: int = 768,
    layers: int = 12,
    heads: int = 12,
    patch_size: int = 16,
    drop_path: float = 0.0,
) -> VisionTransformer:
    """A timm-style ImageNet ViT (ViT-B/16 by default) in OpenAI's key layout, without ``proj``;
    ``drop_path``: stochastic depth rate of the last block (0: off; the release uses 0.1)."""
    return VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        width=width,
        layers=layers,
        heads=heads,
        output_dim=None,
        act="gelu",
        ln_eps=1e-6,
        ln_pre=False,
        patch_bias=True,
        drop_path=drop_path,
    )


def load_timm_vit_state_dict(path: str | Path, grid: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """A timm ViT checkpoint renamed to OpenAI's layout (classifier dropped), fp32, with the
    positional grid resized to ``grid`` (bilinear, as for CLIP)."""
    path = Path(path)
    sd = strip_prefix(read_checkpoint(path), "module.")
    if "patch_embed.proj.weight" not in sd:
        raise WeightsError(
            f"{path}: not a timm ViT checkpoint (no 'patch_embed.proj.weight'; first keys: "
            f"{', '.join(list(sd)[:5])})"
        )
    sd = to_fp32(timm_to_openai_layout(sd, keep_head=False))
    if grid is not None:
        sd["positional_embedding"] = resize_pos_embed(sd, grid, path)
    return sd
