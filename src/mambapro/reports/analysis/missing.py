"""Missing modalities on the analysis page: ``analyze --missing all``, each checkpoint evaluated
with every modality setting (``missing_modality.txt`` and the report's ``missing`` section), and
``--missing cross``, every query subset against every gallery subset (a heat map per
checkpoint, ``missing_cross.txt`` and the report's ``missing_cross``)."""

from __future__ import annotations

from mambapro.evaluation import EvalResult, missing_modality_table
from mambapro.reports.analysis.context import Checkpoint, Context
from mambapro.retrieval.testing import (
    cross_cells,
    cross_missing_matrix,
    evaluate_model,
    format_cross_matrix,
    plot_cross_cells,
)
from mambapro.runtime import eval_amp

__all__ = ["cross_section", "missing_section"]


def missing_section(ctx: Context) -> list[str]:
    """The missing-modality table per checkpoint (its full row is the metrics above): one row per
    setting of the model's modalities (3 for two modalities, 7 for three, 15 for four)."""
    ctx.report["missing"] = {}
    tables = []
    for r in ctx.runs:
        device = next(r.model.parameters()).device
        amp = eval_amp(r.cfg, device)

        def evaluate_setting(setting: str, r: Checkpoint = r, device=device, amp=amp) -> EvalResult:
            if setting == "full":
                return r.result
            ds = ctx.ds
            return evaluate_model(
                r.model, r.cfg, ds.spec, ds.query, ds.gallery, device, amp, ctx.quiet, setting, rerank=False
            )

        rows, table = missing_modality_table(
            evaluate_setting,
            modalities=r.model.modalities,
            title=f"{ctx.ds.name}, missing modalities: {r.label}",
        )
        tables.append(table)
        ctx.report["missing"][r.label] = {k: v.to_json() for k, v in rows.items()}
    (ctx.out / "missing_modality.txt").write_text("\n\n".join(tables) + "\n")
    return tables


def cross_section(ctx: Context) -> list[str]:
    """Any-to-any retrieval per checkpoint: the settings x settings matrix of the model's
    modalities (7 x 7 for three), as ``test --missing cross`` computes it."""
    ctx.report["missing_cross"] = {}
    tables = []
    for r in ctx.runs:
        device = next(r.model.parameters()).device
        ds = ctx.ds
        matrix = cross_missing_matrix(
            r.model, r.cfg, ds.spec, ds.query, ds.gallery, device, eval_amp(r.cfg, device), ctx.quiet
        )
        modalities = r.model.modalities
        cells = cross_cells(matrix, modalities)
        ctx.report["missing_cross"][r.label] = cells
        file = f"missing_cross-{r.label}.png"
        plot_cross_cells(ctx.out / file, cells, f"{ds.name}, {r.label}: mAP (%), query vs gallery modalities")
        ctx.figure(
            file,
            f"Any-to-any retrieval: {r.label}",
            "mAP of every query subset of the modalities (rows) against every gallery subset "
            "(columns), each subset's missing modalities zeroed; the diagonal is the missing-modality "
            "table, the top-left cell the full model.",
        )
        tables.append(
            "\n\n".join(
                [
                    f"{ds.name}, any-to-any retrieval: {r.label} (rows: query modalities, columns: gallery)",
                    format_cross_matrix(matrix, "mAP", modalities),
                    format_cross_matrix(matrix, "Rank-1", modalities),
                ]
            )
        )
    (ctx.out / "missing_cross.txt").write_text("\n\n".join(tables) + "\n")
    return tables
