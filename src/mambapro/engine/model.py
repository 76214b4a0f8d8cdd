"""The full MambaPro model: shared backbone, aggregator and the two BNNeck heads (SPEC §3).

``ori`` is the concatenation of the three modalities' cls features (3·C); ``fuse`` is the
aggregator's feature (f_ma). Each head is a BNNeck (BatchNorm1d with a frozen zero bias) and a
bias-free classifier; the losses use the pre-BN feature, the classifier the post-BN one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mambapro.config import Config

__all__ = ["MODALITIES", "BNNeckHead", "MambaPro", "build_model"]

MODALITIES = ("RGB", "NI", "TI")


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
    """Backbone over RGB/NI/TI, optional aggregator, ``ori`` and ``fuse`` heads.

    Args:
        backbone: multi-modal backbone (see ``mambapro.models.build_backbone``).
        aggregator: module mapping three (B, 1 + H·W, C) token tensors to (B, F), or None.
        num_classes: training identities (classifier width).
        test_feature: ``auto`` (fuse when an aggregator exists, else ori), ``ori`` or ``fuse``.
    """

    def __init__(
        self, backbone: nn.Module, aggregator: nn.Module | None, num_classes: int, test_feature: str = "auto"
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.aggregator = aggregator
        c = backbone.out_dim
        self.ori_head = BNNeckHead(3 * c, num_classes)
        self.fuse_head = BNNeckHead(aggregator.out_dim, num_classes) if aggregator is not None else None
        if test_feature == "fuse" and aggregator is None:
            raise ValueError("test.feature=fuse needs an aggregator (model.aggregator is 'none')")
        self.test_feature = "fuse" if (test_feature == "auto" and aggregator is not None) else test_feature
        if self.test_feature == "auto":
            self.test_feature = "ori"

    def features(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Pre-BN features ``ori`` (B, 3·C) and, with an aggregator, ``fuse`` (B, F)."""
        images = {m: batch[m] for m in MODALITIES}
        tokens = self.backbone(images, batch.get("camids"))
        out = {"ori": torch.cat([tokens[m][:, 0] for m in MODALITIES], dim=1)}
        if self.aggregator is not None:
            out["fuse"] = self.aggregator(tokens["RGB"], tokens["NI"], tokens["TI"])
        return out

    def forward(self, batch: dict[str, Any]) -> dict[str, tuple[Tensor, Tensor]] | Tensor:
        """Training: head name -> (pre-BN feature, logits). Eval: the test feature (B, F)."""
        feats = self.features(batch)
        if not self.training:
            return feats[self.test_feature]
        out = {"ori": (feats["ori"], self.ori_head(feats["ori"]))}
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
        return parts


def build_model(cfg: Config, num_classes: int, num_cameras: int) -> MambaPro:
    """Assemble MambaPro from the ``model`` section of ``cfg``."""
    from mambapro.aggregation import build_aggregator
    from mambapro.models import build_backbone

    m = cfg.model
    backbone = build_backbone(m, cfg.img_size(), num_cameras)
    aggregator = None
    if m.aggregator != "none":
        aggregator = build_aggregator(
            m.aggregator,
            dim=backbone.out_dim,
            grid=tuple(backbone.grid),
            depth=m.ma_depth,
            d_state=m.ma_d_state,
            dt_rank=m.ma_dt_rank,
            expand=m.ma_expand,
            bidirectional=m.ma_bidirectional,
            scan_backend=m.scan_backend,
        )
    return MambaPro(backbone, aggregator, num_classes, test_feature=cfg.test.feature)
