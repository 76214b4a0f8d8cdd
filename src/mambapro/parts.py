"""The model's swappable parts by name, without torch: the one source of every part's name.

Each family is a :class:`~mambapro.registry.Registry` whose entries are lazy
``"module:attribute"`` paths to the constructors in the torch modules (``models/``,
``aggregation/``), imported the first time a part is built. The config reads the names from
here to check ``model.backbone``, ``model.adapter``, ``model.prompt``, ``model.aggregator``,
``model.adapter_act`` and ``model.prompt_act`` before torch is imported; ``models`` and
``aggregation`` build through the same registries. Adding a part is one line here (or one
``register``/``register_lazy`` call at run time, e.g. from a plug-in) and its constructor:
the config accepts the new name with no second edit.

Also here, for the same reason: the smaller vocabularies of the model modules (adapter
positions, camera tokens, heads, ...), the selective-scan backends, and :class:`MASettings`,
the aggregator's settings (``model.ma_*``, ``model.scan_backend``) as one typed value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from mambapro.registry import Registry

if TYPE_CHECKING:
    from mambapro.config import ModelConfig

__all__ = [
    "ACTIVATIONS",
    "ADAPTERS",
    "ADAPTER_POSITIONS",
    "AGGREGATORS",
    "BACKBONES",
    "CAMERA_TOKENS",
    "EXPORT_FORMS",
    "FREEZE_MODES",
    "MA_INITS",
    "NECK_FEATS",
    "ORI_HEADS",
    "PROMPTS",
    "SCAN_BACKENDS",
    "TEST_FEATURES",
    "BackboneInfo",
    "MASettings",
]

Factory = Callable[..., Any]

# --------------------------------------------------------------------------- backbones


@dataclass(frozen=True)
class BackboneInfo:
    """What is known of a backbone without building it: its encoder's number of blocks and its
    patch size. The config checks ``model.adapter_layers`` / ``model.prompt_layers`` and
    ``data.img_size`` against them; the constructors build their encoders from them."""

    layers: int
    patch_size: int = 16


#: ``model.backbone``: constructors ``(img_size, weights) -> VisionTransformer``
#: (``models/backbone.py``), each with its :class:`BackboneInfo`.
BACKBONES: Registry[Factory] = Registry("backbones")
BACKBONES.register_lazy("clip_vit_b16", "mambapro.models.backbone:clip_vit_b16", info=BackboneInfo(layers=12))
BACKBONES.register_lazy(
    "vit_b16_imagenet", "mambapro.models.backbone:vit_b16_imagenet", info=BackboneInfo(layers=12)
)
BACKBONES.register_lazy("tiny", "mambapro.models.backbone:tiny", info=BackboneInfo(layers=4))
BACKBONES.register_lazy(
    "dinov2_vitb14", "mambapro.models.backbone:dinov2_vitb14", info=BackboneInfo(layers=12, patch_size=14)
)
BACKBONES.register_lazy(
    "dinov2_vitb14_reg4",
    "mambapro.models.backbone:dinov2_vitb14_reg4",
    info=BackboneInfo(layers=12, patch_size=14),
)
BACKBONES.register_lazy(
    "dinov3_vitb16", "mambapro.models.backbone:dinov3_vitb16", info=BackboneInfo(layers=12, patch_size=16)
)
BACKBONES.register_lazy(
    "tiny_dinov2", "mambapro.models.backbone:tiny_dinov2", info=BackboneInfo(layers=4, patch_size=14)
)
BACKBONES.register_lazy(
    "tiny_dinov3", "mambapro.models.backbone:tiny_dinov3", info=BackboneInfo(layers=4, patch_size=16)
)

#: ``model.freeze``: train only adapters, prompts and camera (CLIP(L)) or everything (CLIP(F)).
FREEZE_MODES = ("frozen", "finetune")
#: ``model.camera_tokens``: the tokens the camera embedding is added to (``models/clip_vit.py``).
CAMERA_TOKENS = ("cls", "all")

# --------------------------------------------------------------------------- adapters, prompts

#: ``model.adapter``: constructors ``(dim, *, act, lora_rank, lora_alpha) -> module | None``
#: (``models/adapters.py``).
ADAPTERS: Registry[Factory] = Registry("adapters")
ADAPTERS.register_lazy("none", "mambapro.models.adapters:no_adapter")
ADAPTERS.register_lazy("pfa", "mambapro.models.adapters:pfa")
ADAPTERS.register_lazy("bna", "mambapro.models.adapters:bna")
ADAPTERS.register_lazy("lora", "mambapro.models.adapters:lora")

#: ``model.adapter_position``: where an adapter sits in a block (Table 8), beside (parallel to)
#: or behind (after) a sub-layer (``models/clip_vit.py``).
ADAPTER_POSITIONS = ("side_ffn", "behind_ffn", "side_mhsa", "behind_mhsa")

#: ``model.prompt``: constructors ``(dim, *, layers, num_tokens, act) -> module | None``
#: (``models/prompts.py``).
PROMPTS: Registry[Factory] = Registry("prompts")
PROMPTS.register_lazy("none", "mambapro.models.prompts:no_prompts")
PROMPTS.register_lazy("ip", "mambapro.models.prompts:ip")
PROMPTS.register_lazy("sp", "mambapro.models.prompts:sp")
PROMPTS.register_lazy("srp_separation", "mambapro.models.prompts:srp_separation")
PROMPTS.register_lazy("srp_fusion", "mambapro.models.prompts:srp_fusion")

#: ``model.adapter_act``, ``model.prompt_act``: activation modules, built without arguments
#: (``models.clip_vit.make_act``).
ACTIVATIONS: Registry[Factory] = Registry("activations")
ACTIVATIONS.register_lazy("quick_gelu", "mambapro.models.clip_vit:QuickGELU")  # CLIP, the release
ACTIVATIONS.register_lazy("gelu", "torch.nn:GELU")  # exact erf GELU, the paper

# --------------------------------------------------------------------------- heads

#: ``model.ori_head``: one BNNeck head on the cls concatenation, or one shared per modality.
ORI_HEADS = ("concat", "per_modality")
#: ``test.neck_feat``: the test feature before or after its head's BatchNorm.
NECK_FEATS = ("before", "after")
#: ``test.feature``: the MA feature when an aggregator exists (auto), the ori concat, or MA's.
TEST_FEATURES = ("auto", "ori", "fuse")
#: ``test.distance``: between L2-normalised features (``evaluation/distance.py``).
DISTANCES = ("euclidean", "cosine")

# --------------------------------------------------------------------------- aggregation

#: ``model.aggregator``: constructors ``(*, dim, grid, ma: MASettings) -> module``
#: (``aggregation/__init__.py``).
AGGREGATORS: Registry[Factory] = Registry("aggregators")
AGGREGATORS.register_lazy("none", "mambapro.aggregation:no_aggregator")
AGGREGATORS.register_lazy("sum", "mambapro.aggregation:sum_aggregator")
AGGREGATORS.register_lazy("concat", "mambapro.aggregation:concat_aggregator")
AGGREGATORS.register_lazy("transformer", "mambapro.aggregation:transformer_aggregator")
AGGREGATORS.register_lazy("intra_ma", "mambapro.aggregation:intra_ma_aggregator")
AGGREGATORS.register_lazy("inter_ma", "mambapro.aggregation:inter_ma_aggregator")
AGGREGATORS.register_lazy("ma", "mambapro.aggregation:ma_aggregator")
AGGREGATORS.register_lazy("ma_transformer", "mambapro.aggregation:ma_transformer_aggregator")

#: ``model.ma_init``: every Linear of MA re-initialised trunc-normal as the authors' AAM
#: (``release``), or Mamba's Δ initialisation kept (``mamba``); ``aggregation/ma.py``.
MA_INITS = ("release", "mamba")
#: Plain-operator scans that exported models use (``ops/scan_export.py``).
EXPORT_FORMS = ("unrolled", "hop", "parallel")
#: ``model.scan_backend``: selective-scan implementations (``ops/selective_scan.py``).
SCAN_BACKENDS = ("torch", "mamba_ssm", "triton", "auto", *EXPORT_FORMS)


@dataclass(frozen=True)
class MASettings:
    """The aggregator's settings as one value: built once from the config
    (:meth:`from_config`), passed whole to ``build_aggregator``, the aggregator factories and
    the MA blocks.

    Attributes:
        depth: stacked blocks (``model.ma_depth``; also the depth of the Transformer
            aggregators; none/sum/concat ignore it).
        d_state: the SSM's state size N (``model.ma_d_state``).
        dt_rank: rank R of the Δ projection (``model.ma_dt_rank``).
        expand: inner width factor, E = expand·C (``model.ma_expand``).
        bidirectional: a second SSM over the reversed tokens (``model.ma_bidirectional``).
        init: one of :data:`MA_INITS` (``model.ma_init``).
        scan_backend: one of :data:`SCAN_BACKENDS` (``model.scan_backend``). The default here is
            ``torch``, the portable reference scan, for aggregators built outside a config; a
            config's default is ``auto``.

    A value that breaks a rule (a non-positive size, an unknown backend or init) raises
    ``ValueError`` naming the attribute.
    """

    depth: int = 2
    d_state: int = 16
    dt_rank: int = 32
    expand: int = 2
    bidirectional: bool = False
    init: str = "release"
    scan_backend: str = "torch"

    #: Attribute -> the ``model`` config key it comes from.
    CONFIG_KEYS: ClassVar[dict[str, str]] = {
        "depth": "ma_depth",
        "d_state": "ma_d_state",
        "dt_rank": "ma_dt_rank",
        "expand": "ma_expand",
        "bidirectional": "ma_bidirectional",
        "init": "ma_init",
        "scan_backend": "scan_backend",
    }

    def __post_init__(self) -> None:
        for key in ("depth", "d_state", "dt_rank", "expand"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} = {value!r} must be a positive integer")
        if self.scan_backend not in SCAN_BACKENDS:
            raise ValueError(
                f"scan_backend = {self.scan_backend!r} is not one of: {', '.join(SCAN_BACKENDS)}"
            )
        if self.init not in MA_INITS:
            raise ValueError(f"MA init = {self.init!r} is not one of: {', '.join(MA_INITS)}")
        object.__setattr__(self, "bidirectional", bool(self.bidirectional))

    @classmethod
    def from_config(cls, model: ModelConfig) -> MASettings:
        """The settings of a config's ``model`` section."""
        return cls(**{attr: getattr(model, key) for attr, key in cls.CONFIG_KEYS.items()})

    def config_items(self) -> dict[str, Any]:
        """``model`` config key -> value (the inverse of :meth:`from_config`)."""
        return {key: getattr(self, attr) for attr, key in self.CONFIG_KEYS.items()}

    def replace(self, **changes: Any) -> MASettings:
        """A copy with ``changes`` (attribute names) applied and checked."""
        return dataclasses.replace(self, **changes) if changes else self
