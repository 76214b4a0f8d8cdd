"""The simple aggregators of Table 6: ``none``, ``sum`` and ``concat``.

The paper gives only rounded sizes for Sum (1.58M params, 0.01 GFLOPs) and Concat (2.37M, 0.10
GFLOPs); the structures here are the ones those numbers pin down:

* ``sum``: the readout heads alone are 1,580,544 = 1.58M parameters, so Sum has no parameters
  of its own: the three modalities' patch tokens are added token by token, and each modality
  reads out ``[cls_m, mean(fused patches)]``. Its MACs are the readouts' 3·2C·C = 1.6M per
  sample, which the paper's table shows as 0.01 (its smallest printed value).
* ``concat``: 2.37M - 1.58M = 0.79M = 3C·C (+ C), a Linear(3C -> C) over the channel-wise
  concatenation of the three modalities' patch tokens; at 128 tokens it costs
  128·3C·C = 0.10 G MACs, exactly the paper's 0.10. With its bias (as nn.Linear has by default)
  Concat has 2,367,488 parameters.
* ``none``: the concatenated cls tokens, no parameters (the "ori" feature).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from mambapro.aggregation.base import PatchAggregator, check_grid, check_num_modalities, split_tokens
from mambapro.ops.init import init_linear_

__all__ = ["ConcatAggregator", "NoAggregator", "SumAggregator"]


class NoAggregator(nn.Module):
    """The concatenated cls tokens [cls_r, cls_n, cls_t]: (B, 1 + H·W, C) × M -> (B, M·C)."""

    def __init__(self, dim: int, grid: tuple[int, int], num_modalities: int = 3) -> None:
        super().__init__()
        self.dim = dim
        self.grid = check_grid(grid)
        self.num_modalities = check_num_modalities(num_modalities)
        self.out_dim = num_modalities * dim

    def forward(self, *tokens: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        grid = self.grid if grid is None else check_grid(grid)
        cls, _ = split_tokens(tokens, self.dim, grid, self.num_modalities)
        return torch.cat(cls, dim=-1)


class SumAggregator(PatchAggregator):
    """Token-wise sum of the modalities' patches, read out with each modality's cls."""

    def mix(self, patches: list[Tensor], grid: tuple[int, int]) -> list[Tensor]:
        fused = patches[0]
        for p in patches[1:]:  # left to right, as r + n + t: the same float sums as before
            fused = fused + p
        return [fused] * len(patches)


class ConcatAggregator(PatchAggregator):
    """Channel-wise concat of the M modalities' patches, Linear(M·C -> C), then the readout."""

    def __init__(self, dim: int, grid: tuple[int, int], num_modalities: int = 3) -> None:
        super().__init__(dim, grid, num_modalities)
        self.fuse = nn.Linear(num_modalities * dim, dim)
        init_linear_(self.fuse)

    def mix(self, patches: list[Tensor], grid: tuple[int, int]) -> list[Tensor]:
        fused = self.fuse(torch.cat(patches, dim=-1))
        return [fused] * len(patches)
