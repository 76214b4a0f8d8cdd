"""The Triton forward kernel of the selective scan: outputs, last state and chunk checkpoints.

One program per (block of BLOCK_D channels, segment, batch) (see
:mod:`mambapro.ops.scan_triton_common`) keeps the (BLOCK_D, N) state in registers and walks L
step by step: per step it loads u, Δ (BLOCK_D values), B_l, C_l (N values of its group), updates
h and writes y_l. At every chunk boundary (every CHUNK steps) it stores h, the *checkpoint* the
backward kernel (:mod:`mambapro.ops.scan_triton_bwd`) restarts from, and at the end the last
state. Memory: out (B, D, L) plus checkpoints (B, ⌈L/CHUNK⌉, D, N) fp32, the same
O(B·D·L + B·D·N·L/CHUNK) as mamba-ssm's CUDA kernel (which keeps its chunk-boundary states for
the backward too). Outputs are fp32; the launch (:mod:`mambapro.ops.scan_triton`) rounds them.
"""

from __future__ import annotations

import triton
import triton.language as tl

from mambapro.ops.scan_triton_common import load_channel_params, program_lanes, step_sizes

__all__ = ["scan_fwd_kernel"]


# Every argument is spelled out: a @triton.jit kernel takes pointers, integers and constexprs.
@triton.jit
def scan_fwd_kernel(
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
    pid_b, offs_d, mask_d, offs_n, mask_n, mask_dn, gb, gc = program_lanes(
        DG, NSTATE, SEG_PER_GB, SEG_PER_GC, BLOCK_D, BLOCK_N
    )
    A, Dv, bias = load_channel_params(
        A_ptr, D_ptr, bias_ptr, offs_d, mask_d, offs_n, mask_dn, s_ad, s_an, HAS_D, HAS_BIAS
    )
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
            raw = tl.load(dl_row + l * s_dl, mask=m, other=0.0).to(tl.float32)
            if HAS_BIAS:
                raw = raw + bias
            dt = step_sizes(raw, m, SOFTPLUS)
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
