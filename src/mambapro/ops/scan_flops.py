"""The selective scan's cost in the paper's convention, and its registration with FlopCounterMode.

A forward scan counts 9·B·L·D·N multiply-accumulates (the paper's and VMamba's convention). The
torch backend's custom ops are registered with ``torch.utils.flop_counter`` (by
:mod:`mambapro.ops.scan_torch`, through :func:`register_scan_flops`) so that ``FlopCounterMode``
reports a forward as 2·9·B·L·D·N "FLOPs", the same 2-per-MAC convention it uses for matmuls, and
the backward as twice the forward (the usual 2× rule, as for matmuls).
"""

from __future__ import annotations

from torch.utils.flop_counter import register_flop_formula

__all__ = ["register_scan_flops", "selective_scan_macs"]


def selective_scan_macs(batch: int, dim: int, length: int, d_state: int) -> int:
    """Multiply-accumulates of one forward selective scan as the paper counts it: 9·B·L·D·N."""
    return 9 * batch * length * dim * d_state


def register_scan_flops(fwd_op: object, bwd_op: object) -> None:
    """Register the FLOP formulas of the forward op (u: (B, D, L) and A: (D, N) its first and third
    arguments) and of the backward op (u and A its third and fifth)."""

    @register_flop_formula(fwd_op)
    def _scan_fwd_flops(u_shape, delta_shape, A_shape, *args, out_shape=None, **kwargs) -> int:
        b, d, L = u_shape
        return 2 * selective_scan_macs(b, d, L, A_shape[1])

    @register_flop_formula(bwd_op)
    def _scan_bwd_flops(
        dout_shape, dlast_shape, u_shape, delta_shape, A_shape, *args, out_shape=None, **kwargs
    ) -> int:
        b, d, L = u_shape
        return 2 * 2 * selective_scan_macs(b, d, L, A_shape[1])
