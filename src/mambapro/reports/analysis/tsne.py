"""The t-SNE figure (paper Fig. 5): the identities drawn, the scikit-learn embedding of their
``ori`` and ``fuse`` test features, the plot, and the ``tsne`` section of the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.manifold import TSNE

from mambapro.errors import UserError
from mambapro.reports.analysis.context import Context, save_figure
from mambapro.reports.analysis.features import AnalysisFeatures

__all__ = [
    "DEFAULT_IDS",
    "plot_tsne",
    "select_identities",
    "tsne_embedding",
    "tsne_rows",
    "tsne_section",
]

#: Test identities in the t-SNE when none are asked for (all of them where the test set has fewer).
DEFAULT_IDS = 20


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
    return save_figure(fig, path)


def tsne_section(ctx: Context, identities: np.ndarray, seed: int) -> None:
    """``tsne.png`` of every checkpoint, its inputs (``tsne-<label>.npz``) and the report's
    ``tsne`` entry."""
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
