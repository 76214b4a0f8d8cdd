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
from mambapro.data.fingerprint import dataset_fingerprint, same_eval_split
from mambapro.evaluation import (
    EvalResult,
    evaluate_features,
    format_table,
    missing_modality_table,
    plot_cmc,
    plot_heatmap,
    save_results_json,
)
from mambapro.modalities import (
    MISSING_SETTINGS,
    missing_label,
    parse_missing,
    parse_missing_request,
    present_label,
)
from mambapro.options import check_test_options
from mambapro.retrieval.features import FeatureSet, check_model_cameras, eval_loader, extract_features
from mambapro.runtime import eval_amp
from mambapro.train.checkpoint import load_model

__all__ = ["cross_missing_matrix", "evaluate_model", "format_cross_matrix", "run_test", "write_report"]


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
    gallery_missing: str | None = None,
) -> EvalResult:
    """Metrics of ``model`` on query against gallery samples with the ``missing`` modalities
    zeroed (default ``test.missing``; in the gallery ``gallery_missing`` when given, else the
    same), by the dataset's protocol and the ``test`` options (distance, re-ranking unless
    ``rerank`` says otherwise, CMC length)."""
    missing = parse_missing(missing or cfg.test.missing)
    gallery_missing = missing if gallery_missing is None else parse_missing(gallery_missing)
    check_model_cameras(model, query, f"{dataset_name} query")
    check_model_cameras(model, gallery, f"{dataset_name} gallery")
    qf = extract_features(model, eval_loader(cfg, query, dataset_name, missing), device, amp, quiet, "query")
    gf = extract_features(
        model, eval_loader(cfg, gallery, dataset_name, gallery_missing), device, amp, quiet, "gallery"
    )
    return _metrics(cfg, dataset_name, qf, gf, rerank)


def _metrics(
    cfg: Config, dataset_name: str, qf: FeatureSet, gf: FeatureSet, rerank: bool | None
) -> EvalResult:
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
            stacklevel=3,
        )
    return result


def cross_missing_matrix(
    model: nn.Module,
    cfg: Config,
    dataset_name: str,
    query: list,
    gallery: list,
    device: torch.device,
    amp: torch.dtype | None = None,
    quiet: bool = True,
    settings: tuple[str, ...] = MISSING_SETTINGS,
) -> dict[tuple[str, str], EvalResult]:
    """Any-to-any retrieval: ``{(query setting, gallery setting): result}`` for every pair of
    ``settings``. Each split is extracted once per setting (2 x 7 passes, not 2 x 49)."""
    check_model_cameras(model, query, f"{dataset_name} query")
    check_model_cameras(model, gallery, f"{dataset_name} gallery")

    def features(samples: list, setting: str, what: str) -> FeatureSet:
        loader = eval_loader(cfg, samples, dataset_name, setting)
        return extract_features(model, loader, device, amp, quiet, f"{what} {present_label(setting)}")

    qfs = {s: features(query, s, "query") for s in settings}
    gfs = {s: features(gallery, s, "gallery") for s in settings}
    return {(q, g): _metrics(cfg, dataset_name, qfs[q], gfs[g], None) for q in settings for g in settings}


def format_cross_matrix(matrix: dict[tuple[str, str], EvalResult], metric: str = "mAP") -> str:
    """The matrix as text: one row per query subset, one column per gallery subset, in percent."""
    settings = list(dict.fromkeys(q for q, _ in matrix))
    labels = [present_label(s) for s in settings]
    width = max(len(label) for label in labels) + 2

    def value(res: EvalResult) -> float:
        return res.mAP if metric == "mAP" else res.rank(1)

    corner = f"{metric}, query \\ gallery"
    head = f"{corner:<{width + 8}}" + "".join(f"{label:>{width}}" for label in labels)
    lines = [head, "-" * len(head)]
    for q, label in zip(settings, labels):
        cells = "".join(f"{100 * value(matrix[(q, g)]):>{width}.1f}" for g in settings)
        lines.append(f"{label:<{width + 8}}{cells}")
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    rows: dict[str, Any],
    title: str,
    extra: dict[str, Any] | None = None,
    notes: str | None = None,
) -> str:
    """Save results.json (with ``extra``'s keys beside the results), cmc.png and report.txt (the
    table, then ``notes``) in ``out_dir``; return the text of report.txt."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(rows, title=title)
    if notes:
        table = f"{table}\n{notes}"
    save_results_json(out / "results.json", rows, extra=extra)
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
    """The ``mambapro test`` command: the result table, and with ``missing`` (see
    :func:`~mambapro.modalities.parse_missing_request`) the missing-modality table (``all``), the
    any-to-any matrix (``cross``), one query/gallery pair (``Q:G``) or one setting."""
    out = check_test_options(checkpoint, output, missing)
    request = parse_missing_request(missing) if missing is not None else None
    model, cfg, ckpt = load_model(checkpoint, config, overrides, extra)
    if rerank:
        cfg.test.rerank = True
    if request is None:  # the config's test.missing
        request = parse_missing(cfg.test.missing)
    device = next(model.parameters()).device
    amp = eval_amp(cfg, device)
    ds = dataset_from_config(cfg.data, generate=False)
    reranked = " (re-ranked)" if cfg.test.rerank else ""
    # Is the evaluated query+gallery the one the checkpoint was trained against?
    fingerprint = dataset_fingerprint(ds)
    status, check = same_eval_split(ckpt.get("dataset_fingerprint"), fingerprint)
    dataset = {"dataset_check": status, "dataset_fingerprint": fingerprint}

    def evaluate_setting(setting: str, gallery_setting: str | None = None) -> EvalResult:
        return evaluate_model(
            model, cfg, ds.name, ds.query, ds.gallery, device, amp, quiet, setting, None, gallery_setting
        )

    if request == "cross":
        return {**_run_cross(model, cfg, ds, device, amp, quiet, out, reranked, dataset, check), **dataset}
    if isinstance(request, tuple):
        q, g = request
        label = f"{present_label(q)}:{present_label(g)}"
        res = evaluate_setting(q, g)
    else:
        setting = cfg.test.missing if request == "all" else request
        label = missing_label(setting)
        res = evaluate_setting(setting)
    table = write_report(out, {label: res}, title=f"{ds.name} test set{reranked}", extra=dataset, notes=check)
    print(table)
    result: dict[str, Any] = {"result": res, "table": table, **dataset}
    if request == "all":
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


def _run_cross(
    model,
    cfg,
    ds,
    device,
    amp,
    quiet: bool,
    out: Path,
    reranked: str,
    dataset: dict[str, Any],
    check: str,
) -> dict[str, Any]:
    """``test --missing cross``: the 7 x 7 matrix printed, in results.json, and as a heat map."""
    matrix = cross_missing_matrix(model, cfg, ds.name, ds.query, ds.gallery, device, amp, quiet)
    full = matrix[("full", "full")]
    table = write_report(out, {"full": full}, title=f"{ds.name} test set{reranked}", notes=check)
    settings = list(MISSING_SETTINGS)
    labels = [present_label(s) for s in settings]
    text = "\n\n".join(
        [
            f"{ds.name} test set, any-to-any retrieval (rows: query modalities, columns: gallery){reranked}",
            format_cross_matrix(matrix, "mAP"),
            format_cross_matrix(matrix, "Rank-1"),
        ]
    )
    print(table)
    print(text)
    (out / "missing_cross.txt").write_text(text + "\n")
    cells = {
        "subsets": labels,
        "mAP": [[matrix[(q, g)].mAP for g in settings] for q in settings],
        "Rank-1": [[matrix[(q, g)].rank(1) for g in settings] for q in settings],
    }
    save_results_json(out / "results.json", {"full": full}, extra={"missing_cross": cells, **dataset})
    plot_heatmap(
        out / "missing_cross.png",
        cells["mAP"],
        labels,
        labels,
        title=f"{ds.name}: mAP (%), query modalities vs gallery modalities{reranked}",
        xlabel="gallery modalities",
        ylabel="query modalities",
    )
    print(f"results written to {out} (missing_cross.txt, missing_cross.png, results.json)")
    return {"result": full, "table": table, "cross": matrix}
