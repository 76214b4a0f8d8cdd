"""Mamba Aggregation (MA, the paper's section "Mamba Aggregation", eqs. 13-19).

One MA block is an intra-modality MA followed by an inter-modality MA. Both share one skeleton
(eqs. 13-17): per modality m, ``in_proj_m`` (C -> 2·E, E = expand·C, no bias) splits into x and
z; x goes through a depthwise 3×3 conv + BatchNorm + SiLU on the modality's token grid; a
selective SSM (S6) runs over the sequence; its output is gated by SiLU(z), projected back by one
``out_proj`` (E -> C, no bias) shared by the modalities, and added to the input.
The two differ only in what the SSM sees:

* intra: a separate SSM per modality over its own H·W tokens (eq. 14-15);
* inter: one SSM over the concatenation [x_r; x_n; x_t] of 3·H·W tokens (eq. 16-17).

Parameter counts (C = 512, E = 1024, N = 16, R = dt_rank = 32), which match the paper's Table 3 exactly:

* SSM: x_proj E·(R + 2N) = 65,536; dt_proj R·E + E = 33,792; A_log E·N = 16,384; D E = 1,024;
  LayerNorm(E) 2,048; total 118,784.
* per modality: in_proj C·2E = 1,048,576; conv E·9 + E = 10,240; BatchNorm 2E = 2,048.
* out_proj E·C = 524,288 (one, shared: with one per modality the counts would not match).
* intra = 3·(1,048,576 + 12,288 + 118,784) + 524,288 = 4,063,232;
  inter = 3·(1,048,576 + 12,288) + 118,784 + 524,288 = 3,825,664.
* + readout 1,580,544: Intra-MA 5,643,776, Inter-MA 5,406,208, MA (1 block) 9,469,440,
  MA (2 blocks, the default) 17,358,336.

The structure follows the authors' release (``SS2D_intra`` / ``SS2D_inter``): Δ's bias lives in
``dt_proj.bias`` and is passed to the scan as ``delta_bias`` with softplus, A is S4D-real, and a
bidirectional scan adds a second SSM per sequence run on the time-reversed tokens, summed with
the forward one.

Initialisation (``init``): each SSM is built with Mamba's Δ initialisation (softplus(dt_proj.bias)
log-uniform in 1e-3..1e-1), but the release's aggregator then calls ``self.apply(_init_weights)``
over everything it holds (``modeling/fusion_part/AAM.py``), which re-initialises every
``nn.Linear`` trunc-normal (std 0.02) with zero bias, dt_proj included: the initial step is
softplus(0) ≈ 0.69 for every channel. ``init="release"`` (the default) does the same;
``init="mamba"`` keeps Mamba's Δ init. A_log, D, the depth-wise convs and the norms keep their
own initialisation either way.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from mambapro.aggregation.base import PatchAggregator
from mambapro.ops import SCAN_BACKENDS, selective_scan
from mambapro.ops.init import init_linear_
from mambapro.parts import MA_INITS, MASettings

__all__ = [
    "InterModalityMA",
    "IntraModalityMA",
    "MABlock",
    "MambaAggregator",
    "ModalityConv",
    "SelectiveSSM",
]


class SelectiveSSM(nn.Module):
    """Mamba's S6 over a token sequence, then LayerNorm: (B, L, E) -> (B, L, E).

    Args:
        d_inner: channels E of the sequence (expand × model width).
        d_state: state size N per channel.
        dt_rank: rank R of the Δ projection.
        scan_backend: ``torch``, ``mamba_ssm`` or ``auto`` (see :func:`mambapro.ops.selective_scan`).
        dt_min, dt_max, dt_init_floor: range of the initial step sizes Δ (Mamba's init).
    """

    def __init__(
        self,
        d_inner: int,
        d_state: int = 16,
        dt_rank: int = 32,
        scan_backend: str = "torch",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        if scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"scan_backend = {scan_backend!r} is not one of: {', '.join(SCAN_BACKENDS)}")
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, dt_rank
        self.scan_backend = scan_backend
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        # S4D-real init: A = -(1..N) for every channel, stored as log so A stays negative.
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_linear_(self.x_proj)
        # Mamba's Δ init: weights keep the variance of dt, softplus(bias) ~ LogUniform(dt_min, dt_max).
        dt_min, dt_max, floor = self._dt_range
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus

    def forward(self, x: Tensor) -> Tensor:
        dt, b, c = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # its bias is the scan's delta_bias
        y = selective_scan(
            x.transpose(1, 2),
            dt.transpose(1, 2),
            -torch.exp(self.A_log.float()),
            b.transpose(1, 2),
            c.transpose(1, 2),
            self.D.float(),
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.scan_backend,
        )
        return self.out_norm(y.transpose(1, 2))

    def extra_repr(self) -> str:
        return (
            f"d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, "
            f"backend={self.scan_backend}"
        )


class ScanDirections(nn.Module):
    """A forward SSM, plus a second one over the reversed sequence when bidirectional."""

    def __init__(
        self, d_inner: int, d_state: int, dt_rank: int, bidirectional: bool, scan_backend: str
    ) -> None:
        super().__init__()
        self.forward_ssm = SelectiveSSM(d_inner, d_state, dt_rank, scan_backend)
        self.backward_ssm = SelectiveSSM(d_inner, d_state, dt_rank, scan_backend) if bidirectional else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.forward_ssm(x)
        if self.backward_ssm is not None:
            y = y + self.backward_ssm(x.flip(1)).flip(1)
        return y


class ModalityConv(nn.Module):
    """Depthwise 3×3 conv + BatchNorm + SiLU on a token grid: (B, H·W, E) -> (B, H·W, E) (eq. 13, Θ)."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        b, length, e = x.shape
        h, w = grid
        x = x.transpose(1, 2).reshape(b, e, h, w)  # row-major token order, as the ViT flattens
        x = F.silu(self.bn(self.conv(x)))
        return x.flatten(2).transpose(1, 2)


class _MAMixer(nn.Module):
    """The part shared by intra- and inter-modality MA (eqs. 13-17); subclasses place the SSMs.

    ``ssm_count(M)`` SSMs are built: one per modality (intra) or one over the concatenation (inter).

    Args:
        dim: token width C.
        ma: the settings (``d_state``, ``dt_rank``, ``expand``, ``bidirectional`` and
            ``scan_backend`` apply here); default ``MASettings()``.
        **changes: attributes of ``ma`` to replace (``d_state=4``, ...).
    """

    @staticmethod
    def ssm_count(num_modalities: int) -> int:
        raise NotImplementedError

    def __init__(
        self, dim: int, ma: MASettings | None = None, num_modalities: int = 3, **changes: Any
    ) -> None:
        super().__init__()
        ma = (ma or MASettings()).replace(**changes)
        m = num_modalities
        self.dim, self.d_inner = dim, ma.expand * dim
        self.in_proj = nn.ModuleList(nn.Linear(dim, 2 * self.d_inner, bias=False) for _ in range(m))
        self.conv = nn.ModuleList(ModalityConv(self.d_inner) for _ in range(m))
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)
        init_linear_(self.in_proj, self.out_proj)
        ssms = [
            ScanDirections(self.d_inner, ma.d_state, ma.dt_rank, ma.bidirectional, ma.scan_backend)
            for _ in range(self.ssm_count(m))
        ]
        # A single SSM is stored bare, so that inter-MA's parameter names are ssm.* (no index).
        self.ssm = ssms[0] if len(ssms) == 1 else nn.ModuleList(ssms)

    def scan(self, xs: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError

    def forward(self, tokens: list[Tensor], grid: tuple[int, int]) -> list[Tensor]:
        """M (B, H·W, C) patch tensors -> M (B, H·W, C), residual included."""
        xs, zs = [], []
        for proj, conv, tok in zip(self.in_proj, self.conv, tokens):
            x, z = proj(tok).chunk(2, dim=-1)
            xs.append(conv(x, grid))
            zs.append(z)
        ys = self.scan(xs)
        return [tok + self.out_proj(y * F.silu(z)) for tok, y, z in zip(tokens, ys, zs)]


class IntraModalityMA(_MAMixer):
    """Intra-modality MA: one SSM per modality over its own tokens (eqs. 14-15)."""

    @staticmethod
    def ssm_count(num_modalities: int) -> int:
        return num_modalities

    def scan(self, xs: list[Tensor]) -> list[Tensor]:
        return [ssm(x) for ssm, x in zip(self.ssm, xs)]


class InterModalityMA(_MAMixer):
    """Inter-modality MA: one SSM over the concatenated sequence [x_r; x_n; x_t] (eqs. 16-17)."""

    @staticmethod
    def ssm_count(num_modalities: int) -> int:
        return 1

    def scan(self, xs: list[Tensor]) -> list[Tensor]:
        y = self.ssm(torch.cat(xs, dim=1))
        return list(y.split([x.shape[1] for x in xs], dim=1))


class MABlock(nn.Module):
    """A sequence of MA mixers applied in order (``intra``, ``inter`` or both): patches -> patches."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, tokens: list[Tensor], grid: tuple[int, int]) -> list[Tensor]:
        for part in self.parts:
            tokens = part(tokens, grid)
        return tokens


class MambaAggregator(PatchAggregator):
    """Stacked MA blocks over the patch tokens, then the readout: (B, 1 + H·W, C) × M -> (B, M·C).

    Args:
        dim: token width C.
        grid: (H, W) patch grid of each modality (16×8 for 256×128 inputs, 8×16 for 128×256).
        mode: ``both`` (intra then inter per block, the paper's MA), ``intra`` or ``inter``.
        ma: the settings, default ``MASettings()``: ``depth`` stacked blocks (the paper's default
            MA has 2; its Table 6 rows have 1), the SSM's ``d_state``, ``dt_rank``, ``expand``,
            ``bidirectional`` and ``scan_backend``, and ``init``: ``release`` (every Linear
            trunc-normal std 0.02, zero bias) or ``mamba`` (see the module docstring).
        num_modalities: M, the modalities (3 in the paper).
        **changes: attributes of ``ma`` to replace (``depth=1``, ...).
    """

    MODES = ("both", "intra", "inter")
    INITS = MA_INITS

    def __init__(
        self,
        dim: int = 512,
        grid: tuple[int, int] = (16, 8),
        mode: str = "both",
        ma: MASettings | None = None,
        num_modalities: int = 3,
        **changes: Any,
    ) -> None:
        super().__init__(dim, grid, num_modalities)
        if mode not in self.MODES:
            raise ValueError(f"MA mode = {mode!r} is not one of: {', '.join(self.MODES)}")
        ma = (ma or MASettings()).replace(**changes)
        kinds = {
            "both": (IntraModalityMA, InterModalityMA),
            "intra": (IntraModalityMA,),
            "inter": (InterModalityMA,),
        }
        self.mode = mode
        self.settings = ma
        self.blocks = nn.ModuleList(
            MABlock([kind(dim, ma, num_modalities) for kind in kinds[mode]]) for _ in range(ma.depth)
        )
        self.init = ma.init
        if ma.init == "release":
            init_linear_(self.blocks)

    def mix(self, patches: list[Tensor], grid: tuple[int, int]) -> list[Tensor]:
        for block in self.blocks:
            patches = block(patches, grid)
        return patches
