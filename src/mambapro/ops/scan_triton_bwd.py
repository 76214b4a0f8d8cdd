"""The Triton backward kernel of the selective scan: every input gradient from the checkpoints.

One program per (block of channels, segment, batch) (see :mod:`mambapro.ops.scan_triton_common`)
walks the chunks in reverse, as mamba-ssm's ``selective_scan_bwd_kernel`` does. For one chunk it
loads the chunk's inputs as (BLOCK_D, CHUNK) tiles, rebuilds the chunk's states from the
checkpoint the forward kernel saved (:mod:`mambapro.ops.scan_triton_fwd`) with a parallel
``tl.associative_scan`` of the pairs (exp(Δ_l A), Δ_l B_l u_l) under
(a1, b1)∘(a2, b2) = (a1·a2, a2·b1 + b2), and runs the adjoint
g_l = C_l dy_l + exp(Δ_{l+1} A) ⊙ g_{l+1} as a *reverse* associative scan of the same operator,
seeded at the chunk's end by the carry exp(Δ_{l1} A) ⊙ g_{l1} of the later chunk (d last_state
for the final chunk). A step-by-step reverse walk would need h_{l-1} at step l, which can only be
recovered by dividing by exp(Δ_l A) (unstable) or by spilling the chunk's states to memory; the
in-register scan needs neither. Like the CUDA kernel, the term exp(Δ_l A) ⊙ h_{l-1} needed by dA
and dΔ is taken as h_l − Δ_l B_l u_l (a subtraction, no division). Every input gradient of the
chunk is then a tile reduction: du, dΔ, dz are stored per (channel, step); dA, dD, d delta_bias
are accumulated in registers per channel and stored per batch (summed over the batch on the
host); dB, dC are reduced over the block's channels and added with ``tl.atomic_add`` into fp32
(B, G, N, L) buffers (the CUDA kernel also uses atomics there), so their summation order is not
deterministic. Memory: the gradients plus those fp32 buffers; nothing of size (B, D, N, L).
"""

from __future__ import annotations

import triton
import triton.language as tl

from mambapro.ops.scan_triton_common import load_channel_params, program_lanes, ssm_combine, step_sizes

__all__ = ["scan_bwd_kernel"]


# Every argument is spelled out: a @triton.jit kernel takes pointers, integers and constexprs.
@triton.jit
def scan_bwd_kernel(
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
    pid_b, offs_d, mask_d, offs_n, mask_n, mask_dn, gb, gc = program_lanes(
        DG, NSTATE, SEG_PER_GB, SEG_PER_GC, BLOCK_D, BLOCK_N
    )
    offs_t = tl.arange(0, CHUNK)
    A, Dv, bias = load_channel_params(
        A_ptr, D_ptr, bias_ptr, offs_d, mask_d, offs_n, mask_dn, s_ad, s_an, HAS_D, HAS_BIAS
    )
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
        dt = step_sizes(raw, m2, SOFTPLUS)
        dt_n = step_sizes(raw_n, m2n, SOFTPLUS)
        Bt = tl.load(b_col[None, :] + l[:, None] * s_bl, mask=mtn, other=0.0).to(tl.float32)
        Ct = tl.load(c_col[None, :] + l[:, None] * s_cl, mask=mtn, other=0.0).to(tl.float32)

        # the chunk's states from its checkpoint: h_l = P_l h0 + S_l
        dA = tl.exp(dt[:, :, None] * A[:, None, :])  # (BLOCK_D, CHUNK, BLOCK_N)
        dtu = dt * uu
        dBu = dtu[:, :, None] * Bt[None, :, :]
        a_cum, h_loc = tl.associative_scan((dA, dBu), axis=1, combine_fn=ssm_combine)
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
        _, g = tl.associative_scan((dA_n, x), axis=1, combine_fn=ssm_combine, reverse=True)
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
