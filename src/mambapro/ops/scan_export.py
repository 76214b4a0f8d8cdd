"""The selective scan in plain tensor operations, for exported models (``mambapro export``).

The ``torch`` backend is a ``torch.library.custom_op`` with in-place buffers: fast, but a graph
that holds it needs this package's Python code to run, and ONNX has no such operator. The two
forms here use only standard operators, so ``torch.export`` and the ONNX exporter can trace them
and the exported file runs without ``mambapro`` (``onnxruntime`` or bare ``torch``):

* ``unrolled``: the recurrence written out step by step, L steps in the graph.
* ``hop``: one step function handed to torch's ``scan`` higher-order operator (the graph stays
  the size of one step; ``torch.export`` keeps it as a loop, the ONNX exporter cannot yet lower it
  with a dynamic batch).
* ``parallel``: the recurrence h_l = a_l h_{l-1} + x_l as a Hillis-Steele prefix scan over the
  pairs (a, x) within chunks of T steps: ceil(log2 T) vectorised steps per chunk, each combining
  element l with element l - k, then the state entering the chunk is carried in. Only products
  of decays a <= 1 are formed, so, unlike the log-space cumsum form, nothing overflows; it does
  O(L log T) work on (T, B, D, N) arrays instead of L small steps.

Both compute exactly the recurrence of :func:`mambapro.ops.selective_scan` (its docstring gives
the semantics) in fp32; which one ``mambapro export`` uses is chosen by
``benchmarks/bench_export.py`` (docs/benchmarks.md). Training never needs them: they record L steps for
autograd, like mamba-ssm's reference loop.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch._higher_order_ops.scan import scan as _scan_hop

from mambapro.ops.scan_contract import as_groups, skip_and_gate, step_sizes
from mambapro.parts import EXPORT_FORMS

__all__ = ["EXPORT_FORMS", "selective_scan_export"]

# Steps per prefix scan of the parallel form: whole-sequence scans of ViT-B's 387 tokens at batch
# 32 held tens of GB in onnxruntime; chunks of 32 keep each array under 100 MB there.
PARALLEL_CHUNK = 32


def _step(h: Tensor, dt: Tensor, dtu: Tensor, B: Tensor, C: Tensor, A: Tensor) -> tuple[Tensor, Tensor]:
    """One time step. h: (b, g, d/g, N); dt, dtu: (b, g, d/g); B, C: (b, g, N); A: (g, d/g, N).

    Returns the new state and y = C · h (b, g, d/g)."""
    h = torch.exp(dt.unsqueeze(-1) * A) * h + dtu.unsqueeze(-1) * B.unsqueeze(2)
    return h, (h * C.unsqueeze(2)).sum(-1)


def selective_scan_export(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    form: str = "unrolled",
    chunk: int = PARALLEL_CHUNK,
) -> Tensor:
    """The selective scan (shapes as :func:`mambapro.ops.selective_scan`) in traceable operators.

    ``B`` and ``C`` must share their group count (MambaPro's are ungrouped, (B, N, L)).
    ``chunk``: time steps per prefix scan of the ``parallel`` form (memory ~ chunk·B·D·N).
    Returns out (B, D, L) in ``u``'s dtype.
    """
    if form not in EXPORT_FORMS:
        raise ValueError(f"selective_scan_export: form = {form!r} is not one of: {', '.join(EXPORT_FORMS)}")
    b, d, L = u.shape
    n = A.shape[1]
    Bg, Cg = as_groups(B), as_groups(C)  # (b, g, N, L)
    if Bg.shape[1] != Cg.shape[1]:
        raise ValueError("selective_scan_export: B and C must have the same number of groups")
    g = Bg.shape[1]
    u32 = u.float()
    _, dt = step_sizes(delta, delta_bias, delta_softplus)
    # Time-major, channels split by group: (L, b, g, d/g) and (L, b, g, N).
    dt_t = dt.reshape(b, g, d // g, L).permute(3, 0, 1, 2)
    dtu_t = (dt * u32).reshape(b, g, d // g, L).permute(3, 0, 1, 2)
    B_t = Bg.float().permute(3, 0, 1, 2)
    C_t = Cg.float().permute(3, 0, 1, 2)
    A_g = A.float().reshape(g, d // g, n)
    h0 = u32.new_zeros(b, g, d // g, n)
    if form == "unrolled":
        h, ys = h0, []
        for t in range(L):
            h, y = _step(h, dt_t[t], dtu_t[t], B_t[t], C_t[t], A_g)
            ys.append(y)
        y_t = torch.stack(ys, 0)
    elif form == "parallel":
        ys, h = [], h0
        for t0 in range(0, L, chunk):
            # Chunks bound the memory of the (T, b, d, N) arrays; the state carries across them.
            a = torch.exp(dt_t[t0 : t0 + chunk].unsqueeze(-1) * A_g)  # (T, b, g, d/g, N)
            x = dtu_t[t0 : t0 + chunk].unsqueeze(-1) * B_t[t0 : t0 + chunk].unsqueeze(3)
            k, T = 1, a.shape[0]
            while k < T:
                x = torch.cat([x[:k], a[k:] * x[:-k] + x[k:]], dim=0)
                a = torch.cat([a[:k], a[k:] * a[:-k]], dim=0)
                k *= 2
            states = x + a * h  # a is now the running product of the chunk's decays
            ys.append((states * C_t[t0 : t0 + chunk].unsqueeze(3)).sum(-1))
            h = states[-1]
        y_t = torch.cat(ys, dim=0)
    else:

        def combine(h: Tensor, xs: tuple[Tensor, Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            h, y = _step(h, *xs, A_g)
            return h, y.clone()

        _, y_t = _scan_hop(combine, h0, (dt_t, dtu_t, B_t, C_t), dim=0)
    y = skip_and_gate(y_t.permute(1, 2, 3, 0).reshape(b, d, L), u32, D, z)
    return y.to(u.dtype)
