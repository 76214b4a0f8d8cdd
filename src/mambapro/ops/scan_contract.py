"""The selective scan's input contract, shared by its implementations.

:func:`mambapro.ops.selective_scan` checks every call here (:func:`check_scan_inputs`) before it
hands the inputs to a backend, so the backends trust their shapes. The torch backend, the Triton
launch and the export forms read B/C through the same grouped view (:func:`as_groups`); the torch
backend and the export forms also share Δ's preparation (:func:`step_sizes`) and the D/z output
terms (:func:`skip_and_gate`), so the fp32 operations they run are the same ones in the same order.
The literal loop (``scan_reference.py``) uses none of this on purpose: it is the independent
oracle the others are tested against.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["as_groups", "check_scan_inputs", "skip_and_gate", "step_sizes"]


def check_scan_inputs(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
) -> None:
    """Raise ValueError unless the shapes are the scan's: u, delta, z (B, D, L) with L > 0; A (D, N)
    real; B, C (B, N, L) or grouped (B, G, N, L) with G dividing D; D, delta_bias (D,)."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (B, D, L), got shape {tuple(u.shape)}")
    b, d, L = u.shape
    if L == 0:
        raise ValueError(f"selective_scan: u has an empty sequence, shape {tuple(u.shape)}")
    if delta.shape != u.shape:
        raise ValueError(
            f"selective_scan: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}"
        )
    if A.is_complex():
        raise ValueError(
            "selective_scan: complex A is not supported by the torch and triton backends (use real A)"
        )
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (D, N) = ({d}, N), got shape {tuple(A.shape)}")
    n = A.shape[1]
    for name, x in (("B", B), ("C", C)):
        if x.dim() == 2:
            raise ValueError(
                f"selective_scan: time-invariant {name} of shape {tuple(x.shape)} is not supported by the "
                f"torch and triton backends; pass a variable {name} of shape (B, N, L) = ({b}, {n}, {L})"
            )
        ok3 = x.dim() == 3 and tuple(x.shape) == (b, n, L)
        ok4 = x.dim() == 4 and x.shape[0] == b and tuple(x.shape[2:]) == (n, L) and x.shape[1] > 0
        if not (ok3 or ok4):
            raise ValueError(
                f"selective_scan: {name} must be (B, N, L) = ({b}, {n}, {L}) or grouped (B, G, N, L), "
                f"got shape {tuple(x.shape)}"
            )
        if ok4 and d % x.shape[1] != 0:
            raise ValueError(
                f"selective_scan: {name} has {x.shape[1]} groups, which does not divide D = {d} "
                f"(shape {tuple(x.shape)})"
            )
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None and tuple(x.shape) != (d,):
            raise ValueError(f"selective_scan: {name} must be (D,) = ({d},), got shape {tuple(x.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def as_groups(x: Tensor) -> Tensor:
    """B or C as grouped: (B, N, L) -> (B, 1, N, L) (a view); (B, G, N, L) unchanged."""
    return x.unsqueeze(1) if x.dim() == 3 else x


def step_sizes(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> tuple[Tensor, Tensor]:
    """(raw, Δ), both fp32 (B, D, L): raw = delta + delta_bias, Δ = softplus(raw) or raw itself.

    The backward of the torch backend needs ``raw`` for softplus' derivative."""
    raw = delta.float()
    if delta_bias is not None:
        raw = raw + delta_bias.float()[:, None]
    return raw, (F.softplus(raw) if delta_softplus else raw)


def skip_and_gate(y: Tensor, u32: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """The output from the fp32 contraction y = C·h (B, D, L): (y + D ⊙ u) ⊙ SiLU(z), each term
    only when its input is given; fp32 (B, D, L)."""
    if D is not None:
        y = y + u32 * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y
