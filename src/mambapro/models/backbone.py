"""The multi-modal backbone: one shared encoder for the dataset's modalities (RGB, NI and TI in
the paper; 2 to 4 of them) with adapters and prompts.

The M modalities share every weight of the encoder, and their sequences have the same
length (prompt groups included), so they run as one ``(M·B, L, D)`` batch through each block:
one pass instead of M, with better use of matrix kernels. The prompt exchange between
modalities happens between blocks, on the prompt slice of that batch (``prompts.py``).

Order in the batch: modality-major, ``[RGB_1..RGB_B, NI_1..NI_B, TI_1..TI_B]``; modality index
0, 1, 2 is r, n, t everywhere (also the prompt group order); other sets in their own order.

Camera embedding (SIE, as the authors' release): a learnable ``(num_cameras, D)`` table
(trunc-normal std 0.02) times ``model.camera_coef``, the same for all modalities of a
sample, added (``model.camera_tokens``) to the cls token only, before the positional embedding
(``cls``, the release's CLIP, ``modeling/clip/model.py`` l. 445-446), or to every image token,
after it (``all``, the release's ImageNet ViT, ``modeling/backbones/vit_pytorch.py`` l. 630).
Prompt tokens, appended later, never get it. A camera the model never saw (a cross-dataset test)
is refused, or with ``unseen_cameras = "mean"`` gets the mean of the learned rows.

Stochastic depth (``model.drop_path``): the encoder's blocks drop their MHSA and FFN branches
at rates rising linearly from 0 to ``model.drop_path`` (``VisionTransformer.set_drop_path``).

Freezing (``model.freeze``): ``frozen`` (CLIP(L)) trains only adapters, prompts and the camera
embedding (the encoder's ``ln_post``, ``proj`` and positional embedding stay frozen too);
``finetune`` (CLIP(F)) trains everything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from mambapro.config import ModelConfig
from mambapro.errors import WeightsError
from mambapro.modalities import MODALITIES, RGB_NI_TI, ModalitySet
from mambapro.models.adapters import ADAPTERS
from mambapro.models.clip_vit import VisionTransformer
from mambapro.models.prompts import PROMPTS, MultiModalPrompts
from mambapro.models.vit_dino import dinov2_vit, dinov3_vit, load_dinov2_state_dict, load_dinov3_state_dict
from mambapro.models.vit_imagenet import imagenet_vit, load_timm_vit_state_dict
from mambapro.models.weights import load_clip_state_dict, load_encoder_state_dict
from mambapro.parts import BACKBONES, CAMERA_TOKENS, FREEZE_MODES

__all__ = [
    "BACKBONES",
    "MODALITIES",
    "MultiModalBackbone",
    "build_backbone",
    "clip_image_encoder",
    "clip_vit_b16",
    "dinov2_vitb14",
    "dinov2_vitb14_reg4",
    "dinov3_vitb16",
    "tiny",
    "tiny_dinov2",
    "tiny_dinov3",
    "vit_b16_imagenet",
]

logger = logging.getLogger(__name__)

EncoderFactory = Callable[[tuple[int, int], "str | Path | None"], VisionTransformer]

# ``model.backbone`` values: ``mambapro.parts.BACKBONES`` names the constructors below (lazily)
# with each one's depth and patch size (``BackboneInfo``), which the constructors build with.


def _build(
    name: str,
    make: Callable[[], VisionTransformer],
    weights: str | Path | None,
    reader: Callable[..., dict[str, Tensor]],
) -> VisionTransformer:
    if weights is None:
        return make()
    # With weights, build on the meta device and take the file's tensors: no random init of
    # 86M parameters that would be overwritten anyway.
    with torch.device("meta"):
        encoder = make()
    try:
        load_encoder_state_dict(encoder, reader(weights, grid=encoder.grid), weights)
    except WeightsError as err:
        # The messages name the file and the key; a file meant for another backbone reads
        # plainly with the backbone it was given to.
        raise WeightsError(f"model.backbone={name}: {err}") from err
    return encoder


def _clip_vit(
    name: str, img_size: tuple[int, int], weights: str | Path | None, width: int, heads: int, output_dim: int
) -> VisionTransformer:
    info = BACKBONES.info(name)
    return _build(
        name,
        lambda: VisionTransformer(
            img_size, info.patch_size, width=width, layers=info.layers, heads=heads, output_dim=output_dim
        ),
        weights,
        load_clip_state_dict,
    )


def clip_vit_b16(img_size: tuple[int, int], weights: str | Path | None = None) -> VisionTransformer:
    """CLIP ViT-B/16 image encoder (D = 768, 12 layers, 12 heads, C = 512), OpenAI weights."""
    return _clip_vit("clip_vit_b16", img_size, weights, width=768, heads=12, output_dim=512)


def vit_b16_imagenet(img_size: tuple[int, int], weights: str | Path | None = None) -> VisionTransformer:
    """ImageNet ViT-B/16 (Table 9) from a timm checkpoint; no projection, so C = D = 768."""
    info = BACKBONES.info("vit_b16_imagenet")
    return _build(
        "vit_b16_imagenet",
        lambda: imagenet_vit(img_size, layers=info.layers, patch_size=info.patch_size),
        weights,
        load_timm_vit_state_dict,
    )


def tiny(img_size: tuple[int, int], weights: str | Path | None = None) -> VisionTransformer:
    """CLIP-style tiny encoder for CPU demos and tests: D = 192, 4 layers, 3 heads, C = 128."""
    return _clip_vit("tiny", img_size, weights, width=192, heads=3, output_dim=128)


def _dino(
    name: str,
    img_size: tuple[int, int],
    weights: str | Path | None,
    make: Callable[..., VisionTransformer],
    load: Callable[..., dict[str, Tensor]],
    **options: object,
) -> VisionTransformer:
    """A DINO encoder ``make`` builds (``dinov2_vit``, ``dinov3_vit``) at the registered depth and
    patch of ``name``, its weights read by ``load``."""
    info = BACKBONES.info(name)
    return _build(
        name,
        lambda: make(img_size, layers=info.layers, patch_size=info.patch_size, **options),
        weights,
        load,
    )


def dinov2_vitb14(img_size: tuple[int, int], weights: str | Path | None = None) -> VisionTransformer:
    """DINOv2 ViT-B/14 (timm's ``vit_base_patch14_dinov2``, Meta's ``dinov2_vitb14``); C = D = 768."""
    return _dino("dinov2_vitb14", img_size, weights, dinov2_vit, load_dinov2_state_dict)


def dinov2_vitb14_reg4(img_size: tuple[int, int], weights: str | Path | None = None) -> VisionTransformer:
    """DINOv2 ViT-B/14 with 4 registers (timm's ``vit_base_patch14_reg4_dinov2``); C = D = 768."""
    return _dino("dinov2_vitb14_reg4", img_size, weights, dinov2_vit, load_dinov2_state_dict, registers=4)


def dinov3_vitb16(img_size: tuple[int, int], weights: str | Path | None = None) -> VisionTransformer:
    """DINOv3 ViT-B/16 (timm's ``vit_base_patch16_dinov3``, Meta's ``dinov3_vitb16``); C = D = 768."""
    return _dino("dinov3_vitb16", img_size, weights, dinov3_vit, load_dinov3_state_dict)


# The tiny DINO encoders train from scratch in demos and tests: LayerScale starts at 1 rather
# than DINO's 1e-5, with which a random encoder's blocks would hardly change their input.
_TINY = {"width": 192, "heads": 3, "layer_scale": 1.0}


def tiny_dinov2(img_size: tuple[int, int], weights: str | Path | None = None) -> VisionTransformer:
    """DINOv2-style tiny encoder for CPU demos and tests: D = C = 192, 4 layers, 3 heads, patch 14."""
    return _dino("tiny_dinov2", img_size, weights, dinov2_vit, load_dinov2_state_dict, **_TINY)


def tiny_dinov3(img_size: tuple[int, int], weights: str | Path | None = None) -> VisionTransformer:
    """DINOv3-style tiny encoder for CPU demos and tests: D = C = 192, 4 layers, 3 heads, patch
    16, 4 storage tokens, rotary position embedding."""
    return _dino("tiny_dinov3", img_size, weights, dinov3_vit, load_dinov3_state_dict, **_TINY)


def _announce_random_init(name: str) -> None:
    # The tiny presets are meant to train from scratch; for pre-trained presets a random encoder
    # is almost always a forgotten ``model.weights``, so it is a warning there.
    level = logging.INFO if name == "tiny" or name.startswith("tiny_") else logging.WARNING
    logger.log(level, "model.backbone=%s: no model.weights given, the encoder is randomly initialised", name)


def clip_image_encoder(
    weights: str | Path | None = None, img_size: tuple[int, int] = (224, 224)
) -> VisionTransformer:
    """The plain CLIP ViT-B/16 image encoder; ``encode(images)`` gives the ``(B, 512)`` embedding
    equal to open_clip's ``encode_image`` on the same weights."""
    if weights is None:
        _announce_random_init("clip_vit_b16")
    return clip_vit_b16(tuple(img_size), weights)


def _check_layers(field: str, layers: Sequence[int] | None, num_layers: int) -> list[int]:
    if layers is None:
        return list(range(num_layers))
    bad = [i for i in layers if not 0 <= int(i) < num_layers]
    if bad:
        raise ValueError(
            f"model.{field} = {list(layers)}: index {bad[0]} is outside the backbone's "
            f"{num_layers} layers (0..{num_layers - 1})"
        )
    return sorted(set(int(i) for i in layers))


class MultiModalBackbone(nn.Module):
    """Shared encoder for the modalities of a set, with adapters (in its blocks) and prompts.

    Args:
        encoder: a :class:`VisionTransformer`, adapters already attached to its blocks.
        prompts: the prompt layers, or None.
        num_cameras: rows of the camera embedding table.
        camera_embedding: learn a camera embedding (SIE).
        camera_coef: its coefficient.
        freeze: ``frozen`` or ``finetune``.
        camera_tokens: ``cls`` (the camera term goes to the cls token) or ``all`` (every token).
        modalities: the modalities, in batch order (the paper's RGB, NI, TI by default); the
            prompts must have been built for as many.

    Attributes: ``out_dim`` (C), ``grid`` ((H/p, W/p), p the patch size), ``num_layers``, ``img_size``,
    ``modalities``, ``unseen_cameras`` (``error``: a camid >= ``num_cameras`` is refused;
    ``mean``: it gets the mean of the learned camera embeddings).
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        prompts: MultiModalPrompts | None,
        num_cameras: int,
        camera_embedding: bool = True,
        camera_coef: float = 1.0,
        freeze: str = "frozen",
        camera_tokens: str = "cls",
        modalities: ModalitySet = RGB_NI_TI,
    ) -> None:
        super().__init__()
        if prompts is not None and prompts.groups not in (1, len(modalities)):
            raise ValueError(
                f"prompts built for {prompts.groups} modalities, the backbone has {len(modalities)}"
            )
        self.modalities = modalities
        self.unseen_cameras = "error"
        if camera_tokens not in CAMERA_TOKENS:
            raise ValueError(
                f"model.camera_tokens = '{camera_tokens}' is not one of: {', '.join(CAMERA_TOKENS)}"
            )
        self.encoder = encoder
        self.prompts = prompts
        self.out_dim = encoder.out_dim
        self.grid = encoder.grid
        self.img_size = encoder.img_size
        self.num_layers = encoder.num_layers
        self.num_cameras = num_cameras
        self.camera_coef = camera_coef
        self.camera_tokens = camera_tokens
        if camera_embedding:
            if num_cameras <= 0:
                raise ValueError(f"the camera embedding needs num_cameras >= 1, got {num_cameras}")
            self.camera_embedding: nn.Parameter | None = nn.Parameter(torch.zeros(num_cameras, encoder.width))
            nn.init.trunc_normal_(self.camera_embedding, std=0.02)
        else:
            self.camera_embedding = None
        self.set_freeze(freeze)

    # ------------------------------------------------------------------ parameters

    def parameter_parts(self) -> dict[str, list[nn.Parameter]]:
        """Disjoint lists covering every parameter: ``backbone`` (the encoder's own weights),
        ``adapters``, ``prompts`` (prompt tokens, transfer and residual blocks), ``camera``."""
        adapters = [p for b in self.encoder.blocks if b.adapter is not None for p in b.adapter.parameters()]
        prompts = list(self.prompts.parameters()) if self.prompts is not None else []
        camera = [self.camera_embedding] if self.camera_embedding is not None else []
        taken = {id(p) for p in (*adapters, *prompts, *camera)}
        backbone = [p for p in self.parameters() if id(p) not in taken]
        return {"backbone": backbone, "adapters": adapters, "prompts": prompts, "camera": camera}

    def set_freeze(self, mode: str) -> None:
        """``frozen``: only adapters, prompts and camera train; ``finetune``: everything trains."""
        if mode not in FREEZE_MODES:
            raise ValueError(f"model.freeze = '{mode}' is not one of: {', '.join(FREEZE_MODES)}")
        for name, params in self.parameter_parts().items():
            for p in params:
                p.requires_grad_(mode == "finetune" or name != "backbone")
        self.freeze = mode

    # ------------------------------------------------------------------ forward

    def _check_inputs(self, images: dict[str, Tensor], camids: Tensor | None) -> int:
        keys = self.modalities.keys
        missing = [m for m in keys if m not in images]
        if missing:
            raise KeyError(f"backbone input lacks modality {missing[0]} (got keys: {', '.join(images)})")
        shape = tuple(images[keys[0]].shape)
        for m in keys:
            s = tuple(images[m].shape)
            if len(s) != 4 or s[1] != 3 or s[2:] != self.img_size or s != shape:
                together = ", ".join(keys[:-1]) + f" and {keys[-1]}"
                raise ValueError(
                    f"images['{m}'] has shape {s}; expected (B, 3, {self.img_size[0]}, {self.img_size[1]}), "
                    f"the same B for {together} ({keys[0]}: {shape})"
                )
        batch = shape[0]
        if camids is not None and self.camera_embedding is not None:
            if tuple(camids.shape) != (batch,):
                raise ValueError(f"camids has shape {tuple(camids.shape)}, expected ({batch},)")
            # The value check reads the data, which a traced graph (torch.export, ONNX) cannot do.
            tracing = torch.compiler.is_compiling()
            top = self.num_cameras if self.unseen_cameras == "error" else None
            if not tracing and batch and (int(camids.min()) < 0 or (top and int(camids.max()) >= top)):
                raise ValueError(
                    f"camids range {int(camids.min())}..{int(camids.max())} is outside the camera "
                    f"embedding's 0..{self.num_cameras - 1}"
                )
        return batch

    def forward(self, images: dict[str, Tensor], camids: Tensor | None = None) -> dict[str, Tensor]:
        """Projected tokens of each modality.

        Args:
            images: modality key (``RGB``, ``NI``, ``TI``) -> ``(B, 3, H, W)``.
            camids: ``(B,)`` 0-based camera ids; None: no camera term (unknown cameras).

        Returns:
            modality key -> ``(B, 1 + H/p * W/p, C)``: ``ln_post`` then ``proj`` of
            every token, cls first, prompt and register tokens removed.
        """
        batch = self._check_inputs(images, camids)
        keys, m = self.modalities.keys, len(self.modalities)
        x = torch.cat([images[k] for k in keys], dim=0)  # (M·B, 3, H, W)
        camera = None
        if self.camera_embedding is not None and camids is not None:
            camera = (self.camera_coef * self.camera_rows(camids)).repeat(m, 1)
        x = self.encoder.embed(x, camera, self.camera_tokens)  # (M·B, 1 + R + HW, D), R register tokens

        previous: Tensor | None = None
        for index, block in enumerate(self.encoder.blocks):
            layer_prompts = self.prompts.get(index) if self.prompts is not None else None
            if layer_prompts is None:
                x = block(x)
                continue
            groups = layer_prompts(batch, previous)  # (M, B, G, N, D)
            n = groups.shape[2] * groups.shape[3]
            x = torch.cat([x, groups.reshape(m * batch, n, -1).to(x.dtype)], dim=1)
            x = block(x)
            previous = x[:, -n:].reshape(groups.shape)
            x = x[:, :-n]

        tokens = self.encoder.project(x)  # (M·B, 1 + HW, C): registers dropped
        # unflatten, not chunk: chunk makes torch.export guard on the batch size.
        return dict(zip(keys, tokens.unflatten(0, (m, -1)).unbind(0)))

    def camera_rows(self, camids: Tensor) -> Tensor:
        """The camera embedding of each camid, ``(B, D)``: its learned row, or for a camid the
        model never saw (>= ``num_cameras``, allowed with ``unseen_cameras = "mean"``) the mean
        of the learned rows."""
        table = self.camera_embedding
        if self.unseen_cameras == "error":
            return table[camids]
        seen = camids < self.num_cameras
        rows = table[camids.clamp(max=self.num_cameras - 1)]
        return torch.where(seen[:, None], rows, table.mean(dim=0, keepdim=True))


def build_backbone(
    model_cfg: ModelConfig,
    img_size: tuple[int, int],
    num_cameras: int,
    modalities: ModalitySet = RGB_NI_TI,
) -> MultiModalBackbone:
    """The multi-modal backbone that ``model_cfg`` describes, for inputs of ``img_size`` (H, W),
    over ``modalities``."""
    img_size = (int(img_size[0]), int(img_size[1]))
    encoder = BACKBONES.build(model_cfg.backbone, img_size, model_cfg.weights)
    if model_cfg.weights is None:
        _announce_random_init(model_cfg.backbone)
    encoder.set_drop_path(model_cfg.drop_path)

    n = encoder.num_layers
    for index in _check_layers("adapter_layers", model_cfg.adapter_layers, n):
        adapter = ADAPTERS.build(
            model_cfg.adapter,
            encoder.width,
            act=model_cfg.adapter_act,
            lora_rank=model_cfg.lora_rank,
            lora_alpha=model_cfg.lora_alpha,
        )
        encoder.blocks[index].set_adapter(adapter, model_cfg.adapter_position)

    prompts = PROMPTS.build(
        model_cfg.prompt,
        encoder.width,
        layers=_check_layers("prompt_layers", model_cfg.prompt_layers, n),
        num_tokens=model_cfg.prompt_tokens,
        act=model_cfg.prompt_act,
        num_modalities=len(modalities),
    )
    return MultiModalBackbone(
        encoder,
        prompts,
        num_cameras=num_cameras,
        camera_embedding=model_cfg.camera_embedding,
        camera_coef=model_cfg.camera_coef,
        freeze=model_cfg.freeze,
        camera_tokens=model_cfg.camera_tokens,
        modalities=modalities,
    )
