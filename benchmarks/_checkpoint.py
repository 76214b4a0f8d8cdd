"""A checkpoint of a preset's model with random weights (shared by the benchmark scripts)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from mambapro.config import config_to_dict, load_config
from mambapro.models import build_model
from mambapro.train.checkpoint import save_checkpoint


def random_checkpoint(
    preset: str, overrides: list[str], path: Path, num_cameras: int, num_classes: int = 10
) -> tuple[Path, torch.nn.Module]:
    """Build ``preset``'s model (with ``overrides``) from seed 0, save it to ``path``, and return
    the saved file and the model (still in training mode)."""
    cfg = load_config(preset, overrides)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no pre-trained weights": random weights are the point
        model = build_model(cfg, num_classes=num_classes, num_cameras=num_cameras)
    state = {"model": model.state_dict(), "config": config_to_dict(cfg), "num_classes": num_classes}
    state["num_cameras"] = num_cameras
    return save_checkpoint(state, path), model
