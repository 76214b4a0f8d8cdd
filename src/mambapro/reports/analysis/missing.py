"""The missing-modality table of ``analyze --missing all``: each checkpoint evaluated with every
modality setting (``missing_modality.txt`` and the ``missing`` section of the report)."""

from __future__ import annotations

from mambapro.evaluation import EvalResult, missing_modality_table
from mambapro.reports.analysis.context import Checkpoint, Context
from mambapro.retrieval.testing import evaluate_model
from mambapro.runtime import eval_amp

__all__ = ["missing_section"]


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
