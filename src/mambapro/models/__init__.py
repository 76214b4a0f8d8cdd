"""The MambaPro network and its parts: image encoders, weight loading, adapters, prompts, the
multi-modal backbone.

Entry points: :func:`build_model` (the full network: backbone + aggregator + heads),
:func:`build_backbone` (the configured multi-modal backbone) and :func:`clip_image_encoder` (the
plain CLIP ViT-B/16 image encoder). The registries
``BACKBONES``, ``ADAPTERS`` and ``PROMPTS`` (re-exported from ``mambapro.parts``, where their
names live without torch) hold one constructor per config value, loaded on first use.
"""

from mambapro.models.adapters import ADAPTERS, LoRAAdapter, MlpAdapter
from mambapro.models.backbone import (
    BACKBONES,
    MODALITIES,
    MultiModalBackbone,
    build_backbone,
    clip_image_encoder,
)
from mambapro.models.clip_vit import QuickGELU, ResidualAttentionBlock, VisionTransformer
from mambapro.models.mambapro import BNNeckHead, MambaPro, build_model
from mambapro.models.prompts import PROMPTS, MultiModalPrompts, PromptLayer
from mambapro.models.vit_imagenet import imagenet_vit, load_timm_vit_state_dict
from mambapro.models.weights import (
    load_clip_state_dict,
    load_encoder_state_dict,
    read_checkpoint,
    read_torchscript_tensors,
    resize_pos_embed,
)

__all__ = [
    "ADAPTERS",
    "BACKBONES",
    "BNNeckHead",
    "MODALITIES",
    "PROMPTS",
    "LoRAAdapter",
    "MambaPro",
    "MlpAdapter",
    "MultiModalBackbone",
    "MultiModalPrompts",
    "PromptLayer",
    "QuickGELU",
    "ResidualAttentionBlock",
    "VisionTransformer",
    "build_backbone",
    "build_model",
    "clip_image_encoder",
    "imagenet_vit",
    "load_clip_state_dict",
    "load_encoder_state_dict",
    "load_timm_vit_state_dict",
    "read_checkpoint",
    "read_torchscript_tensors",
    "resize_pos_embed",
]
