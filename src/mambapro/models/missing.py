"""Learned stand-ins for the tokens of a missing modality (beyond the paper).

With ``train.modality_dropout_mode: feature`` a modality that is missing from a sample does not
reach MA as the backbone's tokens of an all-zero image but as learned tokens, one set per
modality, trained by modality dropout. A modality is missing in a sample when its whole input
image is zero: that is how the training loader drops it and how ``test --missing``, ``serve`` and
exported files zero it (after normalisation), so one test-time protocol serves both modes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mambapro.modalities import RGB_NI_TI, ModalitySet

__all__ = ["MissingTokens", "missing_mask"]


def missing_mask(image: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B,) bool: which samples' image is entirely zero (the modality is missing)."""
    return image.flatten(1).abs().amax(dim=1).eq(0)


class MissingTokens(nn.Module):
    """Replace a missing modality's backbone tokens by learned tokens.

    Args:
        num_tokens: tokens per modality the backbone returns (1 + H·W: cls first).
        dim: token width C.
        modalities: the modalities, one learned set each (the paper's RGB, NI, TI by default).

    forward(images, tokens): ``images`` the batch's ``{modality: (B, 3, H, W)}``, ``tokens`` the
    backbone's ``{modality: (B, 1 + H·W, C)}`` -> the same dict with, for each sample whose image
    of a modality is all zeros, that modality's tokens replaced by the learned ``(1 + H·W, C)``.
    """

    def __init__(self, num_tokens: int, dim: int, modalities: ModalitySet = RGB_NI_TI) -> None:
        super().__init__()
        self.keys = modalities.keys
        self.tokens = nn.Parameter(torch.empty(len(modalities), num_tokens, dim))
        nn.init.trunc_normal_(self.tokens, std=0.02)

    def forward(self, images: dict[str, Tensor], tokens: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for i, m in enumerate(self.keys):
            gone = missing_mask(images[m])[:, None, None]
            learned = self.tokens[i].to(tokens[m].dtype).expand_as(tokens[m])
            out[m] = torch.where(gone, learned, tokens[m])
        return out
