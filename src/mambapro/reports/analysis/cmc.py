"""The CMC figure: every checkpoint's CMC curve on one plot (``cmc.png``), first on the page."""

from __future__ import annotations

from mambapro.evaluation import plot_cmc
from mambapro.reports.analysis.context import Context

__all__ = ["cmc_section"]


def cmc_section(ctx: Context) -> None:
    """``cmc.png`` of every checkpoint's metrics, and its entry in the report's figures."""
    plot_cmc(ctx.out / "cmc.png", {r.label: r.result.cmc for r in ctx.runs}, title=f"{ctx.ds.name} CMC")
    ctx.figure(
        "cmc.png",
        "CMC curves",
        "Fraction of queries with a true match within the top k: higher, faster-rising curves are better.",
    )
