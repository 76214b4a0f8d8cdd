"""The modality-alignment figure (paper Fig. 6): cosine similarity between two modalities'
features of one capture before MA (cls tokens), after MA (mean mixed patch tokens) and after the
readout, its statistics and overlap measures, the histograms, and the ``alignment`` section of
the report; for every pair of the model's modalities (three pairs for RGB, NI, TI, one for two
modalities, six for four)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mambapro.modalities import ModalitySet
from mambapro.reports.analysis.context import Context, save_figure
from mambapro.reports.analysis.features import AnalysisFeatures

__all__ = [
    "MAX_OTHER_CAPTURES",
    "NUM_BINS",
    "OVERLAP_DEFINITION",
    "PAIRS",
    "alignment_section",
    "alignment_stats",
    "histogram_intersection",
    "joint_bins",
    "modality_pairs",
    "other_capture_cosines",
    "pair_cosines",
    "plot_alignment",
]


def modality_pairs(n: int) -> tuple[tuple[int, int], ...]:
    """Every pair of ``n`` modalities, as index pairs in set order: (0, 1), (0, 2), (1, 2), ..."""
    return tuple(itertools.combinations(range(n), 2))


#: The modality pairs of RGB, NI and TI: RGB-NI, RGB-TI, NI-TI.
PAIRS: tuple[tuple[int, int], ...] = modality_pairs(3)
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


def _pair_name(modalities: ModalitySet, i: int, j: int) -> str:
    return f"{modalities.keys[i]}-{modalities.keys[j]}"


def alignment_stats(feats: AnalysisFeatures) -> dict[str, dict[str, Any]]:
    """Per pair of ``feats.modalities`` (``RGB-NI``, ``RGB-TI``, ``NI-TI``): per stage (``before``, ``after``,
    ``readout`` where the model has them) the mean and standard deviation of the same-capture
    cosine similarity and ``same_vs_other_overlap``, and ``before_after_overlap`` (see
    :data:`OVERLAP_DEFINITION`)."""
    stages = {"before": feats.before, "after": feats.after, "readout": feats.readout}
    out: dict[str, dict[str, Any]] = {}
    for i, j in modality_pairs(len(feats.modalities)):
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
        out[_pair_name(feats.modalities, i, j)] = entry
    return out


def plot_alignment(path: Path, per_checkpoint: dict[str, AnalysisFeatures]) -> Path:
    """Histograms of same-capture cosine similarity, before and after MA: one row per checkpoint,
    one column per modality pair; each panel's bins span its values. The checkpoints share
    their modalities (those of one dataset)."""
    labels = list(per_checkpoint)
    pairs = modality_pairs(len(per_checkpoint[labels[0]].modalities))
    fig = Figure(figsize=(13 * max(len(pairs), 2) / 3, 3.1 * len(labels)))
    axes = fig.subplots(len(labels), len(pairs), squeeze=False)
    for r, label in enumerate(labels):
        f = per_checkpoint[label]
        for c, (i, j) in enumerate(pairs):
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
            ax.set_title(f"{label}: {_pair_name(f.modalities, i, j)}", fontsize=9)
            ax.set_xlabel("cosine similarity (same capture)", fontsize=8)
            ax.set_ylabel("captures", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.ticklabel_format(axis="x", useOffset=False)
            ax.legend(fontsize=7, loc="upper left")
            if f.after is None:
                ax.text(0.5, 0.6, "no MA in this model", transform=ax.transAxes, ha="center", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def alignment_section(ctx: Context) -> None:
    """``alignment.png`` and the report's ``alignment`` statistics of every checkpoint."""
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
