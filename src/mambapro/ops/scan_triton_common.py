"""Triton device functions that the forward and backward scan kernels share.

How a program maps to channels (:func:`program_lanes`), the per-channel parameters it loads
(:func:`load_channel_params`), the step sizes Δ (:func:`step_sizes`, with :func:`softplus`) and
the scan operator of ``tl.associative_scan`` (:func:`ssm_combine`). They are ``@triton.jit``
functions, inlined into each kernel when it compiles, so sharing them costs the kernels nothing.

Programs: channels are split into *segments* of DG = D/G channels, G = lcm(G_B, G_C), so that
every channel of a segment reads the same group of B and of C; program (i, s, b) owns batch b,
segment s and its i-th block of BLOCK_D channels, and never reads another program's state.

* Lanes past D or L are masked with Δ = 0, which makes a step the identity (exp(0) = 1, no
  input), so a ragged last chunk or block needs no special case.
* softplus is computed with threshold 20 like torch's, with an accurate log1p
  (log(w)·e/(w − 1), w = 1 + e), so small Δ keep full relative precision.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["load_channel_params", "program_lanes", "softplus", "ssm_combine", "step_sizes"]


@triton.jit
def softplus(x):
    e = tl.exp(x)
    w = 1.0 + e
    # log1p(e) to a few ulp: log(w) * e / (w - 1) corrects the rounding of w (exact e when w == 1)
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def ssm_combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def step_sizes(raw, mask, SOFTPLUS: tl.constexpr):
    """Δ from raw = delta (+ delta_bias), any shape; 0 where ``mask`` is off, which makes a masked
    step the identity (exp(0) = 1, no input)."""
    if SOFTPLUS:
        dt = softplus(raw)
    else:
        dt = raw
    return tl.where(mask, dt, 0.0)


@triton.jit
def program_lanes(DG, NSTATE, SEG_PER_GB, SEG_PER_GC, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's lanes: (batch index (int64), channels (BLOCK_D,) and their mask, state lanes
    (BLOCK_N,) and their mask, the (BLOCK_D, BLOCK_N) mask of both, the B group and the C group
    its segment reads)."""
    pid_blk = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_k = pid_blk * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_k < DG
    offs_d = pid_s * DG + offs_k
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < NSTATE
    mask_dn = mask_d[:, None] & mask_n[None, :]
    return pid_b, offs_d, mask_d, offs_n, mask_n, mask_dn, pid_s // SEG_PER_GB, pid_s // SEG_PER_GC


@triton.jit
def load_channel_params(
    A_ptr,
    D_ptr,
    bias_ptr,
    offs_d,
    mask_d,
    offs_n,
    mask_dn,
    s_ad,
    s_an,
    HAS_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    """fp32 (A (BLOCK_D, BLOCK_N), D (BLOCK_D,), delta_bias (BLOCK_D,)) of the program's channels;
    an absent D or delta_bias is a 0.0 placeholder that the kernels never read (HAS_* False)."""
    A = tl.load(A_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn, other=0.0).to(
        tl.float32
    )
    Dv = 0.0
    bias = 0.0
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    return A, Dv, bias
