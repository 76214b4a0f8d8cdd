"""The ``mambapro analyze`` command (:func:`run_analyze`): check the arguments and load the
checkpoints, extract and evaluate once, then run the sections in page order and write
``metrics.txt``, ``analysis.json`` and ``report.html``."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mambapro.data import dataset_from_config
from mambapro.errors import UserError
from mambapro.evaluation import compute_distmat, evaluate_features, format_table
from mambapro.files import claim_output_folder
from mambapro.options import check_analyze_options
from mambapro.reports.analysis.alignment import alignment_section
from mambapro.reports.analysis.cmc import cmc_section
from mambapro.reports.analysis.context import Checkpoint, Context
from mambapro.reports.analysis.features import extract_analysis_features
from mambapro.reports.analysis.gradcam import grad_cam_section
from mambapro.reports.analysis.missing import cross_section, missing_section
from mambapro.reports.analysis.queries import per_query_ap, pick_queries
from mambapro.reports.analysis.ranklists import rank_list_section
from mambapro.reports.analysis.tsne import DEFAULT_IDS, select_identities, tsne_section
from mambapro.reports.page import write_report_page
from mambapro.retrieval.features import check_model_cameras, eval_loader
from mambapro.runtime import eval_amp
from mambapro.train.checkpoint import load_model

__all__ = ["run_analyze"]


def _labels(paths: Sequence[Path]) -> list[str]:
    out: list[str] = []
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{p.resolve().parent.name}-{p.stem}").strip("-") or "ckpt"
        label, n = base, 2
        while label in out:
            label, n = f"{base}-{n}", n + 1
        out.append(label)
    return out


def _summary(c: Checkpoint) -> dict[str, Any]:
    m = c.cfg.model
    return {
        "label": c.label,
        "checkpoint": str(c.path),
        "dataset": c.cfg.data.dataset,
        "backbone": m.backbone,
        "aggregator": m.aggregator,
        "img_size": list(c.cfg.img_size()),
        "test_feature": c.model.test_feature,
        "neck_feat": c.model.neck_feat,
        "distance": c.cfg.test.distance,
        "epoch": c.ckpt.get("epoch"),
    }


def run_analyze(
    checkpoint: str | Path,
    compare: Sequence[str | Path] = (),
    data_root: str | Path | None = None,
    out: str | Path | None = None,
    ids: int | None = None,
    queries: int = 8,
    missing: str | None = None,
    seed: int = 0,
    overrides: list[str] | None = None,
    quiet: bool = False,
    rank_k: int = 10,
    announce: bool = True,
) -> dict[str, Any]:
    """The ``mambapro analyze`` command; returns the content of ``analysis.json``.

    ``announce=False`` prints neither the metrics nor where the page is (``train.analyze``: the
    run prints both in its own summary)."""
    out = check_analyze_options(checkpoint, compare, ids, queries, missing, out)
    paths = [Path(checkpoint), *(Path(c) for c in compare)]

    # Every refusal (datasets, identities, cameras) comes before anything is written.
    runs = _load_runs(paths, overrides, {"data": {"root": str(data_root)}} if data_root is not None else None)
    ds = dataset_from_config(runs[0].cfg.data, generate=False)
    # One pass over the distinct captures of query and gallery (RGBNT201 uses one folder for both).
    samples = list({s.paths: s for s in (*ds.query, *ds.gallery)}.values())
    pids = np.array([s.pid for s in samples])
    if ids is None:
        ids = min(DEFAULT_IDS, len(np.unique(pids)))
        if ids < 2:
            raise UserError(
                f"{ds.name} test set (query + gallery) has {ids} identity; t-SNE needs at least 2"
            )
    identities = select_identities(pids, ids, seed)
    for r in runs:
        check_model_cameras(r.model, samples, f"{ds.name} test set ({r.path})")
    claim_output_folder(out, "analyze")

    ctx = Context(out=out, ds=ds, runs=runs, quiet=quiet)
    _extract_and_evaluate(ctx, samples)
    ctx.report.update(
        config={
            "dataset": ds.name,
            "data_root": str(ds.root),
            "ids": int(ids),
            "queries": int(queries),
            "seed": int(seed),
            "missing": missing,
            "num_query": len(ds.query),
            "num_gallery": len(ds.gallery),
            "num_captures": len(samples),
        },
        modalities=runs[0].model.modalities.to_dict(),
        checkpoints=[_summary(r) for r in runs],
        metrics={r.label: r.result.to_json() for r in runs},
    )
    cmc_section(ctx)
    tsne_section(ctx, identities, seed)
    alignment_section(ctx)
    # The queries are chosen by the first checkpoint's AP, the same for every checkpoint.
    best, worst = pick_queries(runs[0].ap, queries)
    ctx.report["queries"] = {
        kind: [
            {
                "index": i,
                "path": runs[0].query.paths[i],
                "pid": int(runs[0].query.pids[i]),
                **{f"AP {r.label}": float(r.ap[i]) for r in runs},
            }
            for i in idx
        ]
        for kind, idx in (("best", best), ("worst", worst))
    }
    grad_cam_section(ctx, best, worst)
    rank_list_section(ctx, worst, rank_k)
    tables = {"all": missing_section, "cross": cross_section}[missing](ctx) if missing else []

    table = format_table({r.label: r.result for r in runs}, title=f"{ds.name} test set (analyze)")
    (out / "metrics.txt").write_text(table + "\n")
    (out / "analysis.json").write_text(json.dumps(ctx.report, indent=1, default=_json_default))
    page = write_report_page(out, ctx.report)
    if announce:
        if not quiet:
            print("\n\n".join([table, *tables]))
        print(f"analysis written to {out} (report: {page})")
    return ctx.report


def _load_runs(paths: list[Path], overrides: list[str] | None, extra: dict | None) -> list[Checkpoint]:
    runs: list[Checkpoint] = []
    for label, p in zip(_labels(paths), paths):
        model, cfg, ckpt = load_model(p, None, overrides, extra)
        if runs and cfg.data.dataset != runs[0].cfg.data.dataset:
            raise UserError(
                f"--compare {p} is a {cfg.data.dataset} checkpoint but --checkpoint {paths[0]} is "
                f"{runs[0].cfg.data.dataset}: compared checkpoints must be of one dataset"
            )
        runs.append(Checkpoint(label, p, model, cfg, ckpt))
    return runs


def _extract_and_evaluate(ctx: Context, samples: list) -> None:
    """Features of every capture, metrics and per-query AP, per checkpoint."""
    spec = ctx.ds.spec  # a spec file's dataset has no registered name to look up
    use_scenes = spec.has_scenes
    row_of = {s.paths: i for i, s in enumerate(samples)}
    q_rows = [row_of[s.paths] for s in ctx.ds.query]
    g_rows = [row_of[s.paths] for s in ctx.ds.gallery]
    for r in ctx.runs:
        device = next(r.model.parameters()).device
        loader = eval_loader(r.cfg, samples, spec)
        r.feats = extract_analysis_features(
            r.model, loader, device, eval_amp(r.cfg, device), ctx.quiet, f"{r.label} features"
        )
        r.query = r.feats.subset(q_rows).feature_set()
        r.gallery = r.feats.subset(g_rows).feature_set()
        t = r.cfg.test
        r.result = evaluate_features(
            r.query.labelled(),
            r.gallery.labelled(),
            use_scenes=use_scenes,
            metric=t.distance,
            max_rank=t.max_rank,
        )
        r.dist = compute_distmat(r.query.feats, r.gallery.feats, metric=t.distance)
        r.ap = per_query_ap(r.dist, r.query, r.gallery, use_scenes)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
