"""``mambapro params``: trainable and total parameters per part, and aggregator MACs.

The model counted is the one the config describes for its dataset's modalities (``ori`` and the
aggregator grow with their number)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch

from mambapro.aggregation import aggregator_flops_table
from mambapro.config import Config
from mambapro.data.specs import dataset_spec
from mambapro.modalities import RGB_NI_TI
from mambapro.models import build_model

__all__ = ["parameter_report", "format_parameter_report", "flops_report"]

PART_ORDER = ("backbone", "adapters", "prompts", "camera", "aggregator", "heads", "missing")


def _count(params: list[torch.nn.Parameter]) -> dict[str, int]:
    return {
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "total": sum(p.numel() for p in params),
    }


def parameter_report(
    cfg: Config, num_classes: int | None = None, num_cameras: int | None = None
) -> dict[str, Any]:
    """Per-part parameter counts of the model ``cfg`` describes (built on the meta device), for
    the modalities of its dataset (``modalities`` in the report: their keys).

    Without explicit sizes the published dataset's identities and cameras are used.
    """
    # The published dataset's sizes: the classifier width and the camera table depend on them.
    classes, cams = dataset_spec(cfg.data.dataset).published
    weights = cfg.model.weights
    cfg.model.weights = None  # counting needs no weights: do not read a large file
    # The "randomly initialised" notice (a log record) means nothing when only counting.
    models_log = logging.getLogger("mambapro.models")
    level = models_log.level
    models_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = build_model(cfg, num_classes or classes, num_cameras or cams)
    finally:
        cfg.model.weights = weights
        models_log.setLevel(level)
    parts = model.parameter_parts()
    # "missing" (learned missing-modality tokens) exists only in models that have them.
    report = {"parts": {name: _count(parts[name]) for name in PART_ORDER if name in parts}}
    everything = [p for name in PART_ORDER for p in parts.get(name, [])]
    if len({id(p) for p in everything}) != len(list(model.parameters())):
        raise RuntimeError("parameter parts overlap or miss parameters; this is a bug in parameter_parts()")
    report.update(_count(everything))
    report["geometry"] = list(cfg.img_size())
    report["num_classes"] = num_classes or classes
    report["num_cameras"] = num_cameras or cams
    report["modalities"] = list(model.modalities.keys)
    return report


def format_parameter_report(report: dict[str, Any]) -> str:
    h, w = report["geometry"]
    keys = report.get("modalities", list(RGB_NI_TI.keys))
    # The paper's RGB, NI, TI go unsaid, as before modalities became the dataset's.
    named = "" if tuple(keys) == RGB_NI_TI.keys else f", modalities {'+'.join(keys)}"
    lines = [
        f"parameters at {h}x{w}, {report['num_classes']} classes, {report['num_cameras']} cameras{named}",
        f"{'part':<12}{'trainable':>15}{'total':>15}",
    ]
    for name, c in report["parts"].items():
        lines.append(f"{name:<12}{c['trainable']:>15,}{c['total']:>15,}")
    lines.append(f"{'all':<12}{report['trainable']:>15,}{report['total']:>15,}")
    return "\n".join(lines)


def flops_report(cfg: Config) -> str:
    """Per-sample MACs of the aggregators at the paper's sizes (3 x 128 tokens, C = 512)."""
    return aggregator_flops_table(dim=512, grid=(16, 8))
