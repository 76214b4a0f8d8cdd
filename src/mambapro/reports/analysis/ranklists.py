"""The rank-list figures: for each checkpoint, the top gallery captures of each worst query
(:func:`mambapro.retrieval.search.draw_rank_list`), and the ``rank_lists`` section of the report."""

from __future__ import annotations

from mambapro.reports.analysis.context import Context
from mambapro.retrieval.search import draw_rank_list, rank_gallery

__all__ = ["rank_list_section"]


def rank_list_section(ctx: Context, worst: list[int], k: int) -> None:
    """``ranklist-<label>-q<i>.png`` of each worst query's top ``k`` per checkpoint."""
    ctx.report["rank_lists"] = {}
    for r in ctx.runs:
        files = []
        for i in worst:
            matches = rank_gallery(r.dist[i], r.query.paths[i], int(r.query.pids[i]), r.gallery, k)
            file = f"ranklist-{r.label}-q{i}.png"
            draw_rank_list(r.query.paths[i], matches, ctx.ds.spec, ctx.out / file, r.model.modalities)
            files.append(file)
            ctx.figure(
                file,
                f"Rank list of a worst query (query {i}, id {int(r.query.pids[i])}): {r.label}",
                f"The query (blue) then its top {k} gallery captures, green: same identity, red: "
                "another: look at what the false matches share with the query.",
            )
        ctx.report["rank_lists"][r.label] = files
