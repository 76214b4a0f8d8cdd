"""What the sections of ``analyze`` share: the checkpoints under analysis (:class:`Checkpoint`),
the output folder and the report they fill (:class:`Context`), and how a figure is written
(:func:`save_figure`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from mambapro.config import Config
from mambapro.evaluation import EvalResult
from mambapro.reports.analysis.features import AnalysisFeatures
from mambapro.retrieval.features import FeatureSet

__all__ = ["Checkpoint", "Context", "save_figure"]


@dataclass
class Checkpoint:
    """One analysed checkpoint: its model and config, then what the extraction pass finds."""

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


@dataclass
class Context:
    """What the sections of :func:`~mambapro.reports.analysis.run_analyze` share: the folder, the
    dataset, the checkpoints, and the report (``analysis.json``) they fill, figures in page order."""

    out: Path
    ds: Any
    runs: list[Checkpoint]
    quiet: bool
    report: dict[str, Any] = field(default_factory=lambda: {"figures": []})

    def figure(self, file: str, title: str, caption: str) -> None:
        self.report["figures"].append({"file": file, "title": title, "caption": caption})

    def bar(self, items: Sequence[Any], desc: str) -> Any:
        return tqdm(items, desc=desc, disable=True if self.quiet else None, leave=False, dynamic_ncols=True)


def save_figure(fig: Figure, path: Path) -> Path:
    """``fig`` as a PNG at ``path`` (every figure of the page: 110 dpi, tight box)."""
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
