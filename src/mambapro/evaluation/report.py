"""Result tables (text and JSON), CMC plots and the missing-modality table.

Tables show percentages with one decimal, as the paper does; JSON keeps fractions in [0, 1] at
full precision together with the CMC curve and the query counts, so nothing is lost. Plots use
matplotlib's Agg canvas directly (no pyplot state, no display needed).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from mambapro.evaluation.distance import compute_distmat
from mambapro.evaluation.metrics import REPORT_RANKS, EvalResult, evaluate
from mambapro.evaluation.rerank import re_ranking
from mambapro.modalities import MISSING_SETTINGS, RGB_NI_TI, ModalitySet, missing_label

__all__ = [
    "COLUMNS",
    "MISSING_SETTINGS",
    "MissingModalityTable",
    "format_table",
    "save_results_json",
    "plot_cmc",
    "missing_label",
    "plot_heatmap",
    "missing_modality_table",
    "evaluate_features",
]

#: Columns of a result table, in order.
COLUMNS = ("mAP", *(f"Rank-{k}" for k in REPORT_RANKS), "mINP")

Row = EvalResult | Mapping[str, float]


#: Keys of ``EvalResult.to_json`` besides the columns, accepted (and not shown) in dict rows.
_EXTRA_KEYS = ("cmc", "num_valid", "num_skipped", "protocol")


def _row_values(name: str, row: Row) -> dict[str, float]:
    values = row.as_dict() if isinstance(row, EvalResult) else dict(row)
    values = {k: v for k, v in values.items() if k not in _EXTRA_KEYS}
    unknown = set(values) - set(COLUMNS)
    missing = {"mAP"} - set(values)
    if missing or unknown:
        raise ValueError(
            f"row '{name}': expected keys among {', '.join(COLUMNS)} (mAP required), "
            f"got {', '.join(map(str, values))}"
        )
    for key, v in values.items():
        if not isinstance(v, (int, float, np.floating, np.integer)) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"row '{name}': {key} = {v!r} must be a fraction in [0, 1]")
    return {k: float(v) for k, v in values.items()}


def format_table(rows: Mapping[str, Row], title: str | None = None) -> str:
    """A fixed-width text table, one line per row, metrics in percent.

    Args:
        rows: name -> :class:`EvalResult` or a dict with keys among :data:`COLUMNS` (fractions).
            A missing column prints as ``-``.
        title: optional first line.
    """
    if not rows:
        raise ValueError("format_table needs at least one row")
    values = {str(name): _row_values(str(name), row) for name, row in rows.items()}
    name_w = max(len("setting"), *(len(n) for n in values))
    col_w = max(len(c) for c in COLUMNS)
    header = f"{'setting':<{name_w}}  " + "  ".join(f"{c:>{col_w}}" for c in COLUMNS)
    rule = "-" * len(header)
    lines = [title] if title else []
    lines += [rule, header, rule]
    for name, vals in values.items():
        cells = [f"{100 * vals[c]:.1f}" if c in vals else "-" for c in COLUMNS]
        lines.append(f"{name:<{name_w}}  " + "  ".join(f"{x:>{col_w}}" for x in cells))
    lines.append(rule)
    return "\n".join(lines)


def save_results_json(
    path: str | Path, rows: Mapping[str, Row], extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``{"results": {name: {...}}, **extra}`` to ``path`` (parents created).

    An :class:`EvalResult` row is stored with its CMC curve and query counts; a dict row as is.
    """
    if not rows:
        raise ValueError("save_results_json needs at least one row")
    results = {}
    for name, row in rows.items():
        _row_values(str(name), row)
        results[str(name)] = row.to_json() if isinstance(row, EvalResult) else dict(row)
    payload: dict[str, Any] = {"results": results}
    if extra:
        if "results" in extra:
            raise ValueError("save_results_json: 'results' is reserved, rename that key of extra")
        payload.update(extra)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def plot_cmc(
    path: str | Path,
    results: Mapping[str, EvalResult | Sequence[float] | np.ndarray],
    title: str = "CMC",
    max_rank: int | None = None,
) -> Path:
    """Save CMC curves (one per entry, in percent against rank) as a PNG.

    Args:
        results: name -> CMC curve (fractions, ``cmc[k - 1]`` at rank k) or :class:`EvalResult`.
        max_rank: plot ranks 1..max_rank (default: the longest curve).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("plot_cmc needs at least one curve")
    curves = {}
    for name, r in results.items():
        cmc = np.asarray(r.cmc if isinstance(r, EvalResult) else r, dtype=np.float64)
        if cmc.ndim != 1 or len(cmc) == 0:
            raise ValueError(f"curve '{name}' must be a non-empty 1-D CMC, got shape {cmc.shape}")
        if not np.all((cmc >= 0) & (cmc <= 1)):
            raise ValueError(f"curve '{name}' must hold fractions in [0, 1]")
        curves[str(name)] = cmc
    top = max_rank or max(len(c) for c in curves.values())
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, cmc in curves.items():
        k = min(top, len(cmc))
        ax.plot(np.arange(1, k + 1), 100 * cmc[:k], marker="o" if k <= 20 else None, ms=3, label=name)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title(title)
    ax.set_xlim(1, max(top, 2))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_heatmap(
    path: str | Path,
    values: np.ndarray | Sequence[Sequence[float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
) -> Path:
    """Save a (rows, cols) matrix of fractions as an annotated heat map (cells in percent)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid = np.asarray(values, dtype=np.float64)
    if grid.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"heat map of shape {grid.shape} needs {len(row_labels)} x {len(col_labels)} labels")
    fig = Figure(figsize=(1.2 + 0.9 * grid.shape[1], 1.0 + 0.6 * grid.shape[0]), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(100 * grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            # Light text on the dark end of viridis, dark text on the light end.
            colour = "white" if grid[i, j] < 0.6 else "black"
            ax.text(j, i, f"{100 * grid[i, j]:.1f}", ha="center", va="center", color=colour, fontsize=8)
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=30, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="%")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


Features = tuple[Any, Any, Any, Any]


def evaluate_features(
    query: Features,
    gallery: Features,
    *,
    use_scenes: bool = False,
    metric: str = "euclidean",
    normalize: bool = True,
    max_rank: int = 50,
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> EvalResult:
    """The ReID metrics of query against gallery features: the one place where the distance,
    the optional k-reciprocal re-ranking and the protocol are applied.

    Args:
        query, gallery: ``(feats (N, D), pids (N,), camids (N,), sceneids (N,) or None)``.
        use_scenes: MSVR310 protocol (junk: same pid and scene); else the market protocol.
        metric, normalize: distance, as in :func:`~mambapro.evaluation.compute_distmat`.
        max_rank: CMC length.
        rerank, k1, k2, lambda_value: optional k-reciprocal re-ranking (on the same distance).
    """
    q, g = _features(query, "query"), _features(gallery, "gallery")
    if use_scenes and (q[3] is None or g[3] is None):
        raise ValueError("use_scenes=True needs the scene ids of query and gallery")
    if rerank:
        dist = re_ranking(q[0], g[0], k1, k2, lambda_value, metric=metric, normalize=normalize)
    else:
        dist = compute_distmat(q[0], g[0], metric=metric, normalize=normalize)
    scenes = (q[3], g[3]) if use_scenes else (None, None)
    return evaluate(dist, q[1], g[1], q[2], g[2], *scenes, max_rank=max_rank)


class MissingModalityTable(NamedTuple):
    """Rows keyed by label (``full``, ``-R``, ...) and the text table; unpacks as a pair."""

    rows: dict[str, EvalResult]
    table: str


def missing_modality_table(
    evaluate_setting: Callable[[str], EvalResult],
    *,
    settings: Sequence[str] | None = None,
    modalities: ModalitySet = RGB_NI_TI,
    title: str = "Missing-modality evaluation",
    log: Callable[[str], None] | None = None,
) -> MissingModalityTable:
    """One row per missing-modality setting, in ``settings`` order.

    Args:
        evaluate_setting: ``setting -> EvalResult``: the model evaluated with those modalities
            missing (zeroed after normalisation) in query and gallery alike
            (``mambapro.retrieval.evaluate_model`` with ``missing=setting``).
        settings: settings of ``modalities``, in table order (default: all of them,
            ``modalities.settings``: 3 rows for two modalities, 7 for three, 15 for four).
        modalities: the model's modalities, whose letters the settings and labels use.
        title: first line of the table.
        log: called with a short line after each setting (e.g. ``print``).
    """
    settings = modalities.settings if settings is None else settings
    if not settings:
        raise ValueError("missing_modality_table needs at least one setting")
    labels = [modalities.missing_label(s) for s in settings]
    if len(set(labels)) != len(labels):
        raise ValueError(f"settings repeat: {list(settings)}")
    rows: dict[str, EvalResult] = {}
    for setting, label in zip(settings, labels):
        rows[label] = res = evaluate_setting(setting)
        if log is not None:
            log(f"{label:>5}: mAP {100 * res.mAP:.1f}  Rank-1 {100 * res.rank(1):.1f}")
    return MissingModalityTable(rows, format_table(rows, title=title))


def _features(out: Any, what: str) -> Features:
    if not (isinstance(out, (tuple, list)) and len(out) == 4):
        raise TypeError(f"{what} features must be (feats, pids, camids, sceneids)")
    return tuple(out)  # type: ignore[return-value]
