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
resolves per call (:func:`select_backend`): on CUDA tensors ``triton`` when Triton imports, else
``mamba_ssm`` when importable, else ``torch``; on any other device ``torch``; a fused backend
only once it has passed its self-check against the torch backend for the call's key (device,
dtypes, shape class: :mod:`mambapro.ops.scan_selfcheck`), otherwise a warning and the next one.
``auto`` takes the inputs of the torch backend's contract. Triton is imported lazily, on the
first call that needs it. ``unrolled`` and ``hop`` are the plain-operator forms of
:mod:`mambapro.ops.scan_export` that exported models carry (forward only in spirit: autograd
records every step).

Precision: the state is accumulated in fp32 whatever the input dtype or autocast state (inputs
are cast to fp32 inside with autocast disabled); the output has ``u``'s dtype, gradients have
their input's dtype, ``last_state`` is fp32, as in mamba-ssm.

FLOPs: ``FlopCounterMode`` counts the torch backend's scan as 2·9·B·L·D·N FLOPs forward and twice
that backward (:mod:`mambapro.ops.scan_flops`, which also gives :func:`selective_scan_macs`).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from mambapro.ops import scan_selfcheck as selfcheck
from mambapro.ops.scan_contract import check_scan_inputs
from mambapro.ops.scan_export import selective_scan_export
from mambapro.ops.scan_flops import selective_scan_macs
from mambapro.ops.scan_torch import selective_scan_torch
from mambapro.parts import EXPORT_FORMS, SCAN_BACKENDS

__all__ = [
    "AUTO_ORDER",
    "SCAN_BACKENDS",
    "auto_candidates",
    "resolve_backend",
    "select_backend",
    "selective_scan",
    "selective_scan_macs",
]


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


#: Device types on which ``auto`` considers the fused backends (in :data:`AUTO_ORDER`).
FUSED_DEVICE_TYPES = ("cuda",)
#: ``auto``'s order of fused backends; the torch backend comes last, always.
AUTO_ORDER = ("triton", "mamba_ssm")


def _available(backend: str) -> bool:
    return (_triton_scan() if backend == "triton" else _mamba_ssm_scan()) is not None


def auto_candidates(device: torch.device | str) -> list[str]:
    """The fused backends ``auto`` may use on ``device``, in order: those that import, on CUDA."""
    if torch.device(device).type not in FUSED_DEVICE_TYPES:
        return []
    return [b for b in AUTO_ORDER if _available(b)]


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The implementation ``backend`` would run on ``device`` before any self-check: ``auto``
    becomes ``triton`` on CUDA when Triton imports, else ``mamba_ssm`` on CUDA when importable,
    else ``torch``; explicit backends are returned unchanged (their availability is checked when
    they run). :func:`select_backend` is what a call runs (``auto`` after the self-check)."""
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"selective_scan: backend = {backend!r} is not one of: {', '.join(SCAN_BACKENDS)}")
    if backend != "auto":
        return backend
    candidates = auto_candidates(device)
    return candidates[0] if candidates else "torch"


def _run_backend(
    backend: str,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """(out, last_state) of the torch, triton or mamba_ssm backend, inputs already checked."""
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
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True)
    scan = selective_scan_torch
    if backend == "triton":
        scan = _triton_scan()
        if scan is None:
            raise RuntimeError(
                "selective_scan: backend='triton' needs the triton package (it ships with CUDA builds "
                "of torch), which is not importable; use backend='torch' or 'auto'"
            )
    return scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), chunk_size)


def select_backend(
    backend: str,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int | None = None,
) -> str:
    """The backend a :func:`selective_scan` call with these (valid) inputs runs.

    ``auto``: the first fused backend of :func:`auto_candidates` whose self-check passes for
    these inputs' key (:mod:`mambapro.ops.scan_selfcheck`: checked once per process and key),
    else ``torch``; a failed check warns once, naming the backend, the device and the largest
    error or the exception, and the next backend is tried. An explicit backend is returned as
    it is: never replaced. It is checked only under ``MAMBAPRO_SCAN_SELFCHECK=strict``, and a
    failed check then raises :class:`~mambapro.ops.scan_selfcheck.ScanSelfCheckError`.
    """
    if backend not in ("auto", *AUTO_ORDER):
        return resolve_backend(backend, u.device)
    if backend != "auto" and not selfcheck.strict():
        return backend
    candidates = auto_candidates(u.device) if backend == "auto" else []
    if backend == "auto" and not candidates:
        return "torch"  # no fused backend here (every CPU call): no key to build, nothing to check
    sig = selfcheck.signature(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
    if backend != "auto":
        verdict, _ = selfcheck.run_check(backend, sig, _run_backend)
        if not verdict.ok:
            raise selfcheck.ScanSelfCheckError(
                f"selective_scan: the {backend} backend failed its self-check on {sig.device} "
                f"({sig.describe()}): {verdict.detail}; it was requested explicitly, so it is not "
                f"replaced: use backend 'auto' or 'torch' (model.scan_backend)"
            )
        return backend
    for i, name in enumerate(candidates):
        verdict, new = selfcheck.run_check(name, sig, _run_backend)
        if verdict.ok:
            return name
        if new:
            following = (candidates[i + 1 :] or ["torch"])[0]
            warnings.warn(
                f"selective_scan: the {name} backend failed its self-check on {sig.device} "
                f"({sig.describe()}): {verdict.detail}; scan_backend=auto continues with {following}",
                RuntimeWarning,
                stacklevel=3,
            )
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
            ``auto`` (a fused backend that passed its self-check, else ``torch``; see
            :func:`select_backend`), or ``unrolled`` / ``hop``, the plain-operator forms that
            exported models use (:mod:`mambapro.ops.scan_export`).
        chunk_size: time steps per chunk; torch backend default: a cache-sized chunk; triton:
            steps between saved states, rounded down to a power of two, default 32; ignored by
            ``mamba_ssm``.

    Returns:
        out (B, D, L) in ``u``'s dtype, and the last state when ``return_last_state``.
    """
    resolved = resolve_backend(backend, u.device)
    if resolved == "mamba_ssm" and backend == "mamba_ssm" and not selfcheck.strict():
        # mamba-ssm's own contract (it also takes complex A and time-invariant B/C), unchecked
        out, last = _run_backend("mamba_ssm", u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        return (out, last) if return_last_state else out
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"selective_scan: chunk_size must be >= 1, got {chunk_size}")
    if resolved in EXPORT_FORMS:
        if return_last_state:
            raise ValueError(f"selective_scan: backend={resolved!r} does not return the last state")
        return selective_scan_export(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), form=resolved)
    if resolved != "torch" or backend == "auto":
        resolved = select_backend(backend, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
    out, last_state = _run_backend(resolved, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
    return (out, last_state) if return_last_state else out
