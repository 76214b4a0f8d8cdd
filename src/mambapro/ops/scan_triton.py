"""Selective scan in Triton: no compiled extension to install, forward and backward kernels.

Same contract as the torch backend (:func:`mambapro.ops.selective_scan`, mamba-ssm's
``selective_scan_fn``)::

    Δ = softplus(delta + delta_bias)          (bias and softplus optional)
    h_l = exp(Δ_l A) ⊙ h_{l-1} + Δ_l B_l u_l  (h_{-1} = 0, state (D, N) per sample)
    y_l = C_l · h_l + D ⊙ u_l,   out = y ⊙ SiLU(z)  (D and z optional)

with ``B``/``C`` of shape (B, N, L) or mamba-ssm's grouped (B, G, N, L) (``B`` and ``C`` may have
different group counts), the state accumulated in fp32 whatever the input dtype, ``out`` in
``u``'s dtype, gradients in their input's dtype, ``last_state`` fp32 (and differentiable, as in
the torch backend; mamba-ssm's kernel drops its gradient).

Design
------
Channels are split into *segments* of D/G channels, G = lcm(G_B, G_C), so that every channel of a
segment reads the same group of B and of C; a program owns (batch, segment, block of channels)
and never reads another program's state.

* Forward (``_scan_fwd_kernel``): one program per (batch, block of BLOCK_D channels) keeps the
  (BLOCK_D, N) state in registers and walks L step by step: per step it loads u, Δ (BLOCK_D
  values), B_l, C_l (N values of its group), updates h and writes y_l. At every chunk boundary
  (every ``chunk`` steps) it stores h, the *checkpoint*, and at the end the last state. Memory:
  out (B, D, L) plus checkpoints (B, ⌈L/chunk⌉, D, N) fp32, the same O(B·D·L + B·D·N·L/chunk)
  as mamba-ssm's CUDA kernel (which keeps its chunk-boundary states for the backward too).
* Backward (``_scan_bwd_kernel``): one program per (batch, block of channels) walks the chunks
  in reverse, as mamba-ssm's ``selective_scan_bwd_kernel`` does. For one chunk it loads the
  chunk's inputs as (BLOCK_D, chunk) tiles, rebuilds the chunk's states from the saved
  checkpoint with a parallel ``tl.associative_scan`` of the pairs (exp(Δ_l A), Δ_l B_l u_l)
  under (a1, b1)∘(a2, b2) = (a1·a2, a2·b1 + b2), and runs the adjoint
  g_l = C_l dy_l + exp(Δ_{l+1} A) ⊙ g_{l+1} as a *reverse* associative scan of the same
  operator, seeded at the chunk's end by the carry exp(Δ_{l1} A) ⊙ g_{l1} of the later chunk
  (d last_state for the final chunk). A step-by-step reverse walk would need h_{l-1} at step l,
  which can only be recovered by dividing by exp(Δ_l A) (unstable) or by spilling the chunk's
  states to memory; the in-register scan needs neither. Like the CUDA kernel, the term
  exp(Δ_l A) ⊙ h_{l-1} needed by dA and dΔ is taken as h_l − Δ_l B_l u_l (a subtraction, no
  division). Every input gradient of the chunk is then a tile reduction:
  du, dΔ, dz are stored per (channel, step); dA, dD, d delta_bias are accumulated in registers
  per channel and stored per batch (summed over the batch on the host); dB, dC are reduced
  over the block's channels and added with ``tl.atomic_add`` into fp32 (B, G, N, L) buffers
  (the CUDA kernel also uses atomics there), so their summation order is not deterministic.
  Memory: the gradients plus those fp32 buffers; nothing of size (B, D, N, L).
* The kernels write fp32 (out, du, dΔ, dz); a bf16/fp16 result is rounded by torch afterwards
  (``.to``, round-to-nearest-even, a no-op for fp32), as the torch backend rounds. This costs one
  (B, D, L) pass for low-precision inputs only, and keeps the rounding identical on every
  platform (Triton's CPU interpreter truncates fp32 -> bf16 casts instead of rounding).
* Lanes past D or L are masked with Δ = 0, which makes a step the identity (exp(0) = 1, no
  input), so a ragged last chunk or block needs no special case.
* The ``chunk`` is a power of two (a Triton tile extent): a requested ``chunk_size`` is rounded
  down to one; by default it is 32 (at most the next power of two ≥ L). Block sizes keep a
  backward tile (BLOCK_D, chunk, N) at ≤ 2048 fp32 elements and a forward state at ≤ 512.
  They are reasoned defaults, not tuned on a GPU. Checked without one: both kernels compile for
  sm_90 (Triton -> PTX -> ptxas, ``tests/test_scan_triton.py``); at N = 16 ptxas reports no
  register spills (forward ~96 registers per thread, backward 255); at N = 1 the backward
  (BLOCK_D capped at 32) spills ~100 bytes per thread (1.2 KB without the cap, at 64).
* softplus is computed with threshold 20 like torch's, with an accurate log1p
  (log(w)·e/(w − 1), w = 1 + e), so small Δ keep full relative precision.

Under ``TRITON_INTERPRET=1`` (set before ``triton`` is first imported) the same kernels run on
CPU tensors through Triton's interpreter; that is how ``tests/test_scan_triton.py`` checks them.
On a GPU the kernels are JIT-compiled on first use for each option combination.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["INTERPRETED", "selective_scan_triton"]


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)  # Triton >= 3.3; older ones read the variable directly
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


#: Whether the kernels below are created under Triton's interpreter (``TRITON_INTERPRET=1`` when
#: this module is imported), i.e. whether they run on CPU tensors.
INTERPRETED = _interpreting()

_DEFAULT_CHUNK = 32
_BWD_TILE = 2048  # fp32 elements in one (BLOCK_D, chunk, N) backward tile
_FWD_TILE = 512  # fp32 elements in the forward's (BLOCK_D, N) state


@triton.jit
def _softplus(x):
    e = tl.exp(x)
    w = 1.0 + e
    # log1p(e) to a few ulp: log(w) * e / (w - 1) corrects the rounding of w (exact e when w == 1)
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _ssm_combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _scan_fwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    out_ptr,
    last_ptr,
    ckpt_ptr,
    L,
    DIM,
    DG,
    NSTATE,
    SEG_PER_GB,
    SEG_PER_GC,
    NUM_CHUNKS,
    s_ub,
    s_ud,
    s_ul,
    s_db,
    s_dd,
    s_dl,
    s_ad,
    s_an,
    s_bb,
    s_bg,
    s_bn,
    s_bl,
    s_cb,
    s_cg,
    s_cn,
    s_cl,
    s_zb,
    s_zd,
    s_zl,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
):
    pid_blk = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_k = pid_blk * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_k < DG
    offs_d = pid_s * DG + offs_k
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < NSTATE
    mask_dn = mask_d[:, None] & mask_n[None, :]
    gb = pid_s // SEG_PER_GB
    gc = pid_s // SEG_PER_GC

    A = tl.load(A_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn, other=0.0).to(
        tl.float32
    )
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    u_row = u_ptr + pid_b * s_ub + offs_d * s_ud
    dl_row = delta_ptr + pid_b * s_db + offs_d * s_dd
    z_row = z_ptr + pid_b * s_zb + offs_d * s_zd
    b_col = B_ptr + pid_b * s_bb + gb * s_bg + offs_n * s_bn
    c_col = C_ptr + pid_b * s_cb + gc * s_cg + offs_n * s_cn
    out_row = out_ptr + pid_b * DIM * L + offs_d * L
    dn_off = offs_d[:, None] * NSTATE + offs_n[None, :]
    ckpt_base = ckpt_ptr + pid_b * NUM_CHUNKS * DIM * NSTATE

    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    for c in range(NUM_CHUNKS):
        tl.store(ckpt_base + c * DIM * NSTATE + dn_off, h, mask=mask_dn)
        for t in range(CHUNK):
            l = c * CHUNK + t
            in_l = l < L
            m = mask_d & in_l
            uu = tl.load(u_row + l * s_ul, mask=m, other=0.0).to(tl.float32)
            dt = tl.load(dl_row + l * s_dl, mask=m, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            dt = tl.where(m, dt, 0.0)  # a masked step is the identity
            Bl = tl.load(b_col + l * s_bl, mask=mask_n & in_l, other=0.0).to(tl.float32)
            Cl = tl.load(c_col + l * s_cl, mask=mask_n & in_l, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * uu)[:, None] * Bl[None, :]
            y = tl.sum(h * Cl[None, :], axis=1)
            if HAS_D:
                y = y + uu * Dv
            if HAS_Z:
                zz = tl.load(z_row + l * s_zl, mask=m, other=0.0).to(tl.float32)
                y = y * zz * tl.sigmoid(zz)
            tl.store(out_row + l, y, mask=m)
    tl.store(last_ptr + pid_b * DIM * NSTATE + dn_off, h, mask=mask_dn)


@triton.jit
def _scan_bwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    bias_ptr,
    dout_ptr,
    dlast_ptr,
    ckpt_ptr,
    du_ptr,
    ddelta_ptr,
    dz_ptr,
    dA_ptr,
    dD_ptr,
    dbias_ptr,
    dB_ptr,
    dC_ptr,
    L,
    DIM,
    DG,
    NSTATE,
    SEG_PER_GB,
    SEG_PER_GC,
    NUM_CHUNKS,
    NGB,
    NGC,
    s_ub,
    s_ud,
    s_ul,
    s_db,
    s_dd,
    s_dl,
    s_ad,
    s_an,
    s_bb,
    s_bg,
    s_bn,
    s_bl,
    s_cb,
    s_cg,
    s_cn,
    s_cl,
    s_zb,
    s_zd,
    s_zl,
    s_ob,
    s_od,
    s_ol,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CHUNK: tl.constexpr,
):
    pid_blk = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_k = pid_blk * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_k < DG
    offs_d = pid_s * DG + offs_k
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < NSTATE
    mask_dn = mask_d[:, None] & mask_n[None, :]
    offs_t = tl.arange(0, CHUNK)
    gb = pid_s // SEG_PER_GB
    gc = pid_s // SEG_PER_GC

    A = tl.load(A_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn, other=0.0).to(
        tl.float32
    )
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    u_row = u_ptr + pid_b * s_ub + offs_d * s_ud
    dl_row = delta_ptr + pid_b * s_db + offs_d * s_dd
    z_row = z_ptr + pid_b * s_zb + offs_d * s_zd
    do_row = dout_ptr + pid_b * s_ob + offs_d * s_od
    b_col = B_ptr + pid_b * s_bb + gb * s_bg + offs_n * s_bn
    c_col = C_ptr + pid_b * s_cb + gc * s_cg + offs_n * s_cn
    g_row = pid_b * DIM * L + offs_d * L  # contiguous (B, D, L) gradients
    db_col = dB_ptr + (pid_b * NGB + gb) * NSTATE * L + offs_n * L
    dc_col = dC_ptr + (pid_b * NGC + gc) * NSTATE * L + offs_n * L
    dn_off = offs_d[:, None] * NSTATE + offs_n[None, :]
    ckpt_base = ckpt_ptr + pid_b * NUM_CHUNKS * DIM * NSTATE
    first_t = (offs_t == 0)[None, :, None]
    last_t = (offs_t == CHUNK - 1)[None, :, None]

    # g_{l1} ⊙ exp(Δ_{l1} A) of the later chunk; d last_state seeds the final one
    carry = tl.load(dlast_ptr + pid_b * DIM * NSTATE + dn_off, mask=mask_dn, other=0.0)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(NUM_CHUNKS):
        c = NUM_CHUNKS - 1 - i
        l = c * CHUNK + offs_t
        mask_t = l < L
        m2 = mask_d[:, None] & mask_t[None, :]  # (BLOCK_D, CHUNK)
        mtn = mask_t[:, None] & mask_n[None, :]  # (CHUNK, BLOCK_N)
        uu = tl.load(u_row[:, None] + l[None, :] * s_ul, mask=m2, other=0.0).to(tl.float32)
        raw = tl.load(dl_row[:, None] + l[None, :] * s_dl, mask=m2, other=0.0).to(tl.float32)
        # Δ of the next step inside the chunk (the chunk's last step gets the carry instead)
        m2n = mask_d[:, None] & ((offs_t + 1 < CHUNK) & (l + 1 < L))[None, :]
        raw_n = tl.load(dl_row[:, None] + (l + 1)[None, :] * s_dl, mask=m2n, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw = raw + bias[:, None]
            raw_n = raw_n + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(raw)
            dt_n = _softplus(raw_n)
        else:
            dt = raw
            dt_n = raw_n
        dt = tl.where(m2, dt, 0.0)
        dt_n = tl.where(m2n, dt_n, 0.0)
        Bt = tl.load(b_col[None, :] + l[:, None] * s_bl, mask=mtn, other=0.0).to(tl.float32)
        Ct = tl.load(c_col[None, :] + l[:, None] * s_cl, mask=mtn, other=0.0).to(tl.float32)

        # the chunk's states from its checkpoint: h_l = P_l h0 + S_l
        dA = tl.exp(dt[:, :, None] * A[:, None, :])  # (BLOCK_D, CHUNK, BLOCK_N)
        dtu = dt * uu
        dBu = dtu[:, :, None] * Bt[None, :, :]
        a_cum, h_loc = tl.associative_scan((dA, dBu), axis=1, combine_fn=_ssm_combine)
        h0 = tl.load(ckpt_base + c * DIM * NSTATE + dn_off, mask=mask_dn, other=0.0)
        h = h_loc + a_cum * h0[:, None, :]

        do = tl.load(do_row[:, None] + l[None, :] * s_ol, mask=m2, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_row[:, None] + l[None, :] * s_zl, mask=m2, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zz)
            y = tl.sum(h * Ct[None, :, :], axis=2)
            if HAS_D:
                y = y + uu * Dv[:, None]
            dzv = do * y * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_ptr + g_row[:, None] + l[None, :], dzv, mask=m2)
            dy = do * zz * sz
        else:
            dy = do

        # adjoint: g_l = C_l dy_l + exp(Δ_{l+1} A) g_{l+1}, a reverse scan seeded with the carry
        x = dy[:, :, None] * Ct[None, :, :]
        x = x + tl.where(last_t, carry[:, None, :], 0.0)
        dA_n = tl.exp(dt_n[:, :, None] * A[:, None, :])
        _, g = tl.associative_scan((dA_n, x), axis=1, combine_fn=_ssm_combine, reverse=True)
        carry = tl.sum(tl.where(first_t, dA * g, 0.0), axis=1)

        hm = h - dBu  # exp(Δ_l A) h_{l-1}
        gB = tl.sum(g * Bt[None, :, :], axis=2)  # (BLOCK_D, CHUNK)
        ghm = g * hm
        d_dt = uu * gB + tl.sum(ghm * A[:, None, :], axis=2)
        dA_acc += tl.sum(ghm * dt[:, :, None], axis=1)
        du = dt * gB
        if HAS_D:
            du += dy * Dv[:, None]
            dD_acc += tl.sum(dy * uu, axis=1)
        if SOFTPLUS:
            d_dt = d_dt * tl.sigmoid(raw)
        d_dt = tl.where(m2, d_dt, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(d_dt, axis=1)
        tl.store(du_ptr + g_row[:, None] + l[None, :], du, mask=m2)
        tl.store(ddelta_ptr + g_row[:, None] + l[None, :], d_dt, mask=m2)
        dBc = tl.sum(g * dtu[:, :, None], axis=0)  # (CHUNK, BLOCK_N)
        tl.atomic_add(db_col[None, :] + l[:, None], dBc, mask=mtn)
        dCc = tl.sum(h * dy[:, :, None], axis=0)
        tl.atomic_add(dc_col[None, :] + l[:, None], dCc, mask=mtn)

    tl.store(dA_ptr + pid_b * DIM * NSTATE + dn_off, dA_acc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * DIM + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * DIM + offs_d, dbias_acc, mask=mask_d)


def _pow2_floor(x: int) -> int:
    return 1 << (max(1, int(x)).bit_length() - 1)


def _layout(
    u: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int | None
) -> tuple[Tensor, Tensor, int, int, int, int, int, int]:
    """(B4, C4, segments, channels per segment, segments per B group, per C group, chunk, BLOCK_N)."""
    b, d, L = u.shape
    B4 = B.unsqueeze(1) if B.dim() == 3 else B
    C4 = C.unsqueeze(1) if C.dim() == 3 else C
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


def _strides3(x: Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


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
        Dc = D.contiguous() if D is not None else u
        bc = delta_bias.contiguous() if delta_bias is not None else u
        zz = z if z is not None else u
        grid = (triton.cdiv(dg, block_d), segs, b)
        _scan_fwd_kernel[grid](
            u, delta, A, B4, C4, Dc, zz, bc, out, last, ckpt,
            L, d, dg, n, spb, spc, num_chunks,
            *_strides3(u), *_strides3(delta), A.stride(0), A.stride(1),
            *B4.stride(), *C4.stride(), *_strides3(zz),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk,
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
        Dc = D.contiguous() if D is not None else u
        bc = delta_bias.contiguous() if delta_bias is not None else u
        zz = z if z is not None else u
        grid = (triton.cdiv(dg, block_d), segs, b)
        _scan_bwd_kernel[grid](
            u, delta, A, B4, C4, Dc, zz, bc, dout, dlast, ckpt,
            du, ddelta, dz, dA, dD, dbias, dB, dC,
            L, d, dg, n, spb, spc, num_chunks, B4.shape[1], C4.shape[1],
            *_strides3(u), *_strides3(delta), A.stride(0), A.stride(1),
            *B4.stride(), *C4.stride(), *_strides3(zz), *_strides3(dout),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=ctx.delta_softplus, BLOCK_D=block_d, BLOCK_N=block_n, CHUNK=chunk,
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
