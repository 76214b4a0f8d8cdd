"""Attention-based aggregators of Tables 6 and 11: ``transformer`` and ``ma_transformer``.

Both use timm's pre-norm ViT ``Block`` (LayerNorm, multi-head self-attention with qkv bias, MLP
ratio 4, GELU): C·3C + 3C + C·C + C + 2·2C + C·4C + 4C + 4C·C + C = 3,152,384 parameters at
C = 512. The paper's parameter counts (Table 3) pin the structures down:

* ``transformer`` (Table 6): 4,732,928 - 1,580,544 (readout) = 3,152,384 = one block over the
  3·H·W concatenated patch tokens of the three modalities (no positional or modality
  embeddings: their parameters would break the count). At 3 × 128 tokens it costs
  384·12·C² (projections and MLP) + 2·384²·C (attention) = 1.36 G MACs, the paper's 1.36.
* ``ma_transformer`` (Table 11, "MA(Trans)"): 14,190,080 - 1,580,544 = 4 × 3,152,384, i.e. the
  MA layout with each Mamba part replaced by a Transformer block: three intra blocks (one per
  modality, over its own H·W tokens) then one inter block over the 3·H·W concatenation.
  Counted the same way it costs 2.62 G MACs per block, not the paper's 1.81 (which no
  combination of these blocks gives; reported as is).

``depth`` stacks blocks (the paper's rows are depth 1). Heads: C / 64 (8 at C = 512, as in the
authors' attention aggregator), one head when C is not a multiple of 64.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block
from torch import Tensor

from mambapro.aggregation.base import PatchAggregator
from mambapro.ops.init import init_linear_

__all__ = [
    "InterTransformerBlock",
    "MATransformerAggregator",
    "MATransformerBlock",
    "TransformerAggregator",
    "default_num_heads",
]


def default_num_heads(dim: int) -> int:
    """64-wide heads where possible (8 heads at C = 512), else a single head."""
    return dim // 64 if dim % 64 == 0 and dim >= 64 else 1


class InterTransformerBlock(Block):
    """A pre-norm Transformer block over the concatenated (B, 3·H·W, C) patch tokens of the three
    modalities: three (B, H·W, C) tensors -> three (B, H·W, C)."""

    def __init__(self, dim: int, num_heads: int, num_modalities: int = 3) -> None:
        super().__init__(dim, num_heads, mlp_ratio=4.0, qkv_bias=True)
        init_linear_(self)

    def forward(self, patches: list[Tensor]) -> list[Tensor]:  # type: ignore[override]
        out = super().forward(torch.cat(patches, dim=1))
        return list(out.split([p.shape[1] for p in patches], dim=1))


class MATransformerBlock(nn.Module):
    """MA's layout with Transformer blocks: per-modality (intra) blocks, then one inter block."""

    def __init__(self, dim: int, num_heads: int, num_modalities: int = 3) -> None:
        super().__init__()
        self.intra = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(num_modalities)
        )
        init_linear_(self.intra)
        self.inter = InterTransformerBlock(dim, num_heads)

    def forward(self, patches: list[Tensor]) -> list[Tensor]:
        return self.inter([block(p) for block, p in zip(self.intra, patches)])


class _BlockStackAggregator(PatchAggregator):
    """``depth`` blocks of ``block_type`` (patches -> patches) in sequence, then the readout."""

    block_type: type[nn.Module]

    def __init__(
        self,
        dim: int = 512,
        grid: tuple[int, int] = (16, 8),
        depth: int = 1,
        num_heads: int | None = None,
        num_modalities: int = 3,
    ) -> None:
        super().__init__(dim, grid, num_modalities)
        heads = num_heads or default_num_heads(dim)
        self.blocks = nn.ModuleList(self.block_type(dim, heads, num_modalities) for _ in range(depth))

    def mix(self, patches: list[Tensor], grid: tuple[int, int]) -> list[Tensor]:
        for block in self.blocks:
            patches = block(patches)
        return patches


class TransformerAggregator(_BlockStackAggregator):
    """``depth`` Transformer blocks over the 3·H·W concatenated patch tokens, then the readout."""

    block_type = InterTransformerBlock


class MATransformerAggregator(_BlockStackAggregator):
    """``depth`` × (3 intra + 1 inter Transformer blocks), then the readout ("MA(Trans)")."""

    block_type = MATransformerBlock
