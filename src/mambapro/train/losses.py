"""Re-identification losses.

Each head contributes ``ce_weight * CE_ls(logits) + triplet_weight * Triplet(features)`` where
CE_ls is label-smoothing cross-entropy and Triplet mines, for every anchor of the batch, its
hardest positive and hardest negative (batch-hard, Hermans et al. 2017) on the pre-BN feature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TripletLoss", "ReIDLoss", "batch_hard_mining"]


def batch_hard_mining(dist: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Hardest positive and hardest negative distance per anchor.

    Args:
        dist: (B, B) pairwise distances.
        labels: (B,) identity labels.
    Returns:
        (B,) hardest-positive distances and (B,) hardest-negative distances.
    """
    same = labels[:, None] == labels[None, :]
    # An anchor is its own positive at distance 0; that never wins the max over positives
    # unless it has no other positive, where 0 is the honest answer.
    pos = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    neg = dist.masked_fill(same, float("inf")).amin(dim=1)
    if torch.isinf(neg).any():
        raise ValueError("triplet loss needs at least two identities in every batch")
    return pos, neg


class TripletLoss(nn.Module):
    """Batch-hard triplet loss on Euclidean distances.

    ``margin=None`` gives the soft margin ``softplus(d_ap - d_an)`` (the release's default);
    a number gives the hinge ``relu(d_ap - d_an + margin)``.
    """

    def __init__(self, margin: float | None = None) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, feats: Tensor, labels: Tensor) -> Tensor:
        """feats: (B, C) float, labels: (B,) long -> scalar loss."""
        feats = feats.float()
        # clamp keeps the sqrt differentiable for identical features.
        dist = torch.cdist(feats, feats).clamp_min(1e-12)
        d_ap, d_an = batch_hard_mining(dist, labels)
        if self.margin is None:
            return F.softplus(d_ap - d_an).mean()
        return F.relu(d_ap - d_an + self.margin).mean()


class ReIDLoss(nn.Module):
    """Sum over heads of ``ce_weight * CE(eps) + triplet_weight * Triplet``."""

    def __init__(
        self,
        ce_weight: float = 0.25,
        label_smoothing: float = 0.1,
        triplet_weight: float = 1.0,
        triplet_margin: float | None = None,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.label_smoothing = label_smoothing
        self.triplet_weight = triplet_weight
        self.triplet = TripletLoss(triplet_margin)

    def forward(self, outputs: dict[str, tuple[Tensor, Tensor]], labels: Tensor) -> dict[str, Tensor]:
        """outputs: head name -> (pre-BN feature (B, C), logits (B, K)).

        Returns per-term losses and their sum under ``"loss"``.
        """
        terms: dict[str, Tensor] = {}
        for name, (feat, logits) in outputs.items():
            terms[f"{name}_ce"] = self.ce_weight * F.cross_entropy(
                logits.float(), labels, label_smoothing=self.label_smoothing
            )
            terms[f"{name}_tri"] = self.triplet_weight * self.triplet(feat, labels)
        terms["loss"] = torch.stack(list(terms.values())).sum()
        return terms
