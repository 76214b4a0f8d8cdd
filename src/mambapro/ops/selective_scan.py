"""The selective scan operator (Mamba's S6 recurrence): checks its inputs and runs a backend.

Semantics are those of mamba-ssm's ``selective_scan_fn``, so the CUDA kernel can be
swapped in (``backend='mamba_ssm'``), as can the install-free Triton kernels of
:mod:`mambapro.ops.scan_triton` (``backend='triton'``)::

    Δ = softplus(delta + delta_bias)          (bias and softplus optional)
    h_l = exp(Δ_l A) ⊙ h_{l-1} + Δ_l B_l u_l  (h_{-1} = 0, state (D, N) per sample)
    y_l = C_l · h_l + D ⊙ u_l,   out = y ⊙ SiLU(z)  (D and z optional)

Shapes: ``u, delta, z``: (B, D, L); ``A``: (D, N), real; ``B, C``: (B, N, L), or mamba-ssm's grouped
(B, G, N, L) where group g drives channels ``[g·D/G, (g+1)·D/G)`` (cheap here: it is only a view).
mamba-ssm's time-invariant ``B``/``C`` of shape (D, N) and complex ``A`` are not supported (an
error says so, :func:`mambapro.ops.scan_contract.check_scan_inputs`); MambaPro never uses them.

Backends: ``torch`` (:mod:`mambapro.ops.scan_torch`: a chunked pure-PyTorch scan with a
hand-written backward, any device; its design and measurements are in that module), ``triton``
(:mod:`mambapro.ops.scan_triton`: forward and backward Triton kernels, CUDA tensors; CPU tensors
only under Triton's interpreter), ``mamba_ssm`` (mamba-ssm's CUDA extension) and ``auto``, which
resolves per call (:func:`resolve_backend`): on CUDA tensors ``triton`` when Triton imports, else
``mamba_ssm`` when importable, else ``torch``; on any other device ``torch``. Triton is imported
lazily, on the first call that needs it. ``unrolled`` and ``hop`` are the plain-operator forms of
:mod:`mambapro.ops.scan_export` that exported models carry (forward only in spirit: autograd
records every step).

Precision: the state is accumulated in fp32 whatever the input dtype or autocast state (inputs
are cast to fp32 inside with autocast disabled); the output has ``u``'s dtype, gradients have
their input's dtype, ``last_state`` is fp32, as in mamba-ssm.

FLOPs: ``FlopCounterMode`` counts the torch backend's scan as 2·9·B·L·D·N FLOPs forward and twice
that backward (:mod:`mambapro.ops.scan_flops`, which also gives :func:`selective_scan_macs`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mambapro.ops.scan_contract import check_scan_inputs
from mambapro.ops.scan_export import selective_scan_export
from mambapro.ops.scan_flops import selective_scan_macs
from mambapro.ops.scan_torch import selective_scan_torch
from mambapro.parts import EXPORT_FORMS, SCAN_BACKENDS

__all__ = ["SCAN_BACKENDS", "resolve_backend", "selective_scan", "selective_scan_macs"]


def _mamba_ssm_scan():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def _triton_scan():
    """The Triton backend's entry point, or None when Triton does not import (imported lazily)."""
    try:
        from mambapro.ops.scan_triton import selective_scan_triton
    except ImportError:
        return None
    return selective_scan_triton


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The implementation ``backend`` runs for inputs on ``device``: ``auto`` becomes ``triton`` on
    CUDA when Triton imports, else ``mamba_ssm`` on CUDA when importable, else ``torch``; explicit
    backends are returned unchanged (their availability is checked when they run)."""
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"selective_scan: backend = {backend!r} is not one of: {', '.join(SCAN_BACKENDS)}")
    if backend != "auto":
        return backend
    if torch.device(device).type != "cuda":
        return "torch"
    if _triton_scan() is not None:
        return "triton"
    if _mamba_ssm_scan() is not None:
        return "mamba_ssm"
    return "torch"


def selective_scan(
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
    backend: str = "torch",
    *,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The selective scan with the signature and semantics of mamba-ssm's ``selective_scan_fn``.

    Args:
        u: (B, D, L) input.
        delta: (B, D, L) step sizes Δ (before ``delta_bias`` and softplus).
        A: (D, N) real state matrix (diagonal per channel), typically ``-exp(A_log)``.
        B: (B, N, L) input projection, or grouped (B, G, N, L).
        C: (B, N, L) output projection, or grouped (B, G, N, L).
        D: (D,) skip weight, optional.
        z: (B, D, L) gate; the output is multiplied by SiLU(z), optional.
        delta_bias: (D,) added to Δ before the softplus, optional.
        delta_softplus: apply softplus to Δ.
        return_last_state: also return the final state (B, D, N) in fp32.
        backend: ``torch`` (this implementation), ``triton`` (the Triton kernels of
            :mod:`mambapro.ops.scan_triton`; CUDA tensors, or CPU under ``TRITON_INTERPRET=1``),
            ``mamba_ssm`` (mamba-ssm's CUDA kernel; CUDA tensors and the package are required),
            ``auto`` (see :func:`resolve_backend`), or ``unrolled`` / ``hop``, the plain-operator
            forms that exported models use (:mod:`mambapro.ops.scan_export`).
        chunk_size: time steps per chunk; torch backend default: a cache-sized chunk; triton:
            steps between saved states, rounded down to a power of two, default 32; ignored by
            ``mamba_ssm``.

    Returns:
        out (B, D, L) in ``u``'s dtype, and the last state when ``return_last_state``.
    """
    backend = resolve_backend(backend, u.device)
    if backend == "mamba_ssm":
        kernel = _mamba_ssm_scan()
        if kernel is None:
            raise RuntimeError(
                "selective_scan: backend='mamba_ssm' needs the mamba-ssm package "
                "(mamba_ssm.ops.selective_scan_interface.selective_scan_fn), which is not importable; "
                "use backend='torch' or 'auto'"
            )
        if not u.is_cuda:
            raise RuntimeError(
                f"selective_scan: backend='mamba_ssm' runs only on CUDA tensors, got u on {u.device}; "
                "use backend='torch' or 'auto'"
            )
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"selective_scan: chunk_size must be >= 1, got {chunk_size}")
    if backend in EXPORT_FORMS:
        if return_last_state:
            raise ValueError(f"selective_scan: backend={backend!r} does not return the last state")
        return selective_scan_export(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), form=backend)
    scan = selective_scan_torch
    if backend == "triton":
        scan = _triton_scan()
        if scan is None:
            raise RuntimeError(
                "selective_scan: backend='triton' needs the triton package (it ships with CUDA builds "
                "of torch), which is not importable; use backend='torch' or 'auto'"
            )
    out, last_state = scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), chunk_size)
    return (out, last_state) if return_last_state else out
