"""Optimiser and learning-rate schedule of SPEC §4.

Adam with weight decay; biases get ``bias_lr_factor`` x the learning rate; when the encoder is
fine-tuned (CLIP(F)) its own parameters use ``backbone_lr``. The schedule is timm's
``CosineLRScheduler``: linear warm-up from ``warmup_lr_factor * lr``, cosine down to
``min_lr_factor * lr``, stepped once per epoch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn

from mambapro.config import TrainConfig

__all__ = ["build_optimizer", "build_scheduler"]


def build_optimizer(
    named_params: Iterable[tuple[str, nn.Parameter]],
    cfg: TrainConfig,
    backbone_param_ids: set[int] | None = None,
) -> torch.optim.Optimizer:
    """One parameter group per trainable parameter kind.

    ``backbone_param_ids`` are the ids of the pre-trained encoder's own parameters, which get
    ``cfg.backbone_lr`` instead of ``cfg.lr`` (only trainable when fine-tuning).
    """
    backbone_param_ids = backbone_param_ids or set()
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        lr = cfg.backbone_lr if id(p) in backbone_param_ids else cfg.lr
        wd = cfg.weight_decay
        if name.rsplit(".", 1)[-1] == "bias":
            lr *= cfg.bias_lr_factor
        groups.setdefault((lr, wd), []).append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters; check model.freeze and the adapters/prompts")
    param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    return torch.optim.Adam(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> CosineLRScheduler:
    """Per-epoch cosine schedule with linear warm-up (call ``step(epoch)`` at each epoch start)."""
    return CosineLRScheduler(
        optimizer,
        t_initial=cfg.epochs,
        lr_min=cfg.min_lr_factor * cfg.lr,
        warmup_t=cfg.warmup_epochs,
        warmup_lr_init=cfg.warmup_lr_factor * cfg.lr,
        warmup_prefix=False,
        cycle_limit=1,
        t_in_epochs=True,
    )
