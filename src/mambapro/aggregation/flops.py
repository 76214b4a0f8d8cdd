"""Per-sample multiply-accumulates (MACs) of aggregators, counted with torch's FlopCounterMode.

Convention. The paper's "FLOPs" are MAC counts (its Transformer row, 1.36 G, is exactly the MACs
of one block over 384 tokens; FlopCounterMode would report 2.72 G FLOPs for it), and it counts a
selective scan as 9·L·D·N (the rule of VMamba's fvcore-based counter, in MACs). So
:func:`count_macs` reports FlopCounterMode's FLOPs / 2, and ``mambapro.ops`` registers the scan
as 2·9·L·D·N FLOPs (= 9·L·D·N MACs). Element-wise work (norms, activations, softplus, the gate)
is not counted, as in the paper's fvcore-based numbers.

At 3 × 128 tokens, C = 512 (``aggregator_flops_table``) this gives Transformer 1.359 G (paper
1.36), Intra-MA and Inter-MA 0.705 G (0.71), MA 1.410 G (1.42), all within 1%; Concat 0.102 G
(0.10); Sum 0.002 G (printed 0.01 in the paper); MA(Trans) 2.62 G (paper 1.81, see
``transformer.py``).

torch 2.14's FlopCounterMode has no rule for the CPU attention kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``, what ``F.scaled_dot_product_attention``
runs on CPU) and would count attention as zero there; :func:`count_macs` adds torch's own SDPA
formulas for it through ``custom_mapping`` (no global registration).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

import mambapro.ops  # noqa: F401  (registers the selective scan's FLOP formula)
from mambapro.parts import AGGREGATORS

__all__ = ["PAPER_TABLE", "aggregator_flops", "aggregator_flops_table", "count_macs"]

#: The paper's Tables 6 and 11 (params in M, GFLOPs = G MACs) for the aggregators at C = 512,
#: 3 × 128 tokens; the Mamba and attention rows are single blocks (depth 1).
PAPER_TABLE: dict[str, tuple[float, float]] = {
    "sum": (1.58, 0.01),
    "concat": (2.37, 0.10),
    "transformer": (4.73, 1.36),
    "intra_ma": (5.64, 0.71),
    "inter_ma": (5.41, 0.71),
    "ma": (9.47, 1.42),
    "ma_transformer": (14.19, 1.81),
}


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


_EXTRA_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def count_macs(module: nn.Module, inputs: Sequence[Tensor]) -> dict[str, int]:
    """MACs per sample of one forward ``module(*inputs)``, per module.

    Args:
        module: any nn.Module; it runs once under ``torch.no_grad()``.
        inputs: its positional inputs; dim 0 of the first is the batch size.

    Returns:
        ``{"total": n, "<Root>.<child>...": n, ...}``: every module that ran (dotted names from
        torch's ModuleTracker, the root named by its class), MACs per sample.
    """
    if not inputs or inputs[0].dim() == 0:
        raise ValueError("count_macs: inputs must be a non-empty sequence of batched tensors")
    batch = inputs[0].shape[0]
    counter = FlopCounterMode(display=False, depth=None, custom_mapping=_EXTRA_FORMULAS)
    with counter, torch.no_grad():
        module(*inputs)
    out = {}
    for name, per_op in counter.get_flop_counts().items():
        out["total" if name == "Global" else name] = sum(per_op.values()) // (2 * batch)
    out.setdefault("total", 0)
    return out


#: Aggregators without stacked blocks (``depth`` does not apply).
_DEPTHLESS = ("none", "sum", "concat")


def _table_rows() -> list[tuple[str, int]]:
    rows = [(name, 1) for name in AGGREGATORS.names()]
    rows.append(("ma", 2))  # the default MA (2 blocks); the paper's table rows are single blocks
    return rows


def aggregator_flops(dim: int = 512, grid: tuple[int, int] = (16, 8)) -> list[dict[str, Any]]:
    """Parameters and MACs per sample of every registered aggregator at width ``dim`` over
    three modalities of ``grid`` patch tokens (plus the cls token), one dict per row:
    ``aggregator``, ``depth`` (None where blocks do not stack), ``params``, ``macs`` and, at the
    paper's sizes (C = 512, H·W = 128) for its single-block rows, ``paper_params_m`` and
    ``paper_gflops`` (None elsewhere).

    The paper's rows are single blocks, so each stackable aggregator is shown at depth 1 (plus the
    default 2-block MA).
    """
    from mambapro.aggregation import build_aggregator

    h, w = grid
    paper = dim == 512 and h * w == 128
    torch.manual_seed(0)
    tokens = [torch.randn(1, 1 + h * w, dim) for _ in range(3)]
    rows = []
    for name, depth in _table_rows():
        module = build_aggregator(name, dim=dim, grid=grid, depth=depth).eval()
        ref = PAPER_TABLE.get(name) if paper and depth == 1 else None
        rows.append(
            {
                "aggregator": name,
                "depth": None if name in _DEPTHLESS else depth,
                "params": sum(p.numel() for p in module.parameters()),
                "macs": count_macs(module, tokens)["total"],
                "paper_params_m": ref[0] if ref else None,
                "paper_gflops": ref[1] if ref else None,
            }
        )
    return rows


def aggregator_flops_table(dim: int = 512, grid: tuple[int, int] = (16, 8)) -> str:
    """The text table of :func:`aggregator_flops`, the paper's numbers alongside at its sizes."""
    h, w = grid
    paper = dim == 512 and h * w == 128
    header = f"{'aggregator':<16}{'depth':>6}{'params':>14}{'GMACs':>9}"
    if paper:
        header += f"{'paper params':>14}{'paper GFLOPs':>14}"
    lines = [
        f"aggregators at C = {dim}, {h}x{w} tokens per modality (3 x {h * w}); MACs per sample, "
        "selective scan = 9*L*D*N",
        header,
        "-" * len(header),
    ]
    for row in aggregator_flops(dim, grid):
        depth = "-" if row["depth"] is None else str(row["depth"])
        line = f"{row['aggregator']:<16}{depth:>6}{row['params']:>14,}{row['macs'] / 1e9:>9.3f}"
        if paper:
            line += (
                f"{row['paper_params_m']:>13.2f}M{row['paper_gflops']:>14.2f}"
                if row["paper_params_m"] is not None
                else f"{'-':>14}{'-':>14}"
            )
        lines.append(line)
    return "\n".join(lines)
