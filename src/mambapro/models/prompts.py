"""Multi-modal prompts (Table 4): IP, SP, SRP-Separation and SRP-Fusion (the default).

Per prompted layer l, each modality m ∈ (r, n, t) owns ``N_pr`` learnable prompts ``p_l^m``
(zeros at init). Before layer l the prompt tokens are appended to every modality's sequence;
after it they are taken off again, and the outputs feed the next prompted layer's residual
prompt. The semantics follow the authors' release, which refines the paper's eqs. 5-12:

- **transfer** (SP and SRP): one transfer block per *source* modality,
  ``T_l^m = Linear(D -> D/2) -> act -> Linear(D/2 -> D)``, used residually:
  ``p_l^{m->k} = p_l^m + T_l^m(p_l^m)`` for every target k ≠ m;
- modality k's sequence is ``[cls, patches, group_r, group_n, group_t]``: the groups always in
  r, n, t order, with k's own (possibly residual-refined) prompt ``p_l^k'`` in its own slot;
- **residual, Fusion**: ``p̂`` = mean of the three prompt groups that the previous prompted layer
  output in modality k's sequence; ``p_l^k' = p_l^k + p̂ + RP_l(p̂)`` with one
  ``RP_l = Linear(D -> D/2) -> act -> Linear(D/2 -> D)`` per layer, shared by the modalities;
- **residual, Separation**: one RP per prompt group (slot g ∈ r, n, t), applied to that group's
  output ``p̂_g`` rather than to the mean, then averaged:
  ``p_l^k' = p_l^k + mean_g(p̂_g + RP_l^g(p̂_g))``. The paper only says the residual comes from
  "the prompts of separate modalities" instead of "the fusion of them"; three RP blocks per layer
  is what its 3.55M parameters per layer imply (3 T + 3 RP blocks of 590,976 + 9,216 prompts).
  Averaging keeps the identity part equal to Fusion's (``mean_g p̂_g = p̂``), so the two differ
  only in where RP sees the groups;
- **IP**: modality k's sequence gets only its own ``N_pr`` prompts (no transfer, no residual).

With M modalities (2 to 4; the paper's three) everything above holds with M groups per sequence
and M transfer blocks per layer (M residual blocks for Separation).

At the first prompted layer (and for SP/IP at every layer) ``p' = p``. With non-contiguous
``model.prompt_layers`` the residual input is the output of the most recent prompted layer.
Prompts get no positional embedding and no ``ln_pre``. Parameters per layer at D = 768, N_pr = 4:
IP 9,216; SP 1,782,144; SRP-Separation 3,555,072; SRP-Fusion 2,373,120.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from mambapro.models.adapters import MlpAdapter
from mambapro.parts import PROMPTS

__all__ = [
    "PROMPTS",
    "MultiModalPrompts",
    "PromptFactory",
    "PromptLayer",
    "ip",
    "no_prompts",
    "sp",
    "srp_fusion",
    "srp_separation",
]
RESIDUALS = (None, "fusion", "separation")


def _bottleneck(dim: int, act: str) -> nn.Module:
    # Transfer and residual blocks share PFA's structure at half width: D -> D/2 -> D.
    return MlpAdapter(dim, dim // 2, act)


class PromptLayer(nn.Module):
    """The prompt tokens that one layer appends to the M modalities' sequences.

    Args:
        dim: token width D.
        num_tokens: prompts per modality, ``N_pr``.
        act: activation of the transfer and residual blocks.
        transfer: exchange prompts between modalities (SP, SRP); False: IP.
        residual: ``None``, ``"fusion"`` or ``"separation"``.
        num_modalities: M, the modalities whose sequences get prompts (3 in the paper).
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        act: str,
        transfer: bool,
        residual: str | None,
        num_modalities: int = 3,
    ) -> None:
        super().__init__()
        if residual not in RESIDUALS:
            raise ValueError(f"residual prompt '{residual}' is not one of: {RESIDUALS}")
        if residual is not None and not transfer:
            raise ValueError("a residual prompt needs the transfer (one prompt group per modality)")
        m = num_modalities
        self.num_tokens = num_tokens
        self.groups = m if transfer else 1
        self.prompts = nn.Parameter(torch.zeros(m, num_tokens, dim))
        self.transfer = nn.ModuleList([_bottleneck(dim, act) for _ in range(m)]) if transfer else None
        n_rp = {None: 0, "fusion": 1, "separation": m}[residual]
        self.residual_kind = residual
        self.residual = nn.ModuleList([_bottleneck(dim, act) for _ in range(n_rp)]) if n_rp else None
        # Which group slot of which modality's sequence holds that modality's own prompt.
        self.register_buffer("_own_slot", torch.eye(m, dtype=torch.bool), persistent=False)

    def _own(self, batch: int, previous: Tensor | None) -> Tensor:
        """Each modality's own prompt ``p^k'``: ``(M, B, N, D)``."""
        p = self.prompts.unsqueeze(1)  # (M, 1, N, D)
        if self.residual is None or previous is None:
            return p.expand(-1, batch, -1, -1)
        if self.residual_kind == "fusion":
            hat = previous.mean(dim=2)  # (M, B, N, D)
            return p + hat + self.residual[0](hat)
        refined = [previous[:, :, g] + rp(previous[:, :, g]) for g, rp in enumerate(self.residual)]
        return p + torch.stack(refined, dim=2).mean(dim=2)

    def forward(self, batch: int, previous: Tensor | None = None) -> Tensor:
        """The prompt groups of every modality's sequence: ``(M, B, G, N, D)``.

        ``previous``: the prompt outputs of the last prompted layer, ``(M, B, G, N, D)``, or None.
        Index 0 is the modality whose sequence it is (r, n, t), index 2 the group slot.
        """
        own = self._own(batch, previous)
        if self.transfer is None:
            return own.unsqueeze(2)
        transferred = torch.stack(
            [self.prompts[m] + t(self.prompts[m]) for m, t in enumerate(self.transfer)]
        )  # (M, N, D): p^{m->k}, the same for every target k ≠ m
        mask = self._own_slot[:, None, :, None, None]  # (M, 1, M, 1, 1)
        return torch.where(mask, own.unsqueeze(2), transferred[None, None])


class MultiModalPrompts(nn.Module):
    """The prompt layers of one variant, keyed by the (0-based) block index they precede."""

    def __init__(
        self,
        dim: int,
        layers: Sequence[int],
        num_tokens: int,
        act: str,
        transfer: bool,
        residual: str | None,
        num_modalities: int = 3,
    ) -> None:
        super().__init__()
        if num_tokens <= 0:
            raise ValueError(f"model.prompt_tokens = {num_tokens} must be a positive integer")
        self.layer_indices = tuple(sorted(set(int(i) for i in layers)))
        self.num_tokens = num_tokens
        self.groups = num_modalities if transfer else 1
        self.layers = nn.ModuleDict(
            {
                str(i): PromptLayer(dim, num_tokens, act, transfer, residual, num_modalities)
                for i in self.layer_indices
            }
        )

    def get(self, layer: int) -> PromptLayer | None:
        """The prompts that enter before block ``layer``, or None."""
        key = str(layer)
        return self.layers[key] if key in self.layers else None  # type: ignore[return-value]


class PromptFactory(Protocol):
    def __call__(
        self, dim: int, *, layers: Sequence[int], num_tokens: int, act: str, num_modalities: int = 3
    ) -> MultiModalPrompts | None: ...


# The ``model.prompt`` constructors: ``mambapro.parts.PROMPTS`` names each of them (lazily).


def no_prompts(
    dim: int, *, layers: Sequence[int], num_tokens: int, act: str, num_modalities: int = 3
) -> None:
    """``none``: no prompts."""
    return None


def ip(
    dim: int, *, layers: Sequence[int], num_tokens: int, act: str, num_modalities: int = 3
) -> MultiModalPrompts:
    """``ip``: independent prompts, no transfer."""
    return MultiModalPrompts(
        dim, layers, num_tokens, act, transfer=False, residual=None, num_modalities=num_modalities
    )


def sp(
    dim: int, *, layers: Sequence[int], num_tokens: int, act: str, num_modalities: int = 3
) -> MultiModalPrompts:
    """``sp``: synergistic prompts (transfer between modalities)."""
    return MultiModalPrompts(
        dim, layers, num_tokens, act, transfer=True, residual=None, num_modalities=num_modalities
    )


def srp_separation(
    dim: int, *, layers: Sequence[int], num_tokens: int, act: str, num_modalities: int = 3
) -> MultiModalPrompts:
    """``srp_separation``: SP with one residual block per prompt group."""
    return MultiModalPrompts(
        dim, layers, num_tokens, act, transfer=True, residual="separation", num_modalities=num_modalities
    )


def srp_fusion(
    dim: int, *, layers: Sequence[int], num_tokens: int, act: str, num_modalities: int = 3
) -> MultiModalPrompts:
    """``srp_fusion``: SP with one residual block on the fused groups (the paper's SRP)."""
    return MultiModalPrompts(
        dim, layers, num_tokens, act, transfer=True, residual="fusion", num_modalities=num_modalities
    )
