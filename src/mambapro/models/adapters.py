"""Adapters that transfer a frozen encoder to ReID: PFA (the paper's), BNA and LoRA (Table 5).

An adapter is a small module ``(B, L, D) -> (B, L, D)`` that a block adds to one of its
sub-layers (the block decides where: ``clip_vit.ResidualAttentionBlock``). Sizes scale with the
width D so that the tiny preset gets the same shapes in miniature:

- ``pfa``: Parallel Feed-Forward Adapter, Linear(D -> 2D) -> act -> Linear(2D -> D) with
  biases (ascending then descending: 768 -> 1536 -> 768, 2,361,600 parameters);
- ``bna``: bottleneck adapter, Linear(D -> D/2) -> act -> Linear(D/2 -> D) with biases
  (768 -> 384 -> 768, 590,976 parameters); the paper uses it sequentially, i.e. with
  ``model.adapter_position`` ``behind_ffn`` (``configs/ablations/table5_bna.yaml``);
- ``lora``: Linear(D -> r) -> Linear(r -> D), no bias, no activation (rank 64: 98,304), its
  output scaled by ``alpha / r`` (``model.lora_alpha``, default 1), as the release's
  ``LoRA_Linear`` does (``modeling/clip/LoRA.py`` l. 98, 114 ``scaling = lora_alpha / r``,
  l. 128 ``x @ A^T @ B^T * scaling``): with alpha fixed, a larger rank gets a smaller step.

Initialisation: PFA and BNA as the authors' release (trunc-normal std 0.02, zero bias). LoRA
as its paper: the down projection trunc-normal, the up projection zero, so that a LoRA adapter
starts as the identity of the pre-trained block. (The release's ``LoRA_Linear`` initialises its
down projection ``lora_A`` Kaiming-uniform, ``a = sqrt(5)``, l. 123.)

The factories that :data:`ADAPTERS` (``mambapro.parts``, lazily) names all take
``(dim, *, act, lora_rank, lora_alpha)`` (the ``model.adapter_act``, ``model.lora_rank`` and
``model.lora_alpha`` values) and use what they need; ``none`` returns None.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from mambapro.models.clip_vit import make_act
from mambapro.ops.init import init_linear_
from mambapro.parts import ADAPTERS

__all__ = ["ADAPTERS", "AdapterFactory", "LoRAAdapter", "MlpAdapter", "bna", "lora", "no_adapter", "pfa"]


class MlpAdapter(nn.Module):
    """Linear(dim -> hidden) -> act -> Linear(hidden -> dim), with biases: PFA and BNA."""

    def __init__(self, dim: int, hidden: int, act: str = "quick_gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_act(act)
        self.fc2 = nn.Linear(hidden, dim)
        init_linear_(self)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, L, D)`` -> ``(B, L, D)``."""
        return self.fc2(self.act(self.fc1(x)))


class LoRAAdapter(nn.Module):
    """Low-rank linear branch ``x -> (alpha / rank) * up(down(x))``, without bias or activation.

    ``alpha / rank`` is the release's ``scaling`` (``modeling/clip/LoRA.py`` l. 114, 128).
    """

    def __init__(self, dim: int, rank: int, alpha: float = 1.0) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"model.lora_rank = {rank} must be a positive integer")
        self.rank = rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / rank
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim, bias=False)
        nn.init.trunc_normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, L, D)`` -> ``(B, L, D)``."""
        return self.up(self.down(x)) * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


class AdapterFactory(Protocol):
    def __call__(self, dim: int, *, act: str, lora_rank: int, lora_alpha: float) -> nn.Module | None: ...


# The ``model.adapter`` constructors: ``mambapro.parts.ADAPTERS`` names each of them (lazily).


def no_adapter(dim: int, *, act: str, lora_rank: int, lora_alpha: float) -> None:
    """``none``: no adapter."""
    return None


def pfa(dim: int, *, act: str, lora_rank: int, lora_alpha: float) -> nn.Module:
    """``pfa``: D -> 2D -> D."""
    return MlpAdapter(dim, 2 * dim, act)


def bna(dim: int, *, act: str, lora_rank: int, lora_alpha: float) -> nn.Module:
    """``bna``: D -> D/2 -> D."""
    return MlpAdapter(dim, dim // 2, act)


def lora(dim: int, *, act: str, lora_rank: int, lora_alpha: float) -> nn.Module:
    """``lora``: rank ``lora_rank``, scaled by ``lora_alpha / lora_rank``."""
    return LoRAAdapter(dim, lora_rank, lora_alpha)
