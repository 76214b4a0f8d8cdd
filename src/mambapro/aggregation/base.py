"""What every aggregator shares: the registry (``mambapro.parts``), the token-shape check and the
readout head.

An aggregator maps the M modalities' projected tokens ``(B, 1 + H·W, C)`` (cls first, then the
H×W patch grid in row-major order; M = 3 in the paper, 2 to 4 in general) to one feature
``(B, M·C)``. All of them except ``none`` are
"mix the patch tokens, then read out": a mixer (sum, concat, Transformer, MA, ...) transforms the
patch tokens, and the readout of eq. 18 turns each modality's
``[cls_m, mean(patches_m)]`` into ``Linear(LayerNorm(·))`` of width C. The readout is the same for
every aggregator, which is how the paper's parameter counts decompose: each row of its Table 3
includes the three readout heads, 3 · (2·2C + 2C·C + C) = 1,580,544 at C = 512.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from mambapro.modalities import MAX_MODALITIES, MIN_MODALITIES, MODALITIES
from mambapro.ops.init import init_linear_
from mambapro.parts import AGGREGATORS

__all__ = [
    "AGGREGATORS",
    "MODALITIES",
    "ModalityReadout",
    "PatchAggregator",
    "TriModalReadout",
    "check_grid",
    "check_num_modalities",
    "split_tokens",
]

# AGGREGATORS (from mambapro.parts): the constructors by ``model.aggregator`` name, each taking
# ``(*, dim, grid, ma, num_modalities)`` (see mambapro.aggregation.build_aggregator).


def check_num_modalities(num: int) -> int:
    """Validate a modality count (2 to 4) and return it."""
    if not isinstance(num, int) or not MIN_MODALITIES <= num <= MAX_MODALITIES:
        raise ValueError(
            f"aggregators take {MIN_MODALITIES} to {MAX_MODALITIES} modalities, got num_modalities = {num!r}"
        )
    return num


def check_grid(grid: tuple[int, int] | list[int]) -> tuple[int, int]:
    """Validate an (H, W) token grid and return it as a tuple of ints."""
    if len(grid) != 2 or any(int(g) != g or g <= 0 for g in grid):
        raise ValueError(f"token grid must be two positive integers (H, W), got {grid!r}")
    return int(grid[0]), int(grid[1])


def split_tokens(
    tokens: tuple[Tensor, ...], dim: int, grid: tuple[int, int], num_modalities: int = 3
) -> tuple[list[Tensor], list[Tensor]]:
    """Check M (B, 1 + H·W, C) token tensors; return their cls tokens (B, C) and patches (B, H·W, C)."""
    if len(tokens) != num_modalities:
        raise ValueError(
            f"the aggregator takes {num_modalities} token tensors (one per modality), got {len(tokens)}"
        )
    h, w = grid
    expected = 1 + h * w
    batch = tokens[0].shape[0] if tokens[0].dim() > 0 else None
    names = MODALITIES if num_modalities == len(MODALITIES) else [f"#{i}" for i in range(num_modalities)]
    for name, x in zip(names, tokens):
        if x.dim() != 3 or x.shape[1] != expected or x.shape[2] != dim or x.shape[0] != batch:
            raise ValueError(
                f"aggregator input '{name}' has shape {tuple(x.shape)}; expected (B, 1 + H*W, C) = "
                f"({batch}, {expected}, {dim}) for the {h}x{w} token grid (cls token first)"
            )
    return [x[:, 0] for x in tokens], [x[:, 1:] for x in tokens]


class ModalityReadout(nn.Module):
    """f = Linear(LayerNorm([cls, mean(patches)])): (B, C) and (B, L, C) -> (B, C) (paper eq. 18)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(2 * dim)
        self.proj = nn.Linear(2 * dim, dim)

    def forward(self, cls: Tensor, patches: Tensor) -> Tensor:
        return self.proj(self.norm(torch.cat([cls, patches.mean(dim=1)], dim=-1)))


class TriModalReadout(nn.Module):
    """One :class:`ModalityReadout` per modality, concatenated to (B, M·C) (paper eq. 19, M = 3)."""

    def __init__(self, dim: int, num_modalities: int = 3) -> None:
        super().__init__()
        self.heads = nn.ModuleList(ModalityReadout(dim) for _ in range(num_modalities))

    def forward(self, cls: list[Tensor], patches: list[Tensor]) -> Tensor:
        return torch.cat([head(c, p) for head, c, p in zip(self.heads, cls, patches)], dim=-1)


class PatchAggregator(nn.Module):
    """Base of the mixing aggregators: check the tokens, mix the patches, read out (B, M·C).

    Subclasses implement :meth:`mix`, which maps the M (B, H·W, C) patch tensors (and the
    (H, W) grid they lie on) to M (B, H·W, C) tensors for the readout.

    ``mixed_taps`` holds one ``nn.Identity`` per modality (RGB, NI, TI) that the mixed patch
    tokens pass through on their way to the readout: the paper's f_ir^M after MA, (B, H·W, C).
    They compute nothing and hold no weights; they are where forward hooks read those tokens
    (``mambapro analyze``: modality alignment after MA, Grad-CAM targets), as timm models
    expose their intermediate features.
    """

    def __init__(self, dim: int, grid: tuple[int, int], num_modalities: int = 3) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"aggregator dim must be positive, got {dim}")
        self.dim = dim
        self.grid = check_grid(grid)
        self.num_modalities = check_num_modalities(num_modalities)
        self.out_dim = num_modalities * dim
        self.readout = TriModalReadout(dim, num_modalities)
        init_linear_(self.readout)
        self.mixed_taps = nn.ModuleList(nn.Identity() for _ in range(num_modalities))

    def mix(self, patches: list[Tensor], grid: tuple[int, int]) -> list[Tensor]:
        raise NotImplementedError

    def forward(self, *tokens: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """(B, 1 + H·W, C) × M, in modality order -> (B, M·C); ``grid`` overrides the built (H, W)
        token grid."""
        grid = self.grid if grid is None else check_grid(grid)
        cls, patches = split_tokens(tokens, self.dim, grid, self.num_modalities)
        mixed = [tap(p) for tap, p in zip(self.mixed_taps, self.mix(patches, grid))]
        return self.readout(cls, mixed)

    def extra_repr(self) -> str:
        extra = f", num_modalities={self.num_modalities}" if self.num_modalities != 3 else ""
        return f"dim={self.dim}, grid={self.grid}{extra}"
