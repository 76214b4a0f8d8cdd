"""Evaluating a model: under any modality subset, the missing-modality table, the report files,
and the ``test`` command.

:func:`evaluate_model` is the one path from a model and query/gallery samples to metrics: it
extracts features with the given modalities missing and hands them to
:func:`mambapro.evaluation.evaluate_features` with the ``test`` options of the config; the
missing-modality table loops over it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mambapro.config import Config
from mambapro.data import dataset_from_config, dataset_spec
from mambapro.engine.checkpoint import load_model
from mambapro.engine.features import check_model_cameras, eval_loader, extract_features
from mambapro.engine.runtime import eval_amp
from mambapro.errors import check_output_dir
from mambapro.evaluation import (
    EvalResult,
    evaluate_features,
    format_table,
    missing_modality_table,
    plot_cmc,
    save_results_json,
)
from mambapro.modalities import missing_label, parse_missing

__all__ = ["evaluate_model", "run_test", "write_report"]


def evaluate_model(
    model: nn.Module,
    cfg: Config,
    dataset_name: str,
    query: list,
    gallery: list,
    device: torch.device,
    amp: torch.dtype | None = None,
    quiet: bool = True,
    missing: str | None = None,
    rerank: bool | None = None,
) -> EvalResult:
    """Metrics of ``model`` on query against gallery samples with the ``missing`` modalities
    zeroed in both (default ``test.missing``), by the dataset's protocol and the ``test`` options
    (distance, re-ranking unless ``rerank`` says otherwise, CMC length)."""
    missing = parse_missing(missing or cfg.test.missing)
    check_model_cameras(model, query, f"{dataset_name} query")
    check_model_cameras(model, gallery, f"{dataset_name} gallery")
    qf = extract_features(model, eval_loader(cfg, query, dataset_name, missing), device, amp, quiet, "query")
    gf = extract_features(
        model, eval_loader(cfg, gallery, dataset_name, missing), device, amp, quiet, "gallery"
    )
    t = cfg.test
    result = evaluate_features(
        qf.labelled(),
        gf.labelled(),
        use_scenes=dataset_spec(dataset_name).has_scenes,
        metric=t.distance,
        max_rank=t.max_rank,
        rerank=t.rerank if rerank is None else rerank,
        k1=t.rerank_k1,
        k2=t.rerank_k2,
        lambda_value=t.rerank_lambda,
    )
    if result.num_skipped:
        warnings.warn(
            f"{dataset_name}: {result.num_skipped} of {result.num_skipped + result.num_valid} queries have "
            "no valid match in the gallery (same identity from another camera or scene) and are left "
            "out of mAP and CMC",
            stacklevel=2,
        )
    return result


def write_report(out_dir: str | Path, rows: dict[str, Any], title: str) -> str:
    """Save results.json, cmc.png and report.txt in ``out_dir``; return the text table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(rows, title=title)
    save_results_json(out / "results.json", rows)
    plot_cmc(out / "cmc.png", {name: r.cmc for name, r in rows.items()})
    (out / "report.txt").write_text(table + "\n")
    return table


def run_test(
    checkpoint: str | Path,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict | None = None,
    missing: str | None = None,
    rerank: bool = False,
    output: str | Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """The ``mambapro test`` command: result table, optional missing-modality table."""
    if missing is not None and missing != "all":
        missing = parse_missing(missing)
    out = Path(output) if output is not None else Path(checkpoint).parent / "test"
    check_output_dir(out, "--output")
    model, cfg, _ = load_model(checkpoint, config, overrides, extra)
    if rerank:
        cfg.test.rerank = True
    device = next(model.parameters()).device
    amp = eval_amp(cfg, device)
    ds = dataset_from_config(cfg.data, generate=False)

    def evaluate_setting(setting: str) -> EvalResult:
        return evaluate_model(model, cfg, ds.name, ds.query, ds.gallery, device, amp, quiet, missing=setting)

    setting = missing if missing not in (None, "all") else cfg.test.missing
    label = missing_label(setting)
    res = evaluate_setting(setting)
    reranked = " (re-ranked)" if cfg.test.rerank else ""
    table = write_report(out, {label: res}, title=f"{ds.name} test set{reranked}")
    print(table)
    result: dict[str, Any] = {"result": res, "table": table}
    if missing == "all":
        # The row already evaluated above is reused rather than extracted again.
        rows, mm_table = missing_modality_table(
            lambda m: res if missing_label(m) == label else evaluate_setting(m),
            title=f"{ds.name} test set, missing modalities{reranked}",
        )
        print(mm_table)
        (out / "missing_modality.txt").write_text(mm_table + "\n")
        save_results_json(out / "missing_modality.json", rows)
        result["missing"] = rows
    print(f"results written to {out}")
    return result
