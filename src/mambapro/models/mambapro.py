"""The full MambaPro model: shared backbone, aggregator and the BNNeck heads.

``ori`` is the concatenation of the M modalities' cls features (M·C; M = 3 for RGB, NI and TI,
2 to 4 in general: the model is built for its dataset's modalities, ``model.modalities``);
``fuse`` is the aggregator's feature (f_ma). Each head is a BNNeck (BatchNorm1d with a frozen zero bias) and a
bias-free classifier; the losses use the pre-BN feature, the classifier the post-BN one.

The backbone branch is supervised in one of two ways (``ori_head``, the release's
``MODEL.DIRECT``): ``concat`` puts one head (M·C wide) on the concatenation; ``per_modality``
puts one C-wide head, shared by the modalities, on each modality's cls feature, so RGB, NI and
TI each get their own loss terms (the release on RGBNT100 and MSVR310).

At test time the model returns one feature (``test_feature``), taken before its head's
BatchNorm (``neck_feat="before"``, the release) or after it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mambapro.aggregation import build_aggregator
from mambapro.config import Config
from mambapro.modalities import RGB_NI_TI, ModalitySet
from mambapro.models.backbone import build_backbone
from mambapro.models.missing import MissingTokens
from mambapro.parts import NECK_FEATS, ORI_HEADS, TEST_FEATURES, MASettings

__all__ = ["BNNeckHead", "MambaPro", "build_model"]


class BNNeckHead(nn.Module):
    """BatchNorm1d neck (bias frozen at zero) + bias-free linear classifier.

    Args:
        dim: feature width C.
        num_classes: training identities K.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feat: Tensor) -> Tensor:
        """feat: (B, C) -> logits (B, K)."""
        return self.classifier(self.bn(feat))


class MambaPro(nn.Module):
    """Backbone over the modalities, optional aggregator, the ``ori`` head(s) and the ``fuse`` head.

    Args:
        backbone: multi-modal backbone (see ``mambapro.models.build_backbone``); its
            ``modalities`` are the model's.
        aggregator: module mapping M (B, 1 + H·W, C) token tensors to (B, F), or None.
        num_classes: training identities (classifier width).
        test_feature: ``auto`` (fuse when an aggregator exists, else ori), ``ori`` or ``fuse``.
        ori_head: ``concat`` (one head on the M·C concatenation) or ``per_modality`` (one C-wide
            head shared by the modalities' cls features).
        neck_feat: test feature ``before`` or ``after`` its head's BatchNorm.
        missing_tokens: learned tokens stand in for a missing (all-zero) modality's backbone
            tokens before MA and the ``ori`` head (``train.modality_dropout_mode: feature``).
    """

    ORI_HEADS = ORI_HEADS
    NECK_FEATS = NECK_FEATS
    TEST_FEATURES = TEST_FEATURES

    def __init__(
        self,
        backbone: nn.Module,
        aggregator: nn.Module | None,
        num_classes: int,
        test_feature: str = "auto",
        ori_head: str = "concat",
        neck_feat: str = "before",
        missing_tokens: bool = False,
    ) -> None:
        super().__init__()
        if ori_head not in self.ORI_HEADS:
            raise ValueError(f"model.ori_head = {ori_head!r} is not one of: {', '.join(self.ORI_HEADS)}")
        if neck_feat not in self.NECK_FEATS:
            raise ValueError(f"test.neck_feat = {neck_feat!r} is not one of: {', '.join(self.NECK_FEATS)}")
        if test_feature not in self.TEST_FEATURES:
            raise ValueError(
                f"test.feature = {test_feature!r} is not one of: {', '.join(self.TEST_FEATURES)}"
            )
        if test_feature == "fuse" and aggregator is None:
            raise ValueError("test.feature=fuse needs an aggregator (model.aggregator is 'none')")
        self.backbone = backbone
        self.aggregator = aggregator
        self.modalities: ModalitySet = getattr(backbone, "modalities", RGB_NI_TI)
        m = len(self.modalities)
        if aggregator is not None and getattr(aggregator, "out_dim", None) != m * backbone.out_dim:
            raise ValueError(
                f"the aggregator's out_dim {aggregator.out_dim} is not {m} modalities x {backbone.out_dim}"
            )
        c = backbone.out_dim
        self.ori_mode = ori_head
        self.ori_head = BNNeckHead(m * c if ori_head == "concat" else c, num_classes)
        self.fuse_head = BNNeckHead(aggregator.out_dim, num_classes) if aggregator is not None else None
        if test_feature == "auto":
            test_feature = "fuse" if aggregator is not None else "ori"
        self.test_feature = test_feature
        self.neck_feat = neck_feat
        h, w = backbone.grid
        self.missing = MissingTokens(1 + h * w, c, self.modalities) if missing_tokens else None

    def features(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Pre-BN features ``ori`` (B, M·C) and, with an aggregator, ``fuse`` (B, F)."""
        keys = self.modalities.keys
        images = {m: batch[m] for m in keys if m in batch}  # the backbone names a missing key
        tokens = self.backbone(images, batch.get("camids"))
        if self.missing is not None:
            tokens = self.missing(images, tokens)
        out = {"ori": torch.cat([tokens[m][:, 0] for m in keys], dim=1)}
        if self.aggregator is not None:
            out["fuse"] = self.aggregator(*(tokens[m] for m in keys))
        return out

    def test_time(self, name: str, feat: Tensor) -> Tensor:
        """Head ``name``'s pre-BN feature (B, F) as it is evaluated: unchanged for
        ``neck_feat="before"``, else through its head's BatchNorm (eval statistics)."""
        if self.neck_feat == "before":
            return feat
        if name == "fuse":
            return self.fuse_head.bn(feat)
        if self.ori_mode == "per_modality":
            return torch.cat([self.ori_head.bn(f) for f in feat.chunk(len(self.modalities), dim=1)], dim=1)
        return self.ori_head.bn(feat)

    def forward(self, batch: dict[str, Any]) -> dict[str, tuple[Tensor, Tensor]] | Tensor:
        """Training: head name -> (pre-BN feature, logits), the heads being ``ori`` (concat) or
        one per modality key (``RGB``/``NI``/``TI``; per modality), and ``fuse``. Eval: the test
        feature (B, F)."""
        feats = self.features(batch)
        if not self.training:
            return self.test_time(self.test_feature, feats[self.test_feature])
        if self.ori_mode == "concat":
            out = {"ori": (feats["ori"], self.ori_head(feats["ori"]))}
        else:
            per = feats["ori"].chunk(len(self.modalities), dim=1)
            out = {m: (f, self.ori_head(f)) for m, f in zip(self.modalities.keys, per)}
        if self.fuse_head is not None:
            out["fuse"] = (feats["fuse"], self.fuse_head(feats["fuse"]))
        return out

    def parameter_parts(self) -> dict[str, list[nn.Parameter]]:
        """Disjoint parameter lists: backbone, adapters, prompts, camera, aggregator, heads."""
        parts = {k: list(v) for k, v in self.backbone.parameter_parts().items()}
        parts["aggregator"] = list(self.aggregator.parameters()) if self.aggregator is not None else []
        heads = list(self.ori_head.parameters())
        if self.fuse_head is not None:
            heads += list(self.fuse_head.parameters())
        parts["heads"] = heads
        if self.missing is not None:
            parts["missing"] = list(self.missing.parameters())
        return parts


def build_model(
    cfg: Config, num_classes: int, num_cameras: int, modalities: ModalitySet | None = None
) -> MambaPro:
    """Assemble MambaPro from the ``model`` section of ``cfg`` for ``modalities`` (default: the
    modalities of ``cfg``'s dataset)."""
    m = cfg.model
    modalities = cfg.modalities() if modalities is None else modalities
    backbone = build_backbone(m, cfg.img_size(), num_cameras, modalities)
    aggregator = None
    if m.aggregator != "none":
        aggregator = build_aggregator(
            m.aggregator,
            dim=backbone.out_dim,
            grid=tuple(backbone.grid),
            ma=MASettings.from_config(m),
            num_modalities=len(modalities),
        )
    return MambaPro(
        backbone,
        aggregator,
        num_classes,
        test_feature=cfg.test.feature,
        ori_head=m.ori_head,
        neck_feat=cfg.test.neck_feat,
        missing_tokens=cfg.train.modality_dropout_mode == "feature",
    )
