"""Multi-modal aggregation: Mamba Aggregation (MA) and every alternative of the paper's Tables 6/11.

``build_aggregator(name, ...)`` builds the module named by ``model.aggregator``; each maps M
(B, 1 + H·W, C) token tensors (RGB, NI, TI in the paper; cls first) to a (B, M·C) feature (``out_dim``).
The names are those of ``mambapro.parts.AGGREGATORS``, whose lazy entries point at the
constructors below; the settings (``model.ma_*``, ``model.scan_backend``) travel as one
:class:`~mambapro.parts.MASettings`.
Parameter counts at C = 512 equal the paper's (Table 3) exactly (see each module's docstring for the
derivation); ``count_macs`` / ``aggregator_flops_table`` give per-sample MACs in the paper's
convention.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mambapro.aggregation.base import (
    AGGREGATORS,
    MODALITIES,
    ModalityReadout,
    PatchAggregator,
    TriModalReadout,
    check_grid,
    check_num_modalities,
)
from mambapro.aggregation.flops import PAPER_TABLE, aggregator_flops, aggregator_flops_table, count_macs
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
from mambapro.parts import MASettings

__all__ = [
    "AGGREGATORS",
    "MODALITIES",
    "PAPER_TABLE",
    "ConcatAggregator",
    "InterModalityMA",
    "MASettings",
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
    "aggregator_flops",
    "aggregator_flops_table",
    "build_aggregator",
    "concat_aggregator",
    "count_macs",
    "inter_ma_aggregator",
    "intra_ma_aggregator",
    "ma_aggregator",
    "ma_transformer_aggregator",
    "no_aggregator",
    "sum_aggregator",
    "transformer_aggregator",
]


# The constructors that ``mambapro.parts.AGGREGATORS`` names (lazily). Every one takes the same
# keyword arguments: the token width, the (H, W) grid, the MA settings and the modality count;
# of the settings the simple aggregators use nothing and the Transformer ones only the depth.


def no_aggregator(*, dim: int, grid: tuple[int, int], ma: MASettings, num_modalities: int = 3) -> nn.Module:
    return NoAggregator(dim, grid, num_modalities)


def sum_aggregator(*, dim: int, grid: tuple[int, int], ma: MASettings, num_modalities: int = 3) -> nn.Module:
    return SumAggregator(dim, grid, num_modalities)


def concat_aggregator(
    *, dim: int, grid: tuple[int, int], ma: MASettings, num_modalities: int = 3
) -> nn.Module:
    return ConcatAggregator(dim, grid, num_modalities)


def transformer_aggregator(
    *, dim: int, grid: tuple[int, int], ma: MASettings, num_modalities: int = 3
) -> nn.Module:
    return TransformerAggregator(dim, grid, depth=ma.depth, num_modalities=num_modalities)


def intra_ma_aggregator(
    *, dim: int, grid: tuple[int, int], ma: MASettings, num_modalities: int = 3
) -> nn.Module:
    return MambaAggregator(dim, grid, mode="intra", ma=ma, num_modalities=num_modalities)


def inter_ma_aggregator(
    *, dim: int, grid: tuple[int, int], ma: MASettings, num_modalities: int = 3
) -> nn.Module:
    return MambaAggregator(dim, grid, mode="inter", ma=ma, num_modalities=num_modalities)


def ma_aggregator(*, dim: int, grid: tuple[int, int], ma: MASettings, num_modalities: int = 3) -> nn.Module:
    return MambaAggregator(dim, grid, mode="both", ma=ma, num_modalities=num_modalities)


def ma_transformer_aggregator(
    *, dim: int, grid: tuple[int, int], ma: MASettings, num_modalities: int = 3
) -> nn.Module:
    return MATransformerAggregator(dim, grid, depth=ma.depth, num_modalities=num_modalities)


def build_aggregator(
    name: str,
    dim: int = 512,
    grid: tuple[int, int] = (16, 8),
    ma: MASettings | None = None,
    num_modalities: int = 3,
    **changes: Any,
) -> nn.Module:
    """Build the aggregator registered as ``name`` (a value of ``model.aggregator``).

    Args:
        name: one of ``AGGREGATORS.names()``: none, sum, concat, transformer, intra_ma,
            inter_ma, ma, ma_transformer.
        dim: token width C (512 for CLIP ViT-B/16's projection).
        grid: (H, W) patch grid per modality: (16, 8) for 256×128 inputs, (8, 16) for 128×256.
        ma: the settings (``MASettings.from_config(cfg.model)`` in a run); default
            ``MASettings()``: depth 2, N = 16, R = 32, expand 2, one direction, the release's
            init, the ``torch`` scan.
        num_modalities: M, one token tensor per modality (3 in the paper; 2 to 4).
        **changes: attributes of ``ma`` to replace, e.g. ``depth=1`` (stacked blocks of
            transformer / intra_ma / inter_ma / ma / ma_transformer: the paper's default MA has
            2, its Table 6 and 11 rows 1), ``d_state``, ``dt_rank``, ``expand``,
            ``bidirectional``, ``init``, ``scan_backend``.

    Returns:
        An nn.Module with ``forward(*tokens) -> (B, M·dim)`` (one token tensor per modality)
        and ``out_dim = M·dim``.
    """
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"build_aggregator('{name}'): dim = {dim!r} must be a positive integer")
    try:
        settings = (ma or MASettings()).replace(**changes)
    except ValueError as err:
        raise ValueError(f"build_aggregator('{name}'): {err}") from None
    return AGGREGATORS.get(name)(
        dim=dim, grid=check_grid(grid), ma=settings, num_modalities=check_num_modalities(num_modalities)
    )
