"""``mambapro params``: trainable and total parameters per part, the backbone's MACs and the
aggregators' MACs.

The model counted is the one the config describes for its dataset's modalities (``ori`` and the
aggregator grow with their number), at its resolved image size (``Config.img_size``: 252x126 for
a patch-14 encoder on RGBNT201). Both counts build the model on the meta device: no weights are
allocated or read, so they take a second for any backbone."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from mambapro.aggregation import aggregator_flops, aggregator_flops_table
from mambapro.aggregation.flops import count_macs
from mambapro.config import Config
from mambapro.data.specs import dataset_spec
from mambapro.errors import ConfigError
from mambapro.modalities import RGB_NI_TI
from mambapro.models import build_backbone, build_model

__all__ = [
    "backbone_macs",
    "flops_data",
    "flops_report",
    "format_backbone_macs",
    "format_parameter_report",
    "parameter_report",
]

PART_ORDER = ("backbone", "adapters", "prompts", "camera", "aggregator", "heads", "missing")


@contextmanager
def _counting(cfg: Config) -> Iterator[None]:
    """Build on the meta device, without ``model.weights`` (counting needs no weights: do not
    read a large file) and without the "randomly initialised" notice, which means nothing here."""
    weights = cfg.model.weights
    cfg.model.weights = None
    models_log = logging.getLogger("mambapro.models")
    level = models_log.level
    models_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            yield
    finally:
        cfg.model.weights = weights
        models_log.setLevel(level)


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

    Without explicit sizes the published dataset's identities and cameras are used; a dataset
    that publishes no identity count (``published`` 0) needs ``num_classes``, a
    :class:`~mambapro.errors.ConfigError` says so.
    """
    # The published dataset's sizes: the classifier width and the camera table depend on them.
    spec = dataset_spec(cfg.data.dataset)
    classes, cams = spec.published
    if not num_classes and not classes:
        raise ConfigError(
            f"{spec.name} publishes no training identity count, which sets the classifiers' width: "
            "give --classes N (the identities of your copy's train split, as `mambapro check-data` "
            "counts them)"
        )
    with _counting(cfg):
        model = build_model(cfg, num_classes or classes, num_cameras or cams)
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


#: Module names (torch's ModuleTracker, dotted from the root) whose MACs are the adapters' and
#: the prompt layers'; a parent's count includes its children's, so only these roots are summed.
_ADAPTER_MODULE = re.compile(r"\.\d+\.adapter$")  # an encoder block's adapter
_PROMPT_MODULE = re.compile(r"\.prompts\.layers\.[^.]+$")


def backbone_macs(cfg: Config) -> dict[str, Any]:
    """Forward MACs per sample (all modalities of the dataset) of the backbone ``cfg`` describes:
    the shared encoder with its adapters and prompts, at ``cfg.img_size()``, without camera
    term (one addition, not a MAC). Counted by :func:`mambapro.aggregation.flops.count_macs` on
    the meta device (no weights read).

    Returns a dict with ``backbone``, ``img_size`` (H, W), ``grid`` (patch rows, columns),
    ``tokens`` (per image into the first block: cls, registers, patches), ``registers``,
    ``prompt_tokens`` (appended to each image's sequence in a prompted layer), ``prompt_layers``,
    ``modalities``, and the MACs ``encoder`` (its own layers, attention over the prompt tokens
    included), ``adapters``, ``prompts`` (the prompt layers' blocks) and ``total``.
    """
    modalities = cfg.modalities()
    h, w = cfg.img_size()
    with _counting(cfg):
        backbone = build_backbone(cfg.model, (h, w), num_cameras=1, modalities=modalities)
        images = {key: torch.empty(1, 3, h, w) for key in modalities.keys}
        tokens = backbone.encoder.embed(images[modalities.keys[0]]).shape[1]
    # Forward only: nothing needs gradients, and ModuleTracker's backward hooks would insist on
    # them for parameters passed as inputs (the prompt tokens).
    backbone.eval().requires_grad_(False)
    counts = count_macs(_ByKey(backbone, modalities.keys), [torch.stack(list(images.values()), dim=1)])
    adapters = sum(n for name, n in counts.items() if _ADAPTER_MODULE.search(name))
    prompts = sum(n for name, n in counts.items() if _PROMPT_MODULE.search(name))
    layers = list(backbone.prompts.layers.values()) if backbone.prompts is not None else []
    per_layer = 0
    if layers:
        with torch.device("meta"):
            groups = layers[0](1, None)  # (M, B, G, N, D)
        per_layer = groups.shape[2] * groups.shape[3]
    gh, gw = backbone.grid
    return {
        "backbone": cfg.model.backbone,
        "img_size": [h, w],
        "grid": [gh, gw],
        "tokens": tokens,
        "registers": tokens - 1 - gh * gw,
        "prompt_tokens": per_layer,
        "prompt_layers": len(layers),
        "modalities": list(modalities.keys),
        "encoder": counts["total"] - adapters - prompts,
        "adapters": adapters,
        "prompts": prompts,
        "total": counts["total"],
    }


class _ByKey(torch.nn.Module):
    """The backbone called with one stacked ``(B, M, 3, H, W)`` tensor (count_macs passes
    positional tensors and reads the batch size from dim 0 of the first)."""

    def __init__(self, backbone: torch.nn.Module, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.backbone = backbone
        self.keys = keys

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.backbone(dict(zip(self.keys, images.unbind(1))))


def format_backbone_macs(macs: dict[str, Any]) -> str:
    """The text table of :func:`backbone_macs`."""
    h, w = macs["img_size"]
    gh, gw = macs["grid"]
    regs = f" + {macs['registers']} registers" if macs["registers"] else ""
    prompts = (
        f", + {macs['prompt_tokens']} prompt tokens in {macs['prompt_layers']} layers"
        if macs["prompt_layers"]
        else ""
    )
    m = len(macs["modalities"])
    lines = [
        f"backbone {macs['backbone']} at {h}x{w}: {m} modalities x {macs['tokens']} tokens "
        f"(cls{regs} + {gh}x{gw} patches){prompts}; forward MACs per sample",
        f"{'part':<12}{'GMACs':>10}{'per image':>11}",
    ]
    for part in ("encoder", "adapters", "prompts", "total"):
        lines.append(f"{part:<12}{macs[part] / 1e9:>10.3f}{macs[part] / m / 1e9:>11.3f}")
    return "\n".join(lines)


#: The aggregators are compared at the paper's sizes (C = 512, 3 x 16x8 tokens), whatever the
#: config's backbone: the numbers then sit beside the paper's Tables 6 and 11.
PAPER_AGGREGATOR_SIZES = {"dim": 512, "grid": (16, 8)}


def flops_data(cfg: Config) -> dict[str, Any]:
    """``{"backbone": backbone_macs(cfg), "aggregators": aggregator_flops(...)}``: the backbone's
    forward MACs per sample as ``cfg`` describes it and the aggregators' at the paper's sizes."""
    return {"backbone": backbone_macs(cfg), "aggregators": aggregator_flops(**PAPER_AGGREGATOR_SIZES)}


def flops_report(cfg: Config) -> str:
    """The text of :func:`flops_data`: the backbone's MAC table, then the aggregators'."""
    return (
        format_backbone_macs(backbone_macs(cfg)) + "\n\n" + aggregator_flops_table(**PAPER_AGGREGATOR_SIZES)
    )
