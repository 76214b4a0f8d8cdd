"""Multi-modal aggregation: Mamba Aggregation (MA) and every alternative of the paper's Tables 6/11.

``build_aggregator(name, ...)`` builds the module named by ``model.aggregator``; each maps three
(B, 1 + H·W, C) token tensors (RGB, NI, TI; cls first) to a (B, 3·C) feature (``out_dim``).
Parameter counts at C = 512 equal SPEC §5 exactly (see each module's docstring for the
derivation); ``count_macs`` / ``aggregator_flops_table`` give per-sample MACs in the paper's
convention.
"""

from __future__ import annotations

from torch import nn

from mambapro.aggregation.base import (
    AGGREGATORS,
    MODALITIES,
    ModalityReadout,
    PatchAggregator,
    TriModalReadout,
    check_grid,
)
from mambapro.aggregation.flops import PAPER_TABLE, aggregator_flops_table, count_macs
from mambapro.aggregation.ma import (
    InterModalityMA,
    IntraModalityMA,
    MABlock,
    MambaAggregator,
    ModalityConv,
    SelectiveSSM,
)
from mambapro.aggregation.simple import ConcatAggregator, NoAggregator, SumAggregator
from mambapro.aggregation.transformer import MATransformerAggregator, TransformerAggregator
from mambapro.ops import SCAN_BACKENDS

__all__ = [
    "AGGREGATORS",
    "MODALITIES",
    "PAPER_TABLE",
    "ConcatAggregator",
    "InterModalityMA",
    "IntraModalityMA",
    "MABlock",
    "MATransformerAggregator",
    "MambaAggregator",
    "ModalityConv",
    "ModalityReadout",
    "NoAggregator",
    "PatchAggregator",
    "SelectiveSSM",
    "SumAggregator",
    "TransformerAggregator",
    "TriModalReadout",
    "aggregator_flops_table",
    "build_aggregator",
    "count_macs",
]


# Every constructor takes the same keyword arguments (those of build_aggregator); the simple
# aggregators ignore the ones that do not apply to them.


@AGGREGATORS.register("none")
def _none(*, dim: int, grid: tuple[int, int], **_: object) -> nn.Module:
    return NoAggregator(dim, grid)


@AGGREGATORS.register("sum")
def _sum(*, dim: int, grid: tuple[int, int], **_: object) -> nn.Module:
    return SumAggregator(dim, grid)


@AGGREGATORS.register("concat")
def _concat(*, dim: int, grid: tuple[int, int], **_: object) -> nn.Module:
    return ConcatAggregator(dim, grid)


@AGGREGATORS.register("transformer")
def _transformer(*, dim: int, grid: tuple[int, int], depth: int, **_: object) -> nn.Module:
    return TransformerAggregator(dim, grid, depth=depth)


def _ma(mode: str):
    def build(
        *,
        dim: int,
        grid: tuple[int, int],
        depth: int,
        d_state: int,
        dt_rank: int,
        expand: int,
        bidirectional: bool,
        scan_backend: str,
        ma_init: str,
    ) -> nn.Module:
        return MambaAggregator(
            dim,
            grid,
            depth=depth,
            mode=mode,
            d_state=d_state,
            dt_rank=dt_rank,
            expand=expand,
            bidirectional=bidirectional,
            scan_backend=scan_backend,
            init=ma_init,
        )

    return build


AGGREGATORS.register("intra_ma")(_ma("intra"))
AGGREGATORS.register("inter_ma")(_ma("inter"))
AGGREGATORS.register("ma")(_ma("both"))


@AGGREGATORS.register("ma_transformer")
def _ma_transformer(*, dim: int, grid: tuple[int, int], depth: int, **_: object) -> nn.Module:
    return MATransformerAggregator(dim, grid, depth=depth)


def build_aggregator(
    name: str,
    dim: int = 512,
    grid: tuple[int, int] = (16, 8),
    depth: int = 2,
    d_state: int = 16,
    dt_rank: int = 32,
    expand: int = 2,
    bidirectional: bool = False,
    scan_backend: str = "torch",
    ma_init: str = "release",
) -> nn.Module:
    """Build the aggregator registered as ``name`` (a value of ``model.aggregator``).

    Args:
        name: one of ``AGGREGATORS.names()``: none, sum, concat, transformer, intra_ma,
            inter_ma, ma, ma_transformer.
        dim: token width C (512 for CLIP ViT-B/16's projection).
        grid: (H, W) patch grid per modality: (16, 8) for 256×128 inputs, (8, 16) for 128×256.
        depth: stacked blocks of transformer / intra_ma / inter_ma / ma / ma_transformer (the
            paper's default MA has 2; its Table 6 and 11 rows have 1); ignored by none/sum/concat.
        d_state, dt_rank, expand, bidirectional: the SSM's N, Δ rank, width factor and scan
            direction(s) (MA variants only).
        scan_backend: selective-scan implementation, ``torch``, ``mamba_ssm`` or ``auto``.
        ma_init: ``release`` (every Linear trunc-normal, zero bias, as the authors' AAM) or
            ``mamba`` (Mamba's Δ initialisation); MA variants only.

    Returns:
        An nn.Module with ``forward(r, n, t) -> (B, 3·dim)`` and ``out_dim = 3·dim``.
    """
    for key, value in (("dim", dim), ("depth", depth), ("d_state", d_state), ("dt_rank", dt_rank)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"build_aggregator('{name}'): {key} = {value!r} must be a positive integer")
    if not isinstance(expand, int) or expand < 1:
        raise ValueError(f"build_aggregator('{name}'): expand = {expand!r} must be a positive integer")
    if scan_backend not in SCAN_BACKENDS:
        raise ValueError(
            f"build_aggregator('{name}'): scan_backend = {scan_backend!r} is not one of: "
            f"{', '.join(SCAN_BACKENDS)}"
        )
    return AGGREGATORS.get(name)(
        dim=dim,
        grid=check_grid(grid),
        depth=depth,
        d_state=d_state,
        dt_rank=dt_rank,
        expand=expand,
        bidirectional=bool(bidirectional),
        scan_backend=scan_backend,
        ma_init=ma_init,
    )
