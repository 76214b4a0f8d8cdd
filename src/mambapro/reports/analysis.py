"""``mambapro analyze``: the paper's qualitative figures for one or more checkpoints, and a report.

For a checkpoint (and the ``--compare`` checkpoints, which must be of the same dataset) on its
test set (query and gallery, all three modalities present):

* **t-SNE** (paper Fig. 5) of the ``ori`` feature (the backbone's three cls tokens concatenated)
  and the ``fuse`` feature (the aggregator's) of ``ids`` test identities, drawn with a fixed seed
  from the test set, the same for every checkpoint: one panel per checkpoint and feature, colours
  by identity, markers by camera. Each test feature is taken as the model returns it at test
  time (before or after its head's BatchNorm, ``test.neck_feat``) and L2-normalised before
  scikit-learn's ``TSNE`` (the evaluation's distances are on L2-normalised features too).
* **Modality alignment** (Fig. 6): per capture, the cosine similarity between two modalities'
  features, for the pairs RGB-NI, RGB-TI and NI-TI, *before MA* (the backbone's cls tokens, the
  chunks of ``ori``) and *after MA* (the mean of each modality's mixed patch tokens f_ir^M, which
  the aggregator's readout consumes with the cls token; read from the aggregator's
  ``mixed_taps``). Histograms per pair; in ``analysis.json`` per pair and stage the mean, the
  standard deviation and ``same_vs_other_overlap``, and per pair ``before_after_overlap`` (both
  defined in :data:`OVERLAP_DEFINITION`). The readout's per-modality outputs (the chunks of
  ``fuse``, f_final^M) are recorded as a third stage, ``readout``.
* **Grad-CAM** (Figs. 10-11) of each modality's feature after MA: the activations are that
  modality's mixed patch tokens f_ir^M (reshaped to the H/16 x W/16 token grid), the target is
  the L2 norm of their mean, the modality's feature after MA (a retrieval model has no class
  score for unseen identities; see :func:`grad_cam_maps` for why not the readout's output),
  computed with ``pytorch-grad-cam`` and overlaid on that modality's image, for ``queries`` queries: the
  best- and worst-AP ones of the first checkpoint (the same queries for every checkpoint).
* **Rank lists** of the worst queries (:func:`mambapro.retrieval.search.draw_rank_list`), the CMC
  curves, the metrics, and with ``missing="all"`` the missing-modality table
  (:func:`mambapro.retrieval.testing.evaluate_model` per setting).

Everything lands in one folder with ``analysis.json`` and ``report.html`` (a self-contained page:
relative links to the PNG files beside it, no network). Metrics use the plain distance
(``test.distance``, no re-ranking).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from sklearn.manifold import TSNE
from torch import Tensor, nn
from tqdm.auto import tqdm

from mambapro.config import Config
from mambapro.data import dataset_from_config, dataset_spec
from mambapro.errors import UserError, check_output_dir
from mambapro.evaluation import (
    EvalResult,
    compute_distmat,
    evaluate,
    evaluate_features,
    format_table,
    missing_modality_table,
    plot_cmc,
)
from mambapro.modalities import MISSING_SETTINGS, MODALITIES
from mambapro.reports.page import write_report_page
from mambapro.retrieval.features import FeatureSet, check_model_cameras, eval_loader, eval_pass
from mambapro.retrieval.search import draw_rank_list, rank_gallery
from mambapro.retrieval.testing import evaluate_model
from mambapro.runtime import eval_amp
from mambapro.train.checkpoint import load_model

__all__ = [
    "DEFAULT_IDS",
    "OVERLAP_DEFINITION",
    "PAIRS",
    "AnalysisFeatures",
    "alignment_stats",
    "extract_analysis_features",
    "joint_bins",
    "grad_cam_maps",
    "histogram_intersection",
    "pair_cosines",
    "per_query_ap",
    "run_analyze",
    "select_identities",
    "tsne_embedding",
    "tsne_rows",
]

#: Test identities in the t-SNE when none are asked for (all of them where the test set has fewer).
DEFAULT_IDS = 20
#: The modality pairs of the alignment figure, as index pairs into ``MODALITIES``.
PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (1, 2))
#: Bins of the histograms of cosine similarity (figure and overlap measures), spread over the
#: range of the values compared: a model's cosines often all lie within a few hundredths.
NUM_BINS = 50
#: Different-capture cosines use at most this many captures (all ordered pairs among them).
MAX_OTHER_CAPTURES = 2000

OVERLAP_DEFINITION = (
    "histogram intersection sum_b min(p_b, q_b) of two distributions of cosine similarity, both "
    "histogrammed on the same 50 equal bins spanning the range of their values together, and "
    "normalised to sum 1 (1: identical distributions, 0: disjoint). before_after_overlap: the "
    "same-capture distribution before MA (cls tokens) against after MA (mean mixed patch tokens). "
    "same_vs_other_overlap: per stage, the same-capture distribution cos(a_i, b_i) against the "
    "different-capture one cos(a_i, b_j), i != j (lower: a capture's modalities are more "
    "distinguishable from other captures')."
)


# ----------------------------------------------------------------------------- features


@dataclass
class AnalysisFeatures:
    """Everything ``analyze`` reads from one pass of a model over samples.

    ``test`` (N, F) is the model's test feature (what ``model(batch)`` returns in eval mode);
    ``ori`` (N, 3C) and ``fuse`` (N, F') the two heads' pre-BN features (``fuse`` None without an
    aggregator); ``before`` (3, N, C) the modalities' cls tokens (``ori``'s chunks), ``after``
    (3, N, C) the mean of their mixed patch tokens and ``readout`` (3, N, C) the readout's
    per-modality outputs (``fuse``'s chunks), both None without a mixing aggregator.
    ``ori_test`` / ``fuse_test`` are the heads' features at test time (after their BatchNorm
    when ``test.neck_feat=after``).
    """

    test: np.ndarray
    ori: np.ndarray
    fuse: np.ndarray | None
    ori_test: np.ndarray
    fuse_test: np.ndarray | None
    before: np.ndarray
    after: np.ndarray | None
    readout: np.ndarray | None
    pids: np.ndarray
    camids: np.ndarray
    sceneids: np.ndarray
    paths: list[str]

    def subset(self, rows: Sequence[int] | np.ndarray) -> AnalysisFeatures:
        rows = np.asarray(rows, dtype=np.int64)

        def take(a: np.ndarray | None, axis: int = 0) -> np.ndarray | None:
            return None if a is None else np.take(a, rows, axis=axis)

        return AnalysisFeatures(
            test=take(self.test),
            ori=take(self.ori),
            fuse=take(self.fuse),
            ori_test=take(self.ori_test),
            fuse_test=take(self.fuse_test),
            before=take(self.before, 1),
            after=take(self.after, 1),
            readout=take(self.readout, 1),
            pids=take(self.pids),
            camids=take(self.camids),
            sceneids=take(self.sceneids),
            paths=[self.paths[i] for i in rows],
        )

    def feature_set(self) -> FeatureSet:
        """The test features as the :class:`FeatureSet` that ``extract_features`` would give."""
        return FeatureSet(self.test, self.pids, self.camids, self.sceneids, list(self.paths))


def _mixed_taps(model: nn.Module) -> nn.ModuleList | None:
    taps = getattr(model.aggregator, "mixed_taps", None) if model.aggregator is not None else None
    return taps if taps is not None and len(taps) == len(MODALITIES) else None


def extract_analysis_features(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    amp: torch.dtype | None = None,
    quiet: bool = True,
    desc: str = "features",
) -> AnalysisFeatures:
    """One eval pass of ``model`` over ``loader`` collecting :class:`AnalysisFeatures`."""
    taps = _mixed_taps(model)
    pooled: list[Tensor | None] = [None] * len(MODALITIES)
    handles = []
    if taps is not None:
        for k, tap in enumerate(taps):

            def hook(_module: nn.Module, _inputs: Any, output: Tensor, k: int = k) -> None:
                pooled[k] = output.float().mean(dim=1)

            handles.append(tap.register_forward_hook(hook))

    def step(inputs: dict[str, Any]) -> dict[str, Tensor]:
        pooled[:] = [None] * len(MODALITIES)
        feats = model.features(inputs)
        ori_t = model.test_time("ori", feats["ori"])
        out = {"ori": feats["ori"], "ori_t": ori_t}
        if "fuse" in feats:
            out.update(fuse=feats["fuse"], fuse_t=model.test_time("fuse", feats["fuse"]))
        out["test"] = out["ori_t"] if model.test_feature == "ori" else out["fuse_t"]
        if taps is not None and all(p is not None for p in pooled):
            out["after"] = torch.stack(pooled, dim=1)  # (B, 3, C)
        return out

    try:
        cols, labelled = eval_pass(model, loader, device, amp, quiet, desc, step)
    finally:
        for h in handles:
            h.remove()

    ori = cols["ori"]
    fuse = cols.get("fuse")
    c = ori.shape[1] // len(MODALITIES)
    before = np.stack([ori[:, k * c : (k + 1) * c] for k in range(len(MODALITIES))])
    after = np.ascontiguousarray(cols["after"].transpose(1, 0, 2)) if "after" in cols else None  # (3, N, C)
    readout = None
    if after is not None and fuse is not None and fuse.shape[1] == len(MODALITIES) * c:
        readout = np.stack([fuse[:, k * c : (k + 1) * c] for k in range(len(MODALITIES))])
    return AnalysisFeatures(
        test=cols["test"],
        ori=ori,
        fuse=fuse,
        ori_test=cols["ori_t"],
        fuse_test=cols.get("fuse_t"),
        before=before,
        after=after,
        readout=readout,
        pids=labelled.pids,
        camids=labelled.camids,
        sceneids=labelled.sceneids,
        paths=labelled.paths,
    )


# ----------------------------------------------------------------------------- t-SNE


def select_identities(pids: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` identities drawn without replacement from the distinct ``pids`` (sorted result);
    the same ``pids`` and ``seed`` always give the same identities."""
    available = np.unique(pids)
    if len(available) < 2:
        raise UserError(f"t-SNE needs at least 2 test identities; the test set has {len(available)}")
    if n < 2:
        raise UserError(f"--ids {n}: t-SNE needs at least 2 identities")
    if n > len(available):
        raise UserError(
            f"--ids {n}: the test set (query + gallery) has only {len(available)} identities; "
            f"give --ids {len(available)} or fewer"
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(available, size=n, replace=False))


def tsne_rows(feats: AnalysisFeatures, identities: np.ndarray) -> np.ndarray:
    """Row indices of the captures of ``identities``, in extraction order."""
    return np.flatnonzero(np.isin(feats.pids, identities))


def tsne_embedding(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, D) features -> (N, 2) scikit-learn t-SNE of the L2-normalised rows (PCA init, fixed
    seed; perplexity 30 or less where N is small)."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    if n < 3:
        raise UserError(f"t-SNE needs at least 3 captures of the chosen identities; there are {n}")
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, learning_rate="auto")
    return tsne.fit_transform(x).astype(np.float32)


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def _id_colours(identities: np.ndarray) -> dict[int, Any]:
    # tab20 holds 10 hues, each dark then light: the 10 dark ones first, so up to 10 identities
    # get 10 distinct hues; beyond 20, evenly spaced colours of a wide map.
    n = len(identities)
    if n <= 20:
        tab = colormaps["tab20"].colors
        order = [*range(0, 20, 2), *range(1, 20, 2)]
        return {int(p): tab[order[i]] for i, p in enumerate(identities)}
    cmap = colormaps["gist_ncar"]
    return {int(p): cmap(0.95 * i / n) for i, p in enumerate(identities)}


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_tsne(
    path: Path,
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray] | None]],
    identities: np.ndarray,
) -> Path:
    """``panels[checkpoint][feature] = (embedding, pids, camids)`` or None (no such feature):
    one row per feature (ori, fuse), one column per checkpoint."""
    labels = list(panels)
    kinds = ["ori", "fuse"]
    colours = _id_colours(identities)
    fig = Figure(figsize=(4.2 * len(labels) + 1.6, 4.0 * len(kinds)))
    axes = fig.subplots(len(kinds), len(labels), squeeze=False)
    cams: set[int] = set()
    for c, label in enumerate(labels):
        for r, kind in enumerate(kinds):
            ax = axes[r][c]
            data = panels[label].get(kind)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label}: {kind}", fontsize=9)
            if data is None:
                ax.text(0.5, 0.5, "no aggregator:\nno fuse feature", ha="center", va="center", fontsize=9)
                continue
            emb, pids, camids = data
            for cam in np.unique(camids):
                sel = camids == cam
                cams.add(int(cam))
                ax.scatter(
                    emb[sel, 0],
                    emb[sel, 1],
                    c=[colours[int(p)] for p in pids[sel]],
                    marker=_MARKERS[int(cam) % len(_MARKERS)],
                    s=28,
                    edgecolors="black",
                    linewidths=0.3,
                )
    handles = [
        Line2D([], [], marker=_MARKERS[c % len(_MARKERS)], ls="", color="grey", label=f"camera {c + 1}")
        for c in sorted(cams)
    ]
    handles += [
        Line2D([], [], marker="o", ls="", color=colours[int(p)], label=f"id {int(p)}") for p in identities
    ]
    fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    fig.subplots_adjust(right=1 - 1.5 / (4.2 * len(labels) + 1.6))
    return _save(fig, path)


# ----------------------------------------------------------------------------- alignment


def pair_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, C) arrays (float64)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = (a * b).sum(1)
    den = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return num / den


def other_capture_cosines(a: np.ndarray, b: np.ndarray, limit: int = MAX_OTHER_CAPTURES) -> np.ndarray:
    """cos(a_i, b_j) for every i != j among the first ``limit`` captures."""
    a = np.asarray(a[:limit], dtype=np.float64)
    b = np.asarray(b[:limit], dtype=np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    sim = a @ b.T
    return sim[~np.eye(len(a), dtype=bool)]


def joint_bins(*samples: np.ndarray, num: int = NUM_BINS) -> np.ndarray:
    """``num`` equal bins spanning the values of all ``samples`` (a width of 1e-6 at least)."""
    values = np.concatenate([np.ravel(s) for s in samples])
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:
        lo, hi = lo - 5e-7, hi + 5e-7
    return np.linspace(lo, hi, num + 1)


def histogram_intersection(x: np.ndarray, y: np.ndarray, bins: np.ndarray | None = None) -> float:
    """sum_b min(p_b, q_b) of the two samples' normalised histograms on ``bins`` (default:
    :func:`joint_bins` of both)."""
    if len(x) == 0 or len(y) == 0:
        return float("nan")
    bins = joint_bins(x, y) if bins is None else bins
    p, _ = np.histogram(np.clip(x, bins[0], bins[-1]), bins=bins)
    q, _ = np.histogram(np.clip(y, bins[0], bins[-1]), bins=bins)
    return float(np.minimum(p / p.sum(), q / q.sum()).sum())


def _pair_name(i: int, j: int) -> str:
    return f"{MODALITIES[i]}-{MODALITIES[j]}"


def alignment_stats(feats: AnalysisFeatures) -> dict[str, dict[str, Any]]:
    """Per pair (``RGB-NI``, ``RGB-TI``, ``NI-TI``): per stage (``before``, ``after``,
    ``readout`` where the model has them) the mean and standard deviation of the same-capture
    cosine similarity and ``same_vs_other_overlap``, and ``before_after_overlap`` (see
    :data:`OVERLAP_DEFINITION`)."""
    stages = {"before": feats.before, "after": feats.after, "readout": feats.readout}
    out: dict[str, dict[str, Any]] = {}
    for i, j in PAIRS:
        entry: dict[str, Any] = {}
        same = {}
        for stage, arr in stages.items():
            if arr is None:
                continue
            cos = pair_cosines(arr[i], arr[j])
            same[stage] = cos
            entry[stage] = {
                "mean": float(cos.mean()),
                "std": float(cos.std()),
                "same_vs_other_overlap": histogram_intersection(cos, other_capture_cosines(arr[i], arr[j])),
            }
        if "after" in same:
            entry["before_after_overlap"] = histogram_intersection(same["before"], same["after"])
        out[_pair_name(i, j)] = entry
    return out


def plot_alignment(path: Path, per_checkpoint: dict[str, AnalysisFeatures]) -> Path:
    """Histograms of same-capture cosine similarity, before and after MA: one row per checkpoint,
    one column per modality pair; each panel's bins span its values."""
    labels = list(per_checkpoint)
    fig = Figure(figsize=(13, 3.1 * len(labels)))
    axes = fig.subplots(len(labels), len(PAIRS), squeeze=False)
    for r, label in enumerate(labels):
        f = per_checkpoint[label]
        for c, (i, j) in enumerate(PAIRS):
            ax = axes[r][c]
            stages = [("before MA", f.before, "#888888"), ("after MA", f.after, "#d62728")]
            cosines = [
                (name, pair_cosines(arr[i], arr[j]), colour)
                for name, arr, colour in stages
                if arr is not None
            ]
            bins = joint_bins(*(cos for _, cos, _ in cosines))
            for name, cos, colour in cosines:
                ax.hist(cos, bins=bins, alpha=0.6, color=colour, label=f"{name} (mean {cos.mean():.4f})")
            ax.set_title(f"{label}: {_pair_name(i, j)}", fontsize=9)
            ax.set_xlabel("cosine similarity (same capture)", fontsize=8)
            ax.set_ylabel("captures", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.ticklabel_format(axis="x", useOffset=False)
            ax.legend(fontsize=7, loc="upper left")
            if f.after is None:
                ax.text(0.5, 0.6, "no MA in this model", transform=ax.transAxes, ha="center", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- Grad-CAM


def _token_grid_transform(grid: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    h, w = grid

    def reshape(tokens: Tensor) -> Tensor:
        # (B, H*W, C) row-major tokens -> (B, C, H, W), the layout Grad-CAM expects.
        return tokens.reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)

    return reshape


class _StackedInput(nn.Module):
    """The model as ``pytorch-grad-cam`` calls it: one (B, 9, H, W) tensor, the RGB, NI and TI
    images stacked on channels, to the three modalities' features after MA, (B, 3·C): the means
    of their mixed patch tokens, read from the aggregator's ``mixed_taps``."""

    def __init__(self, model: nn.Module, camids: Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.camids = camids

    def forward(self, x: Tensor) -> Tensor:
        images = dict(zip(MODALITIES, x.chunk(len(MODALITIES), dim=1)))
        mixed: list[Tensor | None] = [None] * len(MODALITIES)

        def keep(k: int) -> Callable[..., None]:
            def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
                mixed[k] = output

            return hook

        handles = [tap.register_forward_hook(keep(k)) for k, tap in enumerate(_mixed_taps(self.model))]
        try:
            self.model.features({**images, "camids": self.camids})
        finally:
            for h in handles:
                h.remove()
        return torch.cat([m.mean(dim=1) for m in mixed], dim=1)


class _ModalityNorm:
    """Grad-CAM target: the L2 norm of modality ``k``'s feature after MA, a (3·C,) row's chunk."""

    def __init__(self, k: int, dim: int) -> None:
        self.k, self.dim = k, dim

    def __call__(self, output: Tensor) -> Tensor:
        return output[self.k * self.dim : (self.k + 1) * self.dim].norm()


def grad_cam_maps(model: nn.Module, batch: dict[str, Any], modality: str) -> np.ndarray:
    """Grad-CAM of ``modality``'s feature after MA for a batch: (B, H, W) maps in [0, 1] at the
    image size. Activations: the modality's mixed patch tokens f_ir^M (the aggregator's
    ``mixed_taps``, reshaped to the token grid); target: the L2 norm of their mean, the
    modality's feature after MA (as ReID Grad-CAMs take the norm of a pooled embedding).

    Not the readout's output f_final^M: the readout normalises [cls, mean(f_ir^M)] with a
    LayerNorm, which is scale-invariant, so for any target behind it the gradient g satisfies
    g·mean(f_ir^M) = -g_cls·cls: the sum of the Grad-CAM map's terms takes the sign of the cls
    token's gradient, and on a trained model whole maps came out negative, i.e. zero after the
    ReLU.
    """
    taps = _mixed_taps(model)
    if taps is None:
        raise ValueError("Grad-CAM after MA needs a mixing aggregator (model.aggregator with a readout)")
    k = MODALITIES.index(modality)
    device = next(model.parameters()).device
    x = torch.cat([batch[m].to(device) for m in MODALITIES], dim=1)
    camids = batch.get("camids")
    wrapper = _StackedInput(model, camids.to(device) if torch.is_tensor(camids) else None)
    was_training = model.training
    cam = GradCAM(wrapper, [taps[k]], reshape_transform=_token_grid_transform(model.aggregator.grid))
    try:
        with torch.enable_grad():
            maps = cam(x, targets=[_ModalityNorm(k, model.aggregator.dim)] * len(x))
    finally:
        cam.activations_and_grads.release()
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return np.asarray(maps, dtype=np.float32)


def _denormalise(img: Tensor, cfg: Config) -> np.ndarray:
    arr = img.detach().float().cpu().numpy().transpose(1, 2, 0) * cfg.data.std + cfg.data.mean
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def plot_grad_cam(
    path: Path, images: dict[str, Tensor], maps: dict[str, np.ndarray], row_labels: list[str], cfg: Config
) -> Path:
    """Rows: queries; columns: RGB, NI, TI, each image with its Grad-CAM overlaid."""
    n = len(row_labels)
    h, w = images[MODALITIES[0]].shape[-2:]
    cell = 1.9
    fig = Figure(figsize=(3 * cell * w / max(h, w) * 1.6 + 2.2, n * cell * h / max(h, w) * 1.15 + 0.4))
    axes = fig.subplots(n, len(MODALITIES), squeeze=False)
    for r in range(n):
        for c, m in enumerate(MODALITIES):
            ax = axes[r][c]
            overlay = show_cam_on_image(_denormalise(images[m][r], cfg), maps[m][r], use_rgb=True)
            ax.imshow(overlay, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(m, fontsize=9)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------- metrics


def per_query_ap(dist: np.ndarray, qf: FeatureSet, gf: FeatureSet, use_scenes: bool) -> np.ndarray:
    """Average precision of each query under the evaluation protocol (NaN: no valid match)."""
    out = np.full(len(qf.paths), np.nan)
    for i in range(len(out)):
        q = slice(i, i + 1)
        scenes = (qf.sceneids[q], gf.sceneids) if use_scenes else (None, None)
        try:
            res = evaluate(
                dist[q], qf.pids[q], gf.pids, qf.camids[q], gf.camids, *scenes, max_rank=1, num_workers=1
            )
        except ValueError:
            continue
        out[i] = res.mAP
    return out


def _pick_queries(ap: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """(best, worst) query indices by AP: ``k - k // 2`` best and ``k // 2`` worst (at least one
    worst when ``k`` >= 1), disjoint, among the queries with a valid match."""
    valid = np.flatnonzero(~np.isnan(ap))
    order = valid[np.argsort(-ap[valid], kind="stable")]
    k = min(k, len(order))
    n_worst = min(len(order), max(k // 2, 1 if k else 0))
    worst = list(order[::-1][:n_worst])
    best = [i for i in order[: k - n_worst] if i not in worst]
    return [int(i) for i in best], [int(i) for i in worst]


# ----------------------------------------------------------------------------- the command


@dataclass
class _Checkpoint:
    label: str
    path: Path
    model: nn.Module
    cfg: Config
    ckpt: dict[str, Any]
    feats: AnalysisFeatures | None = None
    query: FeatureSet | None = None
    gallery: FeatureSet | None = None
    result: EvalResult | None = None
    ap: np.ndarray | None = None
    dist: np.ndarray | None = None


def _labels(paths: Sequence[Path]) -> list[str]:
    out: list[str] = []
    for p in paths:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{p.resolve().parent.name}-{p.stem}").strip("-") or "ckpt"
        label, n = base, 2
        while label in out:
            label, n = f"{base}-{n}", n + 1
        out.append(label)
    return out


def _summary(c: _Checkpoint) -> dict[str, Any]:
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
    paths = [Path(checkpoint), *(Path(c) for c in compare)]
    for i, p in enumerate(paths):
        if not p.is_file():
            what = "is a folder" if p.is_dir() else "no such file"
            raise UserError(f"{'--checkpoint' if i == 0 else '--compare'} {p}: {what}")
    if missing not in (None, "all"):
        raise UserError(f"--missing {missing}: analyze supports only 'all' (the missing-modality table)")
    if queries < 0:
        raise UserError(f"--queries {queries}: must be >= 0")
    if ids is not None and ids < 2:
        raise UserError(f"--ids {ids}: t-SNE needs at least 2 identities")
    out = Path(out) if out is not None else paths[0].parent / "analysis"
    check_output_dir(out, "--out")

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
    out.mkdir(parents=True, exist_ok=True)

    ctx = _Context(out=out, ds=ds, runs=runs, quiet=quiet)
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
        checkpoints=[_summary(r) for r in runs],
        metrics={r.label: r.result.to_json() for r in runs},
    )
    plot_cmc(out / "cmc.png", {r.label: r.result.cmc for r in runs}, title=f"{ds.name} CMC")
    ctx.figure(
        "cmc.png",
        "CMC curves",
        "Fraction of queries with a true match within the top k: higher, faster-rising curves are better.",
    )
    _tsne_section(ctx, identities, seed)
    _alignment_section(ctx)
    # The queries are chosen by the first checkpoint's AP, the same for every checkpoint.
    best, worst = _pick_queries(runs[0].ap, queries)
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
    _grad_cam_section(ctx, best, worst)
    _rank_list_section(ctx, worst, rank_k)
    tables = _missing_section(ctx) if missing == "all" else []

    table = format_table({r.label: r.result for r in runs}, title=f"{ds.name} test set (analyze)")
    (out / "metrics.txt").write_text(table + "\n")
    (out / "analysis.json").write_text(json.dumps(ctx.report, indent=1, default=_json_default))
    page = write_report_page(out, ctx.report)
    if announce:
        if not quiet:
            print("\n\n".join([table, *tables]))
        print(f"analysis written to {out} (report: {page})")
    return ctx.report


@dataclass
class _Context:
    """What the sections of :func:`run_analyze` share: the folder, the dataset, the checkpoints,
    and the report (``analysis.json``) they fill, figures in page order."""

    out: Path
    ds: Any
    runs: list[_Checkpoint]
    quiet: bool
    report: dict[str, Any] = field(default_factory=lambda: {"figures": []})

    def figure(self, file: str, title: str, caption: str) -> None:
        self.report["figures"].append({"file": file, "title": title, "caption": caption})

    def bar(self, items: Sequence[Any], desc: str) -> Any:
        return tqdm(items, desc=desc, disable=True if self.quiet else None, leave=False, dynamic_ncols=True)


def _load_runs(paths: list[Path], overrides: list[str] | None, extra: dict | None) -> list[_Checkpoint]:
    runs: list[_Checkpoint] = []
    for label, p in zip(_labels(paths), paths):
        model, cfg, ckpt = load_model(p, None, overrides, extra)
        if runs and cfg.data.dataset != runs[0].cfg.data.dataset:
            raise UserError(
                f"--compare {p} is a {cfg.data.dataset} checkpoint but --checkpoint {paths[0]} is "
                f"{runs[0].cfg.data.dataset}: compared checkpoints must be of one dataset"
            )
        runs.append(_Checkpoint(label, p, model, cfg, ckpt))
    return runs


def _extract_and_evaluate(ctx: _Context, samples: list) -> None:
    """Features of every capture, metrics and per-query AP, per checkpoint."""
    name = ctx.ds.name
    use_scenes = dataset_spec(name).has_scenes
    row_of = {s.paths: i for i, s in enumerate(samples)}
    q_rows = [row_of[s.paths] for s in ctx.ds.query]
    g_rows = [row_of[s.paths] for s in ctx.ds.gallery]
    for r in ctx.runs:
        device = next(r.model.parameters()).device
        loader = eval_loader(r.cfg, samples, name)
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


def _tsne_section(ctx: _Context, identities: np.ndarray, seed: int) -> None:
    rows = tsne_rows(ctx.runs[0].feats, identities)  # every checkpoint saw the same captures
    panels: dict[str, dict[str, Any]] = {}
    inputs = {}
    for r in ctx.bar(ctx.runs, "t-SNE"):
        f = r.feats
        panels[r.label] = {}
        arrays: dict[str, np.ndarray] = {
            "rows": rows,
            "pids": f.pids[rows],
            "camids": f.camids[rows],
            "paths": np.asarray([f.paths[i] for i in rows], dtype=str),
        }
        for kind, x in (("ori", f.ori_test), ("fuse", f.fuse_test)):
            if x is None:
                panels[r.label][kind] = None
                continue
            emb = tsne_embedding(x[rows], seed)
            panels[r.label][kind] = (emb, f.pids[rows], f.camids[rows])
            arrays[kind] = x[rows]
            arrays[f"{kind}_embedding"] = emb
        inputs[r.label] = f"tsne-{r.label}.npz"
        np.savez(ctx.out / inputs[r.label], **arrays)
    plot_tsne(ctx.out / "tsne.png", panels, identities)
    ctx.report["tsne"] = {
        "identities": [int(p) for p in identities],
        "num_points": int(len(rows)),
        "inputs": inputs,
        "normalised": "rows L2-normalised before TSNE",
    }
    ctx.figure(
        "tsne.png",
        "Feature distributions (t-SNE, paper Fig. 5)",
        f"{len(identities)} test identities (colours) across cameras (markers), ori (backbone) and "
        "fuse (aggregator) features: look for tight, well-separated clusters per colour, and for "
        "the markers of one colour mixing (camera invariance).",
    )


def _alignment_section(ctx: _Context) -> None:
    ctx.report["alignment"] = {r.label: alignment_stats(r.feats) for r in ctx.runs}
    ctx.report["overlap_definition"] = OVERLAP_DEFINITION
    plot_alignment(ctx.out / "alignment.png", {r.label: r.feats for r in ctx.runs})
    ctx.figure(
        "alignment.png",
        "Modality alignment before and after MA (paper Fig. 6)",
        "Cosine similarity between two modalities' features of the same capture, before MA (grey: "
        "the cls tokens) and after (red: the mixed patch tokens): look for how far MA moves and "
        "narrows the distributions, i.e. how much the modalities come to agree.",
    )


def _grad_cam_section(ctx: _Context, best: list[int], worst: list[int]) -> None:
    ctx.report["grad_cam"] = {}
    chosen = [*best, *worst]
    if not chosen:
        return
    first = ctx.runs[0]
    q_samples = [ctx.ds.query[i] for i in chosen]
    row_labels = [
        f"{'best' if i in best else 'worst'}\nid {int(first.query.pids[i])}\nAP {100 * first.ap[i]:.0f}%"
        for i in chosen
    ]
    for r in ctx.bar(ctx.runs, "Grad-CAM"):
        if _mixed_taps(r.model) is None:
            ctx.report["grad_cam"][r.label] = None
            continue
        batch = _one_batch(eval_loader(r.cfg, q_samples, ctx.ds.name))
        maps = {m: grad_cam_maps(r.model, batch, m) for m in MODALITIES}
        file = f"gradcam-{r.label}.png"
        plot_grad_cam(ctx.out / file, {m: batch[m] for m in MODALITIES}, maps, row_labels, r.cfg)
        ctx.report["grad_cam"][r.label] = file
        ctx.figure(
            file,
            f"Grad-CAM after MA: {r.label} (paper Figs. 10-11)",
            "Each modality's feature after MA, best then worst queries: look for heat on the object "
            "(head, clothes, wheels) rather than the background, and for the modalities "
            "highlighting different, complementary regions.",
        )


def _rank_list_section(ctx: _Context, worst: list[int], k: int) -> None:
    ctx.report["rank_lists"] = {}
    for r in ctx.runs:
        files = []
        for i in worst:
            matches = rank_gallery(r.dist[i], r.query.paths[i], int(r.query.pids[i]), r.gallery, k)
            file = f"ranklist-{r.label}-q{i}.png"
            draw_rank_list(r.query.paths[i], matches, ctx.ds.name, ctx.out / file)
            files.append(file)
            ctx.figure(
                file,
                f"Rank list of a worst query (query {i}, id {int(r.query.pids[i])}): {r.label}",
                f"The query (blue) then its top {k} gallery captures, green: same identity, red: "
                "another: look at what the false matches share with the query.",
            )
        ctx.report["rank_lists"][r.label] = files


def _missing_section(ctx: _Context) -> list[str]:
    """The missing-modality table per checkpoint (its full row is the metrics above)."""
    ctx.report["missing"] = {}
    tables = []
    for r in ctx.runs:
        device = next(r.model.parameters()).device
        amp = eval_amp(r.cfg, device)

        def evaluate_setting(setting: str, r: _Checkpoint = r, device=device, amp=amp) -> EvalResult:
            if setting == "full":
                return r.result
            ds = ctx.ds
            return evaluate_model(
                r.model, r.cfg, ds.name, ds.query, ds.gallery, device, amp, ctx.quiet, setting, rerank=False
            )

        rows, table = missing_modality_table(
            evaluate_setting, settings=MISSING_SETTINGS, title=f"{ctx.ds.name}, missing modalities: {r.label}"
        )
        tables.append(table)
        ctx.report["missing"][r.label] = {k: v.to_json() for k, v in rows.items()}
    (ctx.out / "missing_modality.txt").write_text("\n\n".join(tables) + "\n")
    return tables


def _one_batch(loader: Any) -> dict[str, Any]:
    batches = list(loader)
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    return {
        k: torch.cat([b[k] for b in batches]) if torch.is_tensor(v) else [x for b in batches for x in b[k]]
        for k, v in first.items()
    }


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
