"""``mambapro search``: rank a gallery for query captures and draw the rank list.

The query is one capture (any of its modality files) or a split folder of queries; the gallery
is a split folder (its features are extracted with the same model) or an ``.npz`` written by
``mambapro extract``. Distances follow ``test.distance`` on L2-normalised features, as in
evaluation. A gallery entry that *is* the query file is left out of its ranking (RGBNT201 uses
the same folder for query and gallery); nothing else is filtered, since a search user wants to
see same-camera matches too.

Outputs: the ranked list printed per query, a JSON file with every ranking, and a rank-list
image per query: one row per modality of the model's set (RGB, NI, TI for the paper's models),
the query then the top-k, with green or
red borders when the gallery identity equals or differs from the query's (the identities come
from the file names of the dataset layout, or from the ``.npz``).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, PngImagePlugin

from mambapro.data import DatasetError, dataset_spec, read_triplet, samples_at, triplet_paths
from mambapro.data.io import is_side_by_side, tiny_image_note
from mambapro.errors import UserError
from mambapro.evaluation import compute_distmat
from mambapro.files import RANK_LIST_TAG, atomic_write, check_output
from mambapro.modalities import RGB_NI_TI, ModalitySet
from mambapro.models.precision import apply_precision, autocast_dtype
from mambapro.options import check_precision, check_search_options
from mambapro.retrieval.features import (
    FeatureSet,
    check_model_cameras,
    eval_loader,
    extract_features,
    missing_setting,
)
from mambapro.retrieval.gallery import Match
from mambapro.retrieval.identity import PRECISION_REMEDY, check_same_model, model_identity, model_modalities
from mambapro.retrieval.index import GalleryIndex
from mambapro.runtime import eval_amp
from mambapro.train.checkpoint import load_model

__all__ = ["rank_index", "Match", "rank_gallery", "draw_rank_list", "run_search"]

_THUMB_HEIGHT = 96
_BORDER = 4
_COLOURS = {"query": (40, 90, 220), "match": (20, 170, 60), "other": (220, 40, 40)}
#: A query modality left out (``--missing``): its thumbnail faded towards this grey and crossed.
_NOT_USED, _CROSS = (200, 200, 200), (90, 90, 90)


def rank_gallery(distances: np.ndarray, query_path: str, query_pid: int, gallery: Any, k: int) -> list[Match]:
    """Top-``k`` gallery entries of one query by ascending distance (ties: lower gallery index).

    ``distances`` is the query's (G,) row; ``gallery`` a FeatureSet. The query's own file is
    left out.
    """
    order = np.argsort(distances, kind="stable")
    return gallery.ranking(order, distances[order], k, query_path, query_pid)


def _dataset_modalities(dataset_name: str) -> ModalitySet:
    """The modalities of a dataset's spec (the paper's three for a name no spec answers to: its
    captures are drawn as placeholders anyway)."""
    try:
        return dataset_spec(dataset_name).modalities
    except (OSError, ValueError):  # ConfigError (an unknown name, a bad spec file) is a ValueError
        return RGB_NI_TI


def _thumbnails(first_path: str, dataset_name: str, count: int) -> list[Any]:
    """Thumbnails of a capture's ``count`` modalities (RGB, NI, TI), or grey placeholders (with a
    warning) if unreadable."""
    try:
        images = read_triplet(triplet_paths(first_path, dataset_name), dataset_name)
    except DatasetError as err:
        warnings.warn(f"rank list: drawing a placeholder for {first_path}: {err}", stacklevel=2)
        images = tuple(Image.new("RGB", (64, 64), (128, 128, 128)) for _ in range(count))
    out = []
    for img in images:
        w = max(1, round(img.width * _THUMB_HEIGHT / img.height))
        out.append(img.resize((w, _THUMB_HEIGHT)))
    return out


def rank_index(
    index: GalleryIndex, query: FeatureSet, k: int = 10, metric: str = "euclidean"
) -> list[list[Match]]:
    """``run_search``'s rankings against an index: per query (a FeatureSet), its top-``k``
    :class:`Match` list, leaving out the query's own file as :func:`rank_gallery` does."""
    dist, rows = index.search(query.feats, min(k + 1, max(index.ntotal, 1)), metric)
    return [
        index.ranking(irow, drow, k, qpath, qpid)
        for qpath, qpid, drow, irow in zip(query.paths, query.pids, dist, rows)
    ]


def draw_rank_list(
    query_path: str,
    matches: list[Match],
    dataset_name: str,
    out: str | Path,
    modalities: ModalitySet | None = None,
    query_missing: tuple[str, ...] = (),
) -> Path:
    """Save a rank-list image: one row per modality (RGB/NI/TI), columns query + matches,
    coloured borders. ``modalities``: the rows (default: the dataset's modalities);
    ``query_missing``: the keys of the modalities the query was embedded without, whose query
    cells are greyed and crossed out."""
    modalities = modalities or _dataset_modalities(dataset_name)
    used = "+".join(k for k in modalities.keys if k not in query_missing)
    columns = [(query_path, f"query: {used}" if query_missing else "query", _COLOURS["query"])]
    for m in matches:
        colour = _COLOURS["match"] if m.same_identity else _COLOURS["other"]
        columns.append((m.path, f"{m.rank}: {m.distance:.3g}", colour))
    thumbs = [_thumbnails(p, dataset_name, len(modalities)) for p, _, _ in columns]
    cell_w = max(t.width for col in thumbs for t in col) + 2 * _BORDER
    cell_h = _THUMB_HEIGHT + 2 * _BORDER
    label_h, gap = 14, 6
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    # A column is as wide as its cells, or its label where that is longer ("query: NI+TI").
    widths = [max(cell_w, math.ceil(measure.textlength(label)) + 2) for _, label, _ in columns]
    lefts = [28 + gap + sum(w + gap for w in widths[:c]) for c in range(len(columns))]
    width = lefts[-1] + widths[-1] + gap
    height = label_h + len(modalities) * (cell_h + gap) + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, name in enumerate(modalities):
        draw.text((2, label_h + gap + r * (cell_h + gap) + cell_h // 2 - 5), name, fill=(0, 0, 0))
    for c, ((_, label, colour), col) in enumerate(zip(columns, thumbs)):
        x = lefts[c]
        draw.text((x, 1), label, fill=(0, 0, 0))
        for r, thumb in enumerate(col):
            y = label_h + gap + r * (cell_h + gap)
            draw.rectangle([x, y, x + thumb.width + 2 * _BORDER - 1, y + cell_h - 1], fill=colour)
            if c == 0 and modalities.keys[r] in query_missing:
                thumb = _crossed_out(thumb)
            canvas.paste(thumb, (x + _BORDER, y + _BORDER))
    out = Path(out)
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", RANK_LIST_TAG)  # lets a later search replace it (files.artefact_kind)
    with atomic_write(out) as fh:
        canvas.save(fh, format="PNG", pnginfo=info)
    return out


def _crossed_out(thumb: Image.Image) -> Image.Image:
    """A query thumbnail of a modality the query was embedded without: faded to grey, crossed."""
    grey = Image.blend(thumb.convert("L").convert("RGB"), Image.new("RGB", thumb.size, _NOT_USED), 0.7)
    draw = ImageDraw.Draw(grey)
    w, h = grey.size
    draw.line([(0, 0), (w - 1, h - 1)], fill=_CROSS, width=2)
    draw.line([(0, h - 1), (w - 1, 0)], fill=_CROSS, width=2)
    return grey


def _warn_tiny_queries(samples: list, dataset_name: str, size: tuple[int, int], panels: int) -> None:
    """One warning naming the first query image far smaller than the model's input (``panels``:
    the modalities a side-by-side image holds)."""
    tiny = []
    for s in samples:
        for path in s.paths:
            try:
                with Image.open(path) as img:  # the header only
                    w, h = img.size
            except OSError:
                continue  # unreadable files are the loader's to report
            if is_side_by_side(dataset_name):
                w //= panels
            note = tiny_image_note((w, h), size)
            if note is not None:
                tiny.append(f"{path} {note}")
    if tiny:
        more = f" (and {len(tiny) - 1} more image(s))" if len(tiny) > 1 else ""
        warnings.warn(f"query image {tiny[0]}{more}: its ranking carries little information", stacklevel=2)


def _check_gallery(gallery: Path) -> None:
    if gallery.is_dir() or (gallery.is_file() and gallery.suffix == ".npz"):
        return
    what = "does not exist" if not gallery.exists() else "is neither"
    raise UserError(
        f"--gallery {gallery} {what}: it must be a dataset split folder or a features .npz file "
        "written by `mambapro extract`"
    )


def _gallery_features(gallery: Path, model, cfg, device, amp, quiet: bool):
    samples = samples_at(gallery, cfg.data.dataset, skip_broken=cfg.data.skip_broken)
    check_model_cameras(model, samples, f"gallery {gallery}")
    return extract_features(model, eval_loader(cfg, samples, cfg.data.dataset), device, amp, quiet, "gallery")


def run_search(
    checkpoint: str | Path,
    query: str | Path,
    gallery: str | Path | None = None,
    k: int = 10,
    out: str | Path = "ranklist.png",
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    quiet: bool = False,
    index: str | Path | None = None,
    precision: str = "fp32",
    allow_precision_mismatch: bool = False,
    missing: str = "full",
) -> dict[str, list[Match]]:
    """The ``search`` command: queries against a ``gallery`` (a split folder or features
    ``.npz``) or a FAISS ``index`` (``mambapro index build``); returns ``{query path: matches}``.

    The queries (and a gallery folder) are embedded at ``precision``; a features file or index
    made at another precision is refused unless ``allow_precision_mismatch``. The queries'
    ``missing`` modalities (one setting, as ``test --missing``) are zeroed, whatever the
    gallery holds (any-to-any retrieval: a thermal-only query against a full gallery); the
    rank list shows them crossed out."""
    inputs = check_search_options(checkpoint, query, gallery, index, k, out, missing)
    check_precision(precision)
    out = Path(out)
    gallery_index = gallery_feats = None
    if index is not None:
        gallery_index = GalleryIndex.load(index)  # a bad index is refused before the model loads
    else:
        gallery = Path(gallery)
        _check_gallery(gallery)
        if gallery.suffix == ".npz" and gallery.is_file():
            gallery_feats = FeatureSet.load(gallery)
    if not Path(query).exists():
        raise UserError(f"--query {query} does not exist: give a triplet's file or a split folder")
    model, cfg, _ = load_model(checkpoint, config, overrides)
    missing = missing_setting(model, missing)
    identity = model_identity(model, cfg.img_size(), checkpoint, missing=missing, precision=precision)
    stored = gallery_index.identity if gallery_index is not None else getattr(gallery_feats, "identity", None)
    check_same_model(
        stored,
        f"--{'index' if index is not None else 'gallery'} {index or gallery}",
        identity,
        f"--checkpoint {checkpoint} with these test.* settings",
        allow_precision_mismatch=allow_precision_mismatch,
        precision_remedy=PRECISION_REMEDY,
    )
    model = apply_precision(model, precision)
    device = next(model.parameters()).device
    amp = autocast_dtype(model, eval_amp(cfg, device))
    name = cfg.data.dataset
    q_samples = samples_at(query, name, skip_broken=cfg.data.skip_broken)
    check_model_cameras(model, q_samples, f"query {query}")
    images = [
        out if len(q_samples) == 1 else out.with_name(f"{out.stem}-{Path(s.paths[0]).stem}{out.suffix}")
        for s in q_samples
    ]
    if len(images) > 1:  # one image per query, named after it
        for image in images:
            check_output(image, "--out (a rank list)", "rank list", inputs)
    modalities = model_modalities(model)
    _warn_tiny_queries(q_samples, name, cfg.img_size(), len(modalities))
    qf = extract_features(model, eval_loader(cfg, q_samples, name, missing), device, amp, quiet, "query")
    if gallery_index is not None:
        ranked = rank_index(gallery_index, qf, k, metric=cfg.test.distance)
    else:
        gf = gallery_feats or _gallery_features(gallery, model, cfg, device, amp, quiet)
        if gf.feats.ndim != 2 or gf.feats.shape[1] != qf.feats.shape[1]:
            raise UserError(
                f"{gallery}: gallery features have shape {gf.feats.shape}, but this checkpoint gives "
                f"{qf.feats.shape[1]}-d features; extract them with the same checkpoint"
            )
        dist = compute_distmat(qf.feats, gf.feats, metric=cfg.test.distance)
        ranked = [rank_gallery(dist[i], p, int(qf.pids[i]), gf, k) for i, p in enumerate(qf.paths)]
    results: dict[str, list[Match]] = {}
    for i, qpath in enumerate(qf.paths):
        matches = ranked[i]
        results[qpath] = matches
        print(f"query {qpath} (id {int(qf.pids[i])}, camera {int(qf.camids[i]) + 1}):")
        for m in matches:
            verdict = "same id" if m.same_identity else "other id"
            print(f"  rank {m.rank:>3}  distance {m.distance:.4g}  id {m.pid:>6}  {verdict:<8}  {m.path}")
        draw_rank_list(qpath, matches, name, images[i], modalities, modalities.missing(missing))
    ranks_json = out.with_suffix(".json")
    with atomic_write(ranks_json) as fh:
        record = {
            "checkpoint": str(checkpoint),
            "gallery": str(index if index is not None else gallery),
            "distance": cfg.test.distance,
            "query_modalities": identity["modalities"],
            "queries": {q: [m.__dict__ for m in ms] for q, ms in results.items()},
        }
        fh.write(json.dumps(record, indent=1).encode())
    where = out if len(qf.paths) == 1 else f"{out.parent}/{out.stem}-*{out.suffix}"
    print(f"rank-list image(s): {where}; rankings: {ranks_json}")
    return results
