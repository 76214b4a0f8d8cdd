"""Attention-based aggregators of Tables 6 and 11: ``transformer`` and ``ma_transformer``.

Both use timm's pre-norm ViT ``Block`` (LayerNorm, multi-head self-attention with qkv bias, MLP
ratio 4, GELU): C·3C + 3C + C·C + C + 2·2C + C·4C + 4C + 4C·C + C = 3,152,384 parameters at
C = 512. The SPEC §5 counts pin the structures down:

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

from mambapro.aggregation.base import PatchAggregator, init_linear_

__all__ = ["MATransformerAggregator", "TransformerAggregator", "default_num_heads"]


def default_num_heads(dim: int) -> int:
    """64-wide heads where possible (8 heads at C = 512), else a single head."""
    return dim // 64 if dim % 64 == 0 and dim >= 64 else 1


def _block(dim: int, num_heads: int) -> Block:
    block = Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True)
    init_linear_(block)
    return block


def _inter(block: nn.Module, patches: list[Tensor]) -> list[Tensor]:
    """Run ``block`` over the concatenated (B, 3·H·W, C) sequence and split it back."""
    out = block(torch.cat(patches, dim=1))
    return list(out.split([p.shape[1] for p in patches], dim=1))


class TransformerAggregator(PatchAggregator):
    """``depth`` Transformer blocks over the 3·H·W concatenated patch tokens, then the readout."""

    def __init__(
        self, dim: int = 512, grid: tuple[int, int] = (16, 8), depth: int = 1, num_heads: int | None = None
    ) -> None:
        super().__init__(dim, grid)
        heads = num_heads or default_num_heads(dim)
        self.blocks = nn.ModuleList(_block(dim, heads) for _ in range(depth))

    def mix(self, patches: list[Tensor], grid: tuple[int, int]) -> list[Tensor]:
        for block in self.blocks:
            patches = _inter(block, patches)
        return patches


class MATransformerBlock(nn.Module):
    """MA's layout with Transformer blocks: per-modality (intra) blocks, then one inter block."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.intra = nn.ModuleList(_block(dim, num_heads) for _ in range(3))
        self.inter = _block(dim, num_heads)

    def forward(self, patches: list[Tensor]) -> list[Tensor]:
        patches = [block(p) for block, p in zip(self.intra, patches)]
        return _inter(self.inter, patches)


class MATransformerAggregator(PatchAggregator):
    """``depth`` × (3 intra + 1 inter Transformer blocks), then the readout ("MA(Trans)")."""

    def __init__(
        self, dim: int = 512, grid: tuple[int, int] = (16, 8), depth: int = 1, num_heads: int | None = None
    ) -> None:
        super().__init__(dim, grid)
        heads = num_heads or default_num_heads(dim)
        self.blocks = nn.ModuleList(MATransformerBlock(dim, heads) for _ in range(depth))

    def mix(self, patches: list[Tensor], grid: tuple[int, int]) -> list[Tensor]:
        for block in self.blocks:
            patches = block(patches)
        return patches
