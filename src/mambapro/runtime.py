"""Runtime helpers every command shares: seeding, the device, and the autocast dtype."""

from __future__ import annotations

import random

import numpy as np
import torch

from mambapro.config import Config
from mambapro.errors import ConfigError

__all__ = ["amp_dtype", "eval_amp", "resolve_device", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA (this process's local GPU) when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("'train.device' = 'mps' but MPS is not available here (use cpu or auto)")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"'train.device' = {name!r} but CUDA is not available here (use cpu or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def amp_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` (``auto``: bf16 on CUDA when supported, none on CPU)."""
    if name == "off" or (name == "auto" and device.type != "cuda"):
        return None
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def eval_amp(cfg: Config, device: torch.device) -> torch.dtype | None:
    """Autocast dtype at test time: none (fp32, as the release evaluates) unless ``test.amp``,
    then ``train.amp``'s dtype on this device."""
    return amp_dtype(cfg.train.amp, device) if cfg.test.amp else None
