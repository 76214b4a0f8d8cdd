"""DINOv2 and DINOv3 ViT encoders, built as options of the package's own ViT, and their checkpoints.

Both are pre-norm ViTs like CLIP's image tower; what differs is expressed by
``VisionTransformer``'s flags, so that adapters, prompts, the camera embedding, freezing and the
aggregators work on them unchanged. Neither has a projection: the output width is D (768 for
ViT-B), and the final ``norm`` plays ``ln_post``.

- **DINOv2** (timm's ``vit_base_patch14_dinov2``, ``vit_base_patch14_reg4_dinov2``): patch 14,
  patch embedding with bias, exact GELU, LayerNorm eps 1e-6, no ``ln_pre``, LayerScale on both
  branches, a learned absolute positional table over cls and a 37 x 37 grid (518 x 518 pre-training
  images), resampled to the input grid with timm's ``resample_abs_pos_embed`` (bicubic, antialiased:
  what timm does to these weights for a model made at another size); the reg4 variant adds four
  register tokens that get no positional embedding.
- **DINOv3** (timm's ``vit_base_patch16_dinov3``, an ``Eva``): patch 16, LayerNorm eps 1e-5, four
  storage (register) tokens, no absolute positional embedding but DINOv3's rotary embedding on the
  patch tokens (period base 100, coordinates normalised per axis, so any grid works without
  resampling), LayerScale, and no bias in the attention's input projection (Meta's ViT-B/16 has a
  k-masked bias that is all zero; timm drops it).

Checkpoints (any file :func:`mambapro.models.weights.read_checkpoint` reads, fp32 afterwards):
timm's key layouts (``model.safetensors`` of timm's hub folders, or a ``torch.save`` state dict),
Meta's original releases (DINOv2 ``dinov2_vitb14_pretrain.pth``, ``dinov2_vitb14_reg4_pretrain.pth``:
``mask_token`` dropped, ``register_tokens``, a positional table that includes the cls position;
DINOv3: ``storage_tokens``, ``ls1.gamma``, ``qkv.bias`` with its ``bias_mask``, the saved rope
``periods``, which are recomputed), and this encoder's own layout (a state dict of
``VisionTransformer``). A file of another architecture fails at loading, naming the first key or
shape that does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from mambapro.errors import WeightsError
from mambapro.models.clip_vit import VisionTransformer
from mambapro.models.weights import (
    read_checkpoint,
    resample_pos_embed_bicubic,
    strip_prefix,
    timm_to_openai_layout,
    to_fp32,
)

__all__ = ["dinov2_vit", "dinov3_vit", "load_dinov2_state_dict", "load_dinov3_state_dict"]

#: timm's LayerScale ``init_values`` of both families (the initial ``gamma`` of a random encoder).
LAYER_SCALE_INIT = 1e-5


def dinov2_vit(
    img_size: tuple[int, int] = (518, 518),
    width: int = 768,
    layers: int = 12,
    heads: int = 12,
    patch_size: int = 14,
    registers: int = 0,
    layer_scale: float = LAYER_SCALE_INIT,
    drop_path: float = 0.0,
) -> VisionTransformer:
    """A DINOv2 ViT (ViT-B/14 by default; ``registers=4``: the reg4 variant) in OpenAI's key
    layout, without ``proj``; ``layer_scale``: the initial LayerScale ``gamma``."""
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
        layer_scale=layer_scale,
        registers=registers,
    )


def dinov3_vit(
    img_size: tuple[int, int] = (256, 256),
    width: int = 768,
    layers: int = 12,
    heads: int = 12,
    patch_size: int = 16,
    registers: int = 4,
    layer_scale: float = LAYER_SCALE_INIT,
    qkv_bias: bool = False,
    drop_path: float = 0.0,
) -> VisionTransformer:
    """A DINOv3 ViT (ViT-B/16 by default) in OpenAI's key layout, without ``proj``: storage
    tokens, rotary position embedding (no absolute one); ``qkv_bias=True``: the ``_qkvb`` variant's
    attention bias, its key third held at zero."""
    return VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        width=width,
        layers=layers,
        heads=heads,
        output_dim=None,
        act="gelu",
        ln_eps=1e-5,
        ln_pre=False,
        patch_bias=True,
        drop_path=drop_path,
        layer_scale=layer_scale,
        registers=registers,
        pos_embed=False,
        rope="dinov3",
        rope_temperature=100.0,
        qkv_bias=qkv_bias,
        mask_k_bias=qkv_bias,
    )


# --------------------------------------------------------------------------- checkpoints


def _not_a_checkpoint(path: Path, family: str, sd: Mapping[str, Tensor]) -> WeightsError:
    return WeightsError(
        f"{path}: no {family} encoder weights found (expected timm's or Meta's "
        f"'patch_embed.proj.weight', or 'conv1.weight'; first keys: {', '.join(list(sd)[:5])})"
    )


def _dinov2_to_openai(sd: Mapping[str, Tensor], path: Path) -> dict[str, Tensor]:
    """timm's or Meta's DINOv2 layout -> OpenAI's, the positional table always over cls + grid."""
    if "patch_embed.proj.weight" not in sd:
        raise _not_a_checkpoint(path, "DINOv2", sd)
    sd = {k: v for k, v in sd.items() if k != "mask_token"}  # masked-image pre-training only
    if "register_tokens" in sd:
        # Meta's reg layout: the table covers cls and patches, the registers are inserted after
        # the positional embedding is added, as here.
        sd["reg_token"] = sd.pop("register_tokens")
    elif "reg_token" in sd and "pos_embed" in sd:
        # timm's reg layout (no_embed_class): the table covers the patches only and the cls
        # position is folded into cls_token; a zero cls row computes exactly that.
        pos = sd["pos_embed"]
        sd["pos_embed"] = torch.cat([pos.new_zeros(*pos.shape[:-2], 1, pos.shape[-1]), pos], dim=-2)
    return timm_to_openai_layout(sd, keep_head=False)


def _dinov3_to_openai(sd: Mapping[str, Tensor], path: Path, qkv_bias: bool) -> dict[str, Tensor]:
    """timm's (``Eva``) or Meta's DINOv3 layout -> OpenAI's; attention biases to ``qkv.bias`` with
    a zero key third, or (``qkv_bias=False``) dropped when they are zero, as timm does."""
    if "patch_embed.proj.weight" not in sd:
        raise _not_a_checkpoint(path, "DINOv3", sd)
    out: dict[str, Tensor] = {}
    biases: dict[str, tuple[Tensor, Tensor, str]] = {}
    for key, value in sd.items():
        # Pre-training only (mask token, the 7B's local-crop norm), or a function of the grid that
        # is recomputed in fp32 (Meta saves the rope periods, in bf16), or the bias mask applied below.
        if key == "mask_token" or key.startswith(("local_cls_norm.", "rope.", "rope_embed.")):
            continue
        if key.endswith(".bias_mask"):
            continue
        if key == "storage_tokens":
            out["reg_token"] = value
        elif key.endswith(".attn.qkv.bias"):  # Meta: the key third is masked out at run time
            q, _, v = value.chunk(3, dim=-1)
            biases[key[: -len(".qkv.bias")]] = (q, v, key)
        elif key.endswith(".attn.q_bias"):  # timm's _qkvb models: the key bias is a zero buffer
            prefix = key[: -len(".q_bias")]
            biases[prefix] = (value, sd.get(f"{prefix}.v_bias", torch.zeros_like(value)), key)
        elif key.endswith(".attn.v_bias") and f"{key[: -len('.v_bias')]}.q_bias" in sd:
            continue
        else:
            out[key] = value
    for prefix, (q, v, key) in biases.items():
        if qkv_bias:
            out[f"{prefix}.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v], dim=-1)
        elif torch.count_nonzero(q) or torch.count_nonzero(v):
            raise WeightsError(
                f"{path}: '{key}' is not zero, but this DINOv3 encoder's attention has no bias "
                f"(timm's vit_base_patch16_dinov3 layout)"
            )
    return timm_to_openai_layout(out, keep_head=False)


def load_dinov2_state_dict(path: str | Path, grid: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """A DINOv2 checkpoint (timm's or Meta's layout, or this encoder's own) in OpenAI's layout,
    fp32, its positional table resampled to ``grid`` (rows, cols) as timm resamples it."""
    path = Path(path)
    sd = strip_prefix(read_checkpoint(path), "module.")
    if "conv1.weight" not in sd:
        sd = _dinov2_to_openai(sd, path)
    sd = to_fp32(sd)
    # A file without a table (a DINOv3 one) is named by the strict loader, at its first wrong key.
    if grid is not None and "positional_embedding" in sd:
        sd["positional_embedding"] = resample_pos_embed_bicubic(sd, grid, path)
    return sd


def load_dinov3_state_dict(
    path: str | Path, grid: tuple[int, int] | None = None, qkv_bias: bool = False
) -> dict[str, Tensor]:
    """A DINOv3 checkpoint (timm's or Meta's layout, or this encoder's own) in OpenAI's layout,
    fp32. ``grid`` is accepted for the readers' common signature: the rotary embedding needs no
    resampling. ``qkv_bias``: the encoder has an attention bias (timm's ``_qkvb`` models)."""
    path = Path(path)
    sd = strip_prefix(read_checkpoint(path), "module.")
    if "conv1.weight" not in sd:
        sd = _dinov3_to_openai(sd, path, qkv_bias)
    return to_fp32(sd)
