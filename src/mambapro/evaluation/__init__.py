"""Evaluation: exact ReID metrics, distances, k-reciprocal re-ranking and reports.

``evaluate`` ranks a (Q, G) distance matrix under the market protocol (junk: same pid and
camera) or the MSVR310 protocol (junk: same pid and scene); ``compute_distmat`` builds the
matrix from features (squared Euclidean on L2-normalised features by default); ``re_ranking``
replaces it by the k-reciprocal distance; ``evaluate_features`` applies the three to query and
gallery features; ``report`` prints, saves and plots results and assembles the missing-modality
table.
"""

from mambapro.evaluation.distance import METRICS, compute_distmat
from mambapro.evaluation.metrics import REPORT_RANKS, EvalResult, evaluate
from mambapro.evaluation.report import (
    COLUMNS,
    MISSING_SETTINGS,
    MissingModalityTable,
    evaluate_features,
    format_table,
    missing_label,
    missing_modality_table,
    plot_cmc,
    plot_heatmap,
    save_results_json,
)
from mambapro.evaluation.rerank import re_ranking

__all__ = [
    "COLUMNS",
    "METRICS",
    "MISSING_SETTINGS",
    "REPORT_RANKS",
    "EvalResult",
    "MissingModalityTable",
    "compute_distmat",
    "evaluate",
    "evaluate_features",
    "format_table",
    "missing_label",
    "missing_modality_table",
    "plot_cmc",
    "plot_heatmap",
    "re_ranking",
    "save_results_json",
]
