"""Selective scan in Triton: no compiled extension to install; this module launches the kernels.

Same contract as the torch backend (:func:`mambapro.ops.selective_scan`, mamba-ssm's
``selective_scan_fn``)::

    Δ = softplus(delta + delta_bias)          (bias and softplus optional)
    h_l = exp(Δ_l A) ⊙ h_{l-1} + Δ_l B_l u_l  (h_{-1} = 0, state (D, N) per sample)
    y_l = C_l · h_l + D ⊙ u_l,   out = y ⊙ SiLU(z)  (D and z optional)

with ``B``/``C`` of shape (B, N, L) or mamba-ssm's grouped (B, G, N, L) (``B`` and ``C`` may have
different group counts), the state accumulated in fp32 whatever the input dtype, ``out`` in
``u``'s dtype, gradients in their input's dtype, ``last_state`` fp32 (and differentiable, as in
the torch backend; mamba-ssm's kernel drops its gradient).

Modules: the forward kernel (:mod:`mambapro.ops.scan_triton_fwd`), the backward kernel
(:mod:`mambapro.ops.scan_triton_bwd`), the device functions both share and how programs map to
channels (:mod:`mambapro.ops.scan_triton_common`); here, the launches and the autograd Function.

Design
------
* The kernels write fp32 (out, du, dΔ, dz); a bf16/fp16 result is rounded by torch afterwards
  (``.to``, round-to-nearest-even, a no-op for fp32), as the torch backend rounds. This costs one
  (B, D, L) pass for low-precision inputs only, and keeps the rounding identical on every
  platform (Triton's CPU interpreter truncates fp32 -> bf16 casts instead of rounding).
* The ``chunk`` is a power of two (a Triton tile extent): a requested ``chunk_size`` is rounded
  down to one; by default it is 32 (at most the next power of two ≥ L). Block sizes keep a
  backward tile (BLOCK_D, chunk, N) at ≤ 2048 fp32 elements and a forward state at ≤ 512.
  They are reasoned defaults, not tuned on a GPU. Checked without one: both kernels compile for
  sm_90 (Triton -> PTX -> ptxas, ``tests/test_scan_triton.py``); at N = 16 ptxas reports no
  register spills (forward ~96 registers per thread, backward 255); at N = 1 the backward
  (BLOCK_D capped at 32) spills ~100 bytes per thread (1.2 KB without the cap, at 64).

Under ``TRITON_INTERPRET=1`` (set before ``triton`` is first imported) the same kernels run on
CPU tensors through Triton's interpreter; that is how ``tests/test_scan_triton.py`` checks them.
On a GPU the kernels are JIT-compiled on first use for each option combination.
"""

from __future__ import annotations

import math
import os

import torch
import triton
from torch import Tensor

from mambapro.ops.scan_contract import as_groups
from mambapro.ops.scan_triton_bwd import scan_bwd_kernel
from mambapro.ops.scan_triton_fwd import scan_fwd_kernel

__all__ = ["INTERPRETED", "scan_bwd_kernel", "scan_fwd_kernel", "selective_scan_triton"]


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)  # Triton >= 3.3; older ones read the variable directly
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


#: Whether the kernels are created under Triton's interpreter (``TRITON_INTERPRET=1`` when
#: this module is imported), i.e. whether they run on CPU tensors.
INTERPRETED = _interpreting()

_DEFAULT_CHUNK = 32
_BWD_TILE = 2048  # fp32 elements in one (BLOCK_D, chunk, N) backward tile
_FWD_TILE = 512  # fp32 elements in the forward's (BLOCK_D, N) state


def _pow2_floor(x: int) -> int:
    return 1 << (max(1, int(x)).bit_length() - 1)


def _layout(
    u: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int | None
) -> tuple[Tensor, Tensor, int, int, int, int, int, int]:
    """(B4, C4, segments, channels per segment, segments per B group, per C group, chunk, BLOCK_N)."""
    b, d, L = u.shape
    B4, C4 = as_groups(B), as_groups(C)
    gb, gc = B4.shape[1], C4.shape[1]
    segs = gb * gc // math.gcd(gb, gc)
    chunk = _DEFAULT_CHUNK if chunk_size is None else _pow2_floor(chunk_size)
    chunk = min(chunk, triton.next_power_of_2(L))
    block_n = triton.next_power_of_2(A.shape[1])
    return B4, C4, segs, d // segs, segs // gb, segs // gc, chunk, block_n


def _fwd_block_d(dg: int, block_n: int) -> int:
    """Channels per forward program: all of the segment, up to a (BLOCK_D, N) state of _FWD_TILE."""
    return max(1, min(triton.next_power_of_2(dg), _FWD_TILE // block_n))


def _bwd_block_d(dg: int, block_n: int, chunk: int) -> int:
    """Channels per backward program: up to a (BLOCK_D, chunk, N) tile of _BWD_TILE elements, at
    most 32 (wider blocks of a small N spill registers)."""
    return max(1, min(triton.next_power_of_2(dg), _BWD_TILE // (block_n * chunk), 32))


def _optional_inputs(
    u: Tensor, D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """(D, z, delta_bias) as the kernels take them: an absent one becomes ``u``, a valid pointer
    that the kernel never reads (its HAS_* flag is off)."""
    return (
        D.contiguous() if D is not None else u,
        z if z is not None else u,
        delta_bias.contiguous() if delta_bias is not None else u,
    )


def _input_strides(
    u: Tensor, delta: Tensor, A: Tensor, B4: Tensor, C4: Tensor, zz: Tensor
) -> tuple[int, ...]:
    """The strides both kernels take, in their order: u, delta (B, D, L), A (D, N), B4, C4
    (B, G, N, L), z (B, D, L)."""
    return (*u.stride(), *delta.stride(), *A.stride(), *B4.stride(), *C4.stride(), *zz.stride())


def _flags(
    D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, delta_softplus: bool
) -> dict[str, bool]:
    """The kernels' compile-time options (each combination is compiled once)."""
    return {
        "HAS_D": D is not None,
        "HAS_Z": z is not None,
        "HAS_BIAS": delta_bias is not None,
        "SOFTPLUS": bool(delta_softplus),
    }


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
        b, d, L = u.shape
        n = A.shape[1]
        B4, C4, segs, dg, spb, spc, chunk, block_n = _layout(u, A, B, C, chunk_size)
        num_chunks = triton.cdiv(L, chunk)
        block_d = _fwd_block_d(dg, block_n)
        out = torch.empty(b, d, L, dtype=torch.float32, device=u.device)
        last = torch.empty(b, d, n, dtype=torch.float32, device=u.device)
        ckpt = torch.empty(b, num_chunks, d, n, dtype=torch.float32, device=u.device)
        Dc, zz, bc = _optional_inputs(u, D, z, delta_bias)
        grid = (triton.cdiv(dg, block_d), segs, b)
        scan_fwd_kernel[grid](
            u, delta, A, B4, C4, Dc, zz, bc, out, last, ckpt,
            L, d, dg, n, spb, spc, num_chunks,
            *_input_strides(u, delta, A, B4, C4, zz),
            **_flags(D, z, delta_bias, delta_softplus), BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk,
            num_warps=4,
        )  # fmt: skip
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(ckpt)
        return out.to(u.dtype), last, ckpt

    @staticmethod
    def backward(ctx, dout, dlast, _dckpt):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        b, d, L = u.shape
        n = A.shape[1]
        B4, C4, segs, dg, spb, spc, chunk, block_n = _layout(u, A, B, C, ctx.chunk_size)
        num_chunks = ckpt.shape[1]
        block_d = _bwd_block_d(dg, block_n, chunk)
        dev = u.device
        if dout is None:
            dout = torch.zeros_like(u)
        dlast = torch.zeros(b, d, n, dtype=torch.float32, device=dev) if dlast is None else dlast.float()
        dlast = dlast.contiguous()
        du = torch.empty(b, d, L, dtype=torch.float32, device=dev)
        ddelta = torch.empty(b, d, L, dtype=torch.float32, device=dev)
        dz = torch.empty(b, d, L, dtype=torch.float32, device=dev) if z is not None else du
        dA = torch.empty(b, d, n, dtype=torch.float32, device=dev)
        dD = torch.empty(b, d, dtype=torch.float32, device=dev) if D is not None else dA
        dbias = torch.empty(b, d, dtype=torch.float32, device=dev) if delta_bias is not None else dA
        dB = torch.zeros(B4.shape, dtype=torch.float32, device=dev)
        dC = torch.zeros(C4.shape, dtype=torch.float32, device=dev)
        Dc, zz, bc = _optional_inputs(u, D, z, delta_bias)
        grid = (triton.cdiv(dg, block_d), segs, b)
        scan_bwd_kernel[grid](
            u, delta, A, B4, C4, Dc, zz, bc, dout, dlast, ckpt,
            du, ddelta, dz, dA, dD, dbias, dB, dC,
            L, d, dg, n, spb, spc, num_chunks, B4.shape[1], C4.shape[1],
            *_input_strides(u, delta, A, B4, C4, zz), *dout.stride(),
            **_flags(D, z, delta_bias, ctx.delta_softplus), BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk,
            num_warps=4,
        )  # fmt: skip
        return (
            du.to(u.dtype),
            ddelta.to(delta.dtype),
            dA.sum(0).to(A.dtype),
            dB.view(B.shape).to(B.dtype),
            dC.view(C.shape).to(C.dtype),
            dD.sum(0).to(D.dtype) if D is not None else None,
            dz.to(z.dtype) if z is not None else None,
            dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
            None,
            None,
        )


def selective_scan_triton(
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
    """(out, last_state) of the scan; inputs already validated by :func:`selective_scan`.

    ``chunk_size``: steps between saved states (rounded down to a power of two; default 32).
    Runs on CUDA tensors, or on CPU tensors when :data:`INTERPRETED`.
    """
    if not (u.is_cuda or INTERPRETED):
        raise RuntimeError(
            f"selective_scan: backend='triton' runs only on CUDA tensors, got u on {u.device} "
            "(or on CPU under Triton's interpreter, TRITON_INTERPRET=1 set before triton is imported); "
            "use backend='torch' or 'auto'"
        )
    with torch.autocast(u.device.type, enabled=False):
        out, last, _ = _SelectiveScanTriton.apply(
            u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), chunk_size
        )
    return out, last
