"""Evaluating a model: under any modality subset, the missing-modality table, the report files,
and the ``test`` command, on the model's own dataset or on another with the same modalities.

:func:`evaluate_model` is the one path from a model and query/gallery samples to metrics: it
extracts features with the given modalities missing and hands them to
:func:`mambapro.evaluation.evaluate_features` with the ``test`` options of the config; the
missing-modality table loops over it. Settings and subsets are those of the model's modalities
(``model.modalities``): 3 settings for two modalities, 7 for three, 15 for four.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mambapro.config import Config
from mambapro.data import DatasetSpec, dataset_from_config, dataset_spec
from mambapro.data.fingerprint import dataset_fingerprint, same_eval_split
from mambapro.errors import UserError
from mambapro.evaluation import (
    EvalResult,
    evaluate_features,
    format_table,
    missing_modality_table,
    plot_cmc,
    plot_heatmap,
    save_results_json,
)
from mambapro.files import claim_output_folder
from mambapro.modalities import RGB_NI_TI, ModalitySet
from mambapro.models.precision import apply_precision, autocast_dtype, check_precision_supported
from mambapro.options import check_precision, check_test_options
from mambapro.retrieval.features import FeatureSet, check_model_cameras, eval_loader, extract_features
from mambapro.runtime import eval_amp
from mambapro.train.checkpoint import checkpoint_modalities, load_checkpoint, load_model

__all__ = ["cross_missing_matrix", "evaluate_model", "format_cross_matrix", "run_test", "write_report"]


def evaluate_model(
    model: nn.Module,
    cfg: Config,
    dataset_name: str | DatasetSpec,
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
    same; settings of ``model.modalities``), by the dataset's protocol and the ``test`` options
    (distance, re-ranking unless ``rerank`` says otherwise, CMC length). ``dataset_name``: a
    registered name, a spec file or the :class:`DatasetSpec` (``ds.spec``) of the samples."""
    modalities: ModalitySet = model.modalities
    missing = modalities.parse_missing(missing or cfg.test.missing)
    gallery_missing = missing if gallery_missing is None else modalities.parse_missing(gallery_missing)
    spec = dataset_spec(dataset_name)
    check_model_cameras(model, query, f"{spec.name} query")
    check_model_cameras(model, gallery, f"{spec.name} gallery")
    qf = extract_features(model, eval_loader(cfg, query, spec, missing), device, amp, quiet, "query")
    gf = extract_features(
        model, eval_loader(cfg, gallery, spec, gallery_missing), device, amp, quiet, "gallery"
    )
    return _metrics(cfg, spec, qf, gf, rerank)


def _metrics(
    cfg: Config, spec: DatasetSpec, qf: FeatureSet, gf: FeatureSet, rerank: bool | None
) -> EvalResult:
    t = cfg.test
    result = evaluate_features(
        qf.labelled(),
        gf.labelled(),
        use_scenes=spec.has_scenes,
        metric=t.distance,
        max_rank=t.max_rank,
        rerank=t.rerank if rerank is None else rerank,
        k1=t.rerank_k1,
        k2=t.rerank_k2,
        lambda_value=t.rerank_lambda,
    )
    if result.num_skipped:
        warnings.warn(
            f"{spec.name}: {result.num_skipped} of {result.num_skipped + result.num_valid} queries have "
            "no valid match in the gallery (same identity from another camera or scene) and are left "
            "out of mAP and CMC",
            stacklevel=3,
        )
    return result


def cross_missing_matrix(
    model: nn.Module,
    cfg: Config,
    dataset_name: str | DatasetSpec,
    query: list,
    gallery: list,
    device: torch.device,
    amp: torch.dtype | None = None,
    quiet: bool = True,
    settings: tuple[str, ...] | None = None,
) -> dict[tuple[str, str], EvalResult]:
    """Any-to-any retrieval: ``{(query setting, gallery setting): result}`` for every pair of
    ``settings`` (default: every setting of ``model.modalities``). Each split is extracted once
    per setting (2 x 7 passes for three modalities, not 2 x 49)."""
    modalities: ModalitySet = model.modalities
    settings = modalities.settings if settings is None else tuple(map(modalities.parse_missing, settings))
    spec = dataset_spec(dataset_name)
    check_model_cameras(model, query, f"{spec.name} query")
    check_model_cameras(model, gallery, f"{spec.name} gallery")

    def features(samples: list, setting: str, what: str) -> FeatureSet:
        loader = eval_loader(cfg, samples, spec, setting)
        label = modalities.present_label(setting)
        return extract_features(model, loader, device, amp, quiet, f"{what} {label}")

    qfs = {s: features(query, s, "query") for s in settings}
    gfs = {s: features(gallery, s, "gallery") for s in settings}
    return {(q, g): _metrics(cfg, spec, qfs[q], gfs[g], None) for q in settings for g in settings}


def cross_cells(matrix: dict[tuple[str, str], EvalResult], modalities: ModalitySet) -> dict[str, Any]:
    """The matrix as results.json and analysis.json store it: ``subsets`` (named by the present
    modalities), and ``mAP`` / ``Rank-1`` as rows (query subsets) of columns (gallery subsets)."""
    settings = list(dict.fromkeys(q for q, _ in matrix))
    return {
        "subsets": [modalities.present_label(s) for s in settings],
        "mAP": [[matrix[(q, g)].mAP for g in settings] for q in settings],
        "Rank-1": [[matrix[(q, g)].rank(1) for g in settings] for q in settings],
    }


def plot_cross_cells(path: Path, cells: dict[str, Any], title: str) -> None:
    """The mAP heat map of :func:`cross_cells` (rows: query modalities, columns: gallery)."""
    labels = cells["subsets"]
    plot_heatmap(
        path,
        cells["mAP"],
        labels,
        labels,
        title=title,
        xlabel="gallery modalities",
        ylabel="query modalities",
    )


def format_cross_matrix(
    matrix: dict[tuple[str, str], EvalResult], metric: str = "mAP", modalities: ModalitySet = RGB_NI_TI
) -> str:
    """The matrix as text: one row per query subset, one column per gallery subset (named by the
    present ``modalities``), in percent."""
    settings = list(dict.fromkeys(q for q, _ in matrix))
    labels = [modalities.present_label(s) for s in settings]
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
    dataset: str | Path | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """The ``mambapro test`` command: the result table, and with ``missing`` (see
    :meth:`~mambapro.modalities.ModalitySet.parse_request`, of the model's modalities) the
    missing-modality table (``all``), the any-to-any matrix (``cross``), one query/gallery pair
    (``Q:G``) or one setting.

    ``dataset`` (a registered name or a dataset spec file) tests the checkpoint on another
    dataset with the same modalities, found under ``data.root``: the model keeps its image size,
    a camera it never saw gets the mean of its learned camera embeddings, and the reports say
    "trained on A, tested on B".

    ``precision`` (``bf16``, ``int8``: :mod:`mambapro.models.precision`) evaluates the model at
    that precision and, first, the same main row (the requested setting or pair; ``full`` for
    ``cross``) in fp32: the difference is printed, noted in report.txt and recorded in
    results.json (``precision``, ``fp32_reference``)."""
    out = check_test_options(checkpoint, output, missing, dataset)
    check_precision(precision)
    state = None
    if dataset is not None:
        state = load_checkpoint(checkpoint)  # read once: for the checks here and for the model
        extra = _cross_dataset_extra(checkpoint, state, dataset, extra)
    model, cfg, ckpt = load_model(checkpoint, config, overrides, extra, state=state)
    modalities: ModalitySet = model.modalities
    # --missing names the model's modalities: checked once they are known, before any output.
    request = modalities.parse_request(missing) if missing is not None else cfg.test.missing
    if rerank:
        cfg.test.rerank = True
    device = next(model.parameters()).device
    amp = eval_amp(cfg, device)
    check_precision_supported(precision, device)  # before the fp32 reference pass
    ds = dataset_from_config(cfg.data, generate=False)
    reranked = " (re-ranked)" if cfg.test.rerank else ""
    trained_on = _trained_on(ckpt)
    cross = trained_on != ds.name
    fingerprint = dataset_fingerprint(ds)
    if cross:
        model.backbone.unseen_cameras = "mean"
        scope = heading = f"trained on {trained_on}, tested on {ds.name}"
        status = "cross-dataset"
        check = (
            f"dataset check: cross-dataset ({scope}; query+gallery {fingerprint['eval_sha256'][:12]}); "
            "cameras the model never saw get the mean of its learned camera embeddings"
        )
    else:
        scope, heading = f"{ds.name} test set", ds.name
        # Is the evaluated query+gallery the one the checkpoint was trained against?
        status, check = same_eval_split(ckpt.get("dataset_fingerprint"), fingerprint)
    dataset_info = {
        "dataset_check": status,
        "dataset_fingerprint": fingerprint,
        "trained_on": trained_on,
        "tested_on": ds.name,
        "modalities": modalities.to_dict(),
        "precision": precision,
    }

    def evaluate_setting(setting: str, gallery_setting: str | None = None) -> EvalResult:
        return evaluate_model(
            model, cfg, ds.spec, ds.query, ds.gallery, device, amp, quiet, setting, None, gallery_setting
        )

    if precision != "fp32":
        # The fp32 result of the main row, before the model is converted (in place).
        main = request
        if not isinstance(main, tuple):
            main = ("full" if main == "cross" else cfg.test.missing if main == "all" else main, None)
        reference = evaluate_model(
            model, cfg, ds.spec, ds.query, ds.gallery, device, None, quiet, main[0], None, main[1]
        )
        apply_precision(model, precision)
        amp = autocast_dtype(model, amp)
        dataset_info["fp32_reference"] = _reference_record(reference, main, modalities)

    if request == "cross":
        titles = (scope, heading, reranked)
        done = _run_cross(model, cfg, ds, device, amp, quiet, out, titles, dataset_info, check)
        return {**done, **dataset_info}
    if isinstance(request, tuple):
        q, g = request
        label = f"{modalities.present_label(q)}:{modalities.present_label(g)}"
        res = evaluate_setting(q, g)
    else:
        setting = cfg.test.missing if request == "all" else request
        label = modalities.missing_label(setting)
        res = evaluate_setting(setting)
    check = _with_precision_note(check, res, dataset_info)
    claim_output_folder(out, "test")
    table = write_report(out, {label: res}, title=f"{scope}{reranked}", extra=dataset_info, notes=check)
    print(table)
    result: dict[str, Any] = {"result": res, "table": table, **dataset_info}
    if request == "all":
        # The row already evaluated above is reused rather than extracted again.
        rows, mm_table = missing_modality_table(
            lambda m: res if modalities.missing_label(m) == label else evaluate_setting(m),
            modalities=modalities,
            title=f"{scope}, missing modalities{reranked}",
        )
        print(mm_table)
        (out / "missing_modality.txt").write_text(mm_table + "\n")
        save_results_json(out / "missing_modality.json", rows, extra={"modalities": modalities.to_dict()})
        result["missing"] = rows
    print(f"results written to {out}")
    return result


def _reference_record(res: EvalResult, main: tuple[str, str | None], modalities: ModalitySet) -> dict:
    """The fp32 result of the main row as results.json records it."""
    query, gallery = main
    if gallery is None:
        row = modalities.missing_label(query)
    else:
        row = f"{modalities.present_label(query)}:{modalities.present_label(gallery)}"
    return {"row": row, "mAP": res.mAP, "Rank-1": res.rank(1)}


def _with_precision_note(check: str, res: EvalResult, info: dict[str, Any]) -> str:
    """``check`` and, at a reduced precision, a line with the main row's mAP and Rank-1 against
    fp32 (recorded in ``info`` as ``mAP_vs_fp32`` and ``rank1_vs_fp32``, in points)."""
    ref = info.get("fp32_reference")
    if ref is None:
        return check
    d_map, d_r1 = 100 * (res.mAP - ref["mAP"]), 100 * (res.rank(1) - ref["Rank-1"])
    info["mAP_vs_fp32"], info["rank1_vs_fp32"] = d_map, d_r1
    return (
        f"{check}\nprecision {info['precision']} ({ref['row']}): mAP {100 * res.mAP:.2f} against "
        f"{100 * ref['mAP']:.2f} in fp32 ({d_map:+.2f}), Rank-1 {100 * res.rank(1):.2f} against "
        f"{100 * ref['Rank-1']:.2f} ({d_r1:+.2f})"
    )


def _trained_on(ckpt: dict[str, Any]) -> str:
    """The name of the dataset a checkpoint was trained on."""
    return str(ckpt.get("dataset") or ckpt["config"]["data"]["dataset"])


def _cross_dataset_extra(
    checkpoint: str | Path, ckpt: dict[str, Any], dataset: str | Path, extra: dict | None
) -> dict:
    """``extra`` for testing ``checkpoint`` (loaded: ``ckpt``) on ``dataset``: that dataset, the
    image size the model was trained at, nothing generated; a dataset whose modalities are not
    the checkpoint's is refused, naming both."""
    spec = dataset_spec(dataset)
    trained = checkpoint_modalities(ckpt)
    if spec.modalities.keys != trained.keys:
        raise UserError(
            f"--dataset {spec.name} has the modalities {spec.modalities}, but {checkpoint} was trained "
            f"on {_trained_on(ckpt)} with {trained}: a cross-dataset test needs the same modalities"
        )
    data = ckpt["config"]["data"]
    # Recorded since checkpoints have modalities; before, the training dataset's (or its setting).
    size = ckpt.get("img_size") or data.get("img_size") or dataset_spec(data["dataset"]).img_size
    extra = dict(extra or {})
    extra["data"] = {
        **(extra.get("data") or {}),
        "dataset": str(dataset),
        "img_size": [int(x) for x in size],
        "synthetic": False,
    }
    return extra


def _run_cross(
    model,
    cfg,
    ds,
    device,
    amp,
    quiet: bool,
    out: Path,
    titles: tuple[str, str, str],
    dataset: dict[str, Any],
    check: str,
) -> dict[str, Any]:
    """``test --missing cross``: the n x n matrix of the model's settings (7 x 7 for three
    modalities) printed, in results.json, and as a heat map; ``titles``: the tables' scope, the
    figure's heading and the re-ranking note."""
    scope, heading, reranked = titles
    modalities: ModalitySet = model.modalities
    matrix = cross_missing_matrix(model, cfg, ds.spec, ds.query, ds.gallery, device, amp, quiet)
    full = matrix[("full", "full")]
    check = _with_precision_note(check, full, dataset)
    claim_output_folder(out, "test")
    table = write_report(out, {"full": full}, title=f"{scope}{reranked}", notes=check)
    text = "\n\n".join(
        [
            f"{scope}, any-to-any retrieval (rows: query modalities, columns: gallery){reranked}",
            format_cross_matrix(matrix, "mAP", modalities),
            format_cross_matrix(matrix, "Rank-1", modalities),
        ]
    )
    print(table)
    print(text)
    (out / "missing_cross.txt").write_text(text + "\n")
    cells = cross_cells(matrix, modalities)
    save_results_json(out / "results.json", {"full": full}, extra={"missing_cross": cells, **dataset})
    plot_cross_cells(
        out / "missing_cross.png",
        cells,
        f"{heading}: mAP (%), query modalities vs gallery modalities{reranked}",
    )
    print(f"results written to {out} (missing_cross.txt, missing_cross.png, results.json)")
    return {"result": full, "table": table, "cross": matrix}
