"""The literal step-by-step selective scan, the reference the fast implementation is tested against.

It follows mamba-ssm's ``selective_scan_ref`` line by line (materialise exp(ΔA) and ΔBu, loop over
L, let autograd record every step). It is slow and memory-hungry on purpose: it is the obviously
correct baseline used by ``tests/test_scan.py`` and ``benchmarks/bench_scan.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["selective_scan_ref"]


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Same contract as :func:`mambapro.ops.selective_scan`; B, C: (B, N, L) or (B, G, N, L)."""
    dtype_in = u.dtype
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim = u.shape[0], A.shape[0]
    B = B.float()
    C = C.float()
    if B.dim() == 4:  # grouped: repeat each group's B over its D/G channels
        B = B.repeat_interleave(dim // B.shape[1], dim=1)
    if C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    x = A.new_zeros((batch, dim, A.shape[1]), dtype=torch.float32)
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A.float()))
    if B.dim() == 3:
        delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    else:
        delta_b_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    ys = []
    for i in range(u.shape[2]):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]
        if C.dim() == 3:
            y = torch.einsum("bdn,bn->bd", x, C[:, :, i])
        else:
            y = torch.einsum("bdn,bdn->bd", x, C[:, :, :, i])
        ys.append(y)
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D.float()[:, None]
    if z is not None:
        out = out * F.silu(z.float())
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out
