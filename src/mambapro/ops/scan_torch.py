"""The ``torch`` backend of the selective scan: a chunked scan with a hand-written backward.

Pure PyTorch, any device, exact, correct under autograd; :func:`selective_scan_torch` is what
:func:`mambapro.ops.selective_scan` runs for ``backend='torch'`` (semantics and shapes in its
docstring). The forward and the backward are ``torch.library.custom_op`` s
(``mambapro::selective_scan_fwd`` / ``_bwd``) whose FLOPs FlopCounterMode counts
(:mod:`mambapro.ops.scan_flops`).

Design (chosen by measurement, ``benchmarks/bench_scan.py``)
------------------------------------------------------------
The literal loop (mamba-ssm's ``selective_scan_ref``) materialises exp(ΔA) and ΔBu as (B, D, L, N)
tensors and lets autograd record L steps; its backward is dominated by the per-step slice
gradients, each a zero-filled (B, D, L, N) tensor, so it costs ~2 minutes at the benchmark's size.

Here one ``torch.library.custom_op`` runs a chunked scan with a hand-written backward:

* forward: per chunk of T steps (time-major (T, B, D, N) buffers, T·B·D·N ≈ 2^20 so the buffers
  stay in cache), compute exp(ΔA) and ΔBu for the chunk, run the recurrence as T in-place
  ``addcmul_`` calls without autograd recording, and contract with C by a batched matmul. Only
  the state at each chunk start is kept (L/T × (B, D, N)), like the CUDA kernel does.
* backward: chunks in reverse; the chunk's states are recomputed from its saved start state,
  the adjoint g_l = C_l dy_l + exp(Δ_{l+1} A) g_{l+1} runs as a reverse in-place recurrence, and
  every input gradient is a matmul or a reduction over the chunk. Extra memory is a few chunk
  buffers plus (B, D, L)-sized arrays, far below the (B, D, L, N) state tensor.
* A log-space cumulative-sum formulation (parallel over L) was rejected: exp(-cumsum(ΔA))
  overflows in fp32 once Σ Δ|A| > 88 within a chunk, which real Δ reach; the stable pairwise
  form costs T times more work because A differs per (D, N).
* The gradient of ``last_state`` is supported (mamba-ssm's kernel ignores it).

Speed, memory and errors against the literal loop are measured by ``benchmarks/bench_scan.py``
(latest table in ``benchmarks/results/bench_scan.txt`` and docs/benchmarks.md), not quoted here.

Precision: the state is accumulated in fp32 whatever the input dtype or autocast state (inputs
are cast to fp32 inside with autocast disabled); the output has ``u``'s dtype, gradients have
their input's dtype, ``last_state`` is fp32, as in mamba-ssm.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mambapro.ops.scan_contract import as_groups, skip_and_gate, step_sizes
from mambapro.ops.scan_flops import register_scan_flops

__all__ = ["selective_scan_torch"]

# Elements per time-major chunk buffer (T·B·D·N); 2^20 fp32 = 4 MiB keeps the three buffers of the
# backward within a 32 MiB L3 cache. Chosen by the chunk-size sweep in benchmarks/bench_scan.py.
_CHUNK_ELEMENTS = 1 << 20


def _auto_chunk(batch: int, dim: int, length: int, d_state: int) -> int:
    return max(1, min(length, _CHUNK_ELEMENTS // max(1, batch * dim * d_state)))


def _time_major(x: Tensor) -> Tensor:
    """(B, D, L) -> contiguous (L, B, D); (B, G, N, L) -> contiguous (L, B, G, N).

    A contiguous input is moved as the 2-D transpose (B·D, L) -> (L, B·D), which takes ATen's
    blocked transpose copy: at MA's long inter-modality sequences the generic strided copy falls
    out of cache and costs up to 2x more.
    """
    if x.is_contiguous():
        return x.reshape(-1, x.shape[-1]).t().contiguous().view(x.shape[-1], *x.shape[:-1])
    return x.movedim(-1, 0).contiguous()


def _batch_major(x_t: Tensor) -> Tensor:
    """The inverse of :func:`_time_major` for a contiguous (L, ...) tensor: contiguous (..., L)."""
    return x_t.reshape(x_t.shape[0], -1).t().contiguous().view(*x_t.shape[1:], x_t.shape[0])


class _Prepared(NamedTuple):
    """The fp32 inputs both custom ops start from; the ``_t`` ones time-major."""

    u32: Tensor  # (B, D, L)
    raw: Tensor  # (B, D, L) delta + delta_bias (before the softplus)
    dt: Tensor  # (B, D, L) Δ
    A32: Tensor  # (D, N)
    dt_t: Tensor  # (L, B, D) Δ
    dtu_t: Tensor  # (L, B, D) Δ·u
    B_t: Tensor  # (L, B, G, N)
    C_t: Tensor  # (L, B, Gc, N)


def _prepare(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, delta_bias: Tensor | None, delta_softplus: bool
) -> _Prepared:
    u32 = u.float()
    raw, dt = step_sizes(delta, delta_bias, delta_softplus)
    return _Prepared(
        u32,
        raw,
        dt,
        A.float(),
        _time_major(dt),
        _time_major(dt * u32),
        _time_major(as_groups(B).float()),
        _time_major(as_groups(C).float()),
    )


def _chunk_states(
    dA_buf: Tensor,
    H_buf: Tensor,
    dt_t: Tensor,
    dtu_t: Tensor,
    A: Tensor,
    B_t: Tensor,
    h0: Tensor,
    l0: int,
    l1: int,
) -> tuple[Tensor, Tensor]:
    """exp(ΔA) and the states h_l for steps [l0, l1), each (T, B, D, N), starting from ``h0``."""
    T = l1 - l0
    _, b, d = dt_t.shape
    g, n = B_t.shape[2], B_t.shape[3]
    dA, H = dA_buf[:T], H_buf[:T]
    torch.mul(dt_t[l0:l1].unsqueeze(-1), A, out=dA)
    dA.exp_()
    torch.mul(
        dtu_t[l0:l1].view(T, b, g, d // g, 1), B_t[l0:l1].view(T, b, g, 1, n), out=H.view(T, b, g, d // g, n)
    )
    hs, das = H.unbind(0), dA.unbind(0)
    hs[0].addcmul_(das[0], h0)
    for t in range(1, T):
        hs[t].addcmul_(das[t], hs[t - 1])
    return dA, H


def _contract_c(H: Tensor, C_t: Tensor) -> Tensor:
    """y_l = C_l · h_l for a chunk: (T, B, D, N) x (T, B, Gc, N) -> (T, B, D)."""
    T, b, d, n = H.shape
    gc = C_t.shape[2]
    return torch.matmul(H.view(T, b, gc, d // gc, n), C_t.view(T, b, gc, n, 1)).view(T, b, d)


# ----------------------------------------------------------------------------- custom ops

_FWD_SCHEMA = (
    "(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, "
    "bool delta_softplus, int chunk_size) -> (Tensor, Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "(Tensor dout, Tensor dlast, Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
    "Tensor? z, Tensor? delta_bias, bool delta_softplus, int chunk_size, Tensor checkpoints) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("mambapro::selective_scan_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def _scan_fwd(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (out (B, D, L) in u's dtype, last state (B, D, N) fp32, chunk-start states
    (L/T, B, D, N) fp32 kept for the backward)."""
    with torch.autocast(u.device.type, enabled=False), torch.no_grad():
        b, d, L = u.shape
        n = A.shape[1]
        u32, _, _, A32, dt_t, dtu_t, B_t, C_t = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
        T = chunk_size
        num_chunks = math.ceil(L / T)
        dA_buf = u32.new_empty(T, b, d, n)
        H_buf = u32.new_empty(T, b, d, n)
        ckpt = u32.new_empty(num_chunks, b, d, n)
        y_t = u32.new_empty(L, b, d)
        h = u32.new_zeros(b, d, n)
        for c in range(num_chunks):
            l0, l1 = c * T, min(L, (c + 1) * T)
            ckpt[c].copy_(h)  # before the buffers are overwritten: h may be a view of H_buf
            _, H = _chunk_states(dA_buf, H_buf, dt_t, dtu_t, A32, B_t, ckpt[c], l0, l1)
            y_t[l0:l1] = _contract_c(H, C_t[l0:l1])
            h = H[l1 - l0 - 1]
        y = skip_and_gate(_batch_major(y_t), u32, D, z)
        return y.to(u.dtype).contiguous(), h.clone(), ckpt


@_scan_fwd.register_fake
def _scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
    b, d, L = u.shape
    n = A.shape[1]
    num_chunks = math.ceil(L / chunk_size)
    return (
        u.new_empty(b, d, L),
        u.new_empty(b, d, n, dtype=torch.float32),
        u.new_empty(num_chunks, b, d, n, dtype=torch.float32),
    )


@torch.library.custom_op("mambapro::selective_scan_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def _scan_bwd(
    dout: Tensor,
    dlast: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    chunk_size: int,
    checkpoints: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); absent inputs get empty tensors."""
    with torch.autocast(u.device.type, enabled=False), torch.no_grad():
        b, d, L = u.shape
        n = A.shape[1]
        u32, raw, dt, A32, dt_t, dtu_t, B_t, C_t = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
        dout32 = dout.float()
        g, gc = B_t.shape[2], C_t.shape[2]
        dy = dout32 * F.silu(z.float()) if z is not None else dout32
        dy_t = _time_major(dy)

        T = chunk_size
        num_chunks = checkpoints.shape[0]
        dA_buf = u32.new_empty(T, b, d, n)
        H_buf = u32.new_empty(T, b, d, n)
        G_buf = u32.new_empty(T, b, d, n)
        d_dtu_t = u32.new_empty(L, b, d)  # gradient wrt Δ·u
        d_dt_t = u32.new_empty(L, b, d)  # gradient wrt Δ through exp(ΔA)
        dB_t = u32.new_empty(L, b, g, n)
        dC_t = u32.new_empty(L, b, gc, n)
        y_t = u32.new_empty(L, b, d) if z is not None else None
        dA = u32.new_zeros(d, n)
        carry = dlast.float()  # g_{l1} ⊙ exp(Δ_{l1} A) flowing into the previous chunk
        for c in reversed(range(num_chunks)):
            l0, l1 = c * T, min(L, (c + 1) * T)
            Tc = l1 - l0
            h0 = checkpoints[c]
            dAc, H = _chunk_states(dA_buf, H_buf, dt_t, dtu_t, A32, B_t, h0, l0, l1)
            if y_t is not None:
                y_t[l0:l1] = _contract_c(H, C_t[l0:l1])
            # adjoint of the states: g_l = C_l dy_l + exp(Δ_{l+1} A) g_{l+1}
            G = G_buf[:Tc]
            torch.mul(
                dy_t[l0:l1].view(Tc, b, gc, d // gc, 1),
                C_t[l0:l1].view(Tc, b, gc, 1, n),
                out=G.view(Tc, b, gc, d // gc, n),
            )
            gs, das = G.unbind(0), dAc.unbind(0)
            gs[Tc - 1].add_(carry)
            for t in range(Tc - 2, -1, -1):
                gs[t].addcmul_(das[t + 1], gs[t + 1])
            carry = das[0] * gs[0]
            dC_t[l0:l1] = torch.matmul(
                dy_t[l0:l1].view(Tc, b, gc, 1, d // gc), H.view(Tc, b, gc, d // gc, n)
            ).view(Tc, b, gc, n)
            dB_t[l0:l1] = torch.matmul(
                dtu_t[l0:l1].view(Tc, b, g, 1, d // g), G.view(Tc, b, g, d // g, n)
            ).view(Tc, b, g, n)
            d_dtu_t[l0:l1] = torch.matmul(G.view(Tc, b, g, d // g, n), B_t[l0:l1].view(Tc, b, g, n, 1)).view(
                Tc, b, d
            )
            # gradient wrt the exponent ΔA: g_l ⊙ exp(Δ_l A) ⊙ h_{l-1}
            G.mul_(dAc)
            G[1:].mul_(H[:-1])
            G[0].mul_(h0)
            torch.mul(G, A32, out=dAc)  # dAc is free now: reuse it as scratch
            torch.sum(dAc, dim=-1, out=d_dt_t[l0:l1])
            torch.mul(G, dt_t[l0:l1].unsqueeze(-1), out=H)
            dA += H.view(Tc * b, d, n).sum(0)

        d_dtu = _batch_major(d_dtu_t)
        d_dt = _batch_major(d_dt_t) + d_dtu * u32
        du = d_dtu * dt
        # absent inputs get distinct empty tensors: custom-op outputs may not alias each other
        dD, dz, d_bias = u32.new_empty(0), u32.new_empty(0), u32.new_empty(0)
        if D is not None:
            du = du + dy * D.float()[:, None]
            dD = (dy * u32).sum(dim=(0, 2))
        if z is not None:
            y = skip_and_gate(_batch_major(y_t), u32, D, None)
            sz = torch.sigmoid(z.float())
            dz = (dout32 * y * sz * (1 + z.float() * (1 - sz))).to(z.dtype)
        if delta_softplus:
            d_dt = d_dt * torch.sigmoid(raw)
        if delta_bias is not None:
            d_bias = d_dt.sum(dim=(0, 2)).to(delta_bias.dtype)
        dB = _batch_major(dB_t).reshape(B.shape).to(B.dtype)
        dC = _batch_major(dC_t).reshape(C.shape).to(C.dtype)
        if D is not None:
            dD = dD.to(D.dtype)
        return (
            du.to(u.dtype).contiguous(),
            d_dt.to(delta.dtype).contiguous(),
            dA.to(A.dtype),
            dB.contiguous(),
            dC.contiguous(),
            dD,
            dz.contiguous(),
            d_bias,
        )


@_scan_bwd.register_fake
def _scan_bwd_fake(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, checkpoints):
    def like(x: Tensor | None) -> Tensor:
        return torch.empty_like(x) if x is not None else u.new_empty(0)

    return (
        torch.empty_like(u),
        torch.empty_like(delta),
        torch.empty_like(A),
        torch.empty_like(B),
        torch.empty_like(C),
        like(D),
        like(z),
        like(delta_bias),
    )


def _setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size = inputs
    ctx.mark_non_differentiable(output[2])
    ctx.delta_softplus = delta_softplus
    ctx.chunk_size = chunk_size
    ctx.has = (D is not None, z is not None, delta_bias is not None)
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])


def _backward(ctx, dout: Tensor, dlast: Tensor | None, _dckpt: Tensor | None):
    u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(u)
    if dlast is None:
        dlast = u.new_zeros(ckpt.shape[1:], dtype=torch.float32)
    grads = _scan_bwd(
        dout, dlast, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ctx.chunk_size, ckpt
    )
    du, ddelta, dA, dB, dC, dD, dz, dbias = grads
    has_d, has_z, has_bias = ctx.has
    return (
        du,
        ddelta,
        dA,
        dB,
        dC,
        dD if has_d else None,
        dz if has_z else None,
        dbias if has_bias else None,
        None,
        None,
    )


_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


register_scan_flops(torch.ops.mambapro.selective_scan_fwd, torch.ops.mambapro.selective_scan_bwd)


def selective_scan_torch(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    chunk_size: int | None,
) -> tuple[Tensor, Tensor]:
    """(out (B, D, L) in u's dtype, last state (B, D, N) fp32); inputs already validated by
    :func:`mambapro.ops.selective_scan`. ``chunk_size``: steps per chunk, default cache-sized."""
    b, d, L = u.shape
    if chunk_size is None:
        chunk_size = _auto_chunk(b, d, L, A.shape[1])
    chunk_size = min(chunk_size, L)
    out, last_state, _ = _scan_fwd(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), int(chunk_size))
    return out, last_state
