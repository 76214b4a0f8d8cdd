"""Atomic, safely loadable training checkpoints, and rebuilding a model from one.

A checkpoint is a plain dict of tensors, numbers, strings and containers thereof, so it loads
with ``torch.load(..., weights_only=True)``: loading never runs code from the file. It is first
written to a temporary file in the same folder and then renamed over the target, so an
interruption never leaves a partial checkpoint under the real name.

A checkpoint records the modalities its model was built for (``modalities``; checkpoints
written before it are RGB, NI, TI): the model is rebuilt for them, and a config whose dataset
has other modalities is refused. A checkpoint trained on a dataset spec file stores the file's
text (``dataset_spec_file``), which stands in for the file where it is absent.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mambapro.config import Config, config_diff, config_to_dict, load_config
from mambapro.data.spec_file import adopt_spec_record
from mambapro.errors import CheckpointError
from mambapro.files import atomic_write
from mambapro.modalities import RGB_NI_TI, ModalitySet
from mambapro.models import build_model
from mambapro.runtime import resolve_device

__all__ = ["CheckpointError", "checkpoint_modalities", "load_checkpoint", "load_model", "save_checkpoint"]

FORMAT_VERSION = 1

#: Model settings that choose how the stored weights are computed, not what they are: they may
#: differ at test time (a checkpoint trained with the Triton scan evaluates on a CPU).
RUNTIME_MODEL_KEYS = ("scan_backend",)
CUDA_ONLY_SCANS = ("triton", "mamba_ssm")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + rename)."""
    state = {"format_version": FORMAT_VERSION, **state}
    with atomic_write(path) as fh:
        torch.save(state, fh)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        # torch's own message spans lines and advises weights_only=False, which would run code
        # from the file: name the file and the failure kind only.
        raise CheckpointError(
            f"{path} is not a mambapro checkpoint, or a damaged one (it does not load as plain "
            f"tensors and containers: {type(err).__name__})"
        ) from err
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a mambapro checkpoint (no 'model'/'config' entries)")
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}; this mambapro reads format {FORMAT_VERSION}"
            + (
                " (written by a newer mambapro?)"
                if isinstance(version, int) and version > FORMAT_VERSION
                else ""
            )
        )
    return state


def checkpoint_modalities(ckpt: dict[str, Any]) -> ModalitySet:
    """The modalities a checkpoint's model was built for (RGB, NI, TI where it predates the record)."""
    stored = ckpt.get("modalities")
    return RGB_NI_TI if stored is None else ModalitySet.from_dict(stored)


def load_model(
    checkpoint: str | Path,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict | None = None,
    device: torch.device | None = None,
    state: dict[str, Any] | None = None,
) -> tuple[nn.Module, Config, dict[str, Any]]:
    """Rebuild a model from a checkpoint; its stored config is the base that ``config``'s keys,
    ``extra`` and ``overrides`` apply to.

    The model section cannot change (the stored weights would not fit it): a differing
    ``model.*`` key, from the file or the command line, is an error naming it. Keys a
    checkpoint's stored config lacks (added to mambapro after it was written) take their
    defaults, which keep the behaviour of the version that wrote it. The model is built for the
    checkpoint's modalities; a dataset (``data.dataset``) with other modalities is an error naming
    both sets. The text of a dataset spec file stored in the checkpoint stands in for the file
    where the file is absent (a warning says so). ``state``: the checkpoint already loaded by
    :func:`load_checkpoint` (it is not read again).
    """
    ckpt = load_checkpoint(checkpoint) if state is None else state
    stored = ckpt["config"]
    record = ckpt.get("dataset_spec_file")
    if record is not None and adopt_spec_record(record, str(checkpoint)):
        # A note, not an error: the stored copy is the spec the model was trained on.
        warnings.warn(
            f"{checkpoint}: dataset spec file {record['path']} is not on this machine; "
            "using the copy stored in the checkpoint",
            stacklevel=2,
        )
    cfg = load_config(config, overrides, extra=extra, base=(stored, f"{checkpoint} (stored config)"))
    # Not compared: model.weights (the encoder comes from the checkpoint, not from that file)
    # and the scan backend (how the same weights are computed; see RUNTIME_MODEL_KEYS).
    kept = {k: v for k, v in stored["model"].items() if k not in ("weights", *RUNTIME_MODEL_KEYS)}
    asked = {k: v for k, v in config_to_dict(cfg)["model"].items() if k in kept}
    changed = config_diff(kept, asked, "model.")
    if changed:
        source = f"--config {config} or the overrides" if config is not None else "the overrides"
        raise CheckpointError(
            f"{checkpoint}: {source} change the model, which comes from the checkpoint: "
            f"{'; '.join(changed)} (checkpoint -> asked); drop these model.* settings"
        )
    if device is None:
        # The training machine's device need not exist here: auto, unless asked otherwise.
        asked = cfg.train.device != stored.get("train", {}).get("device", cfg.train.device)
        device = resolve_device(cfg.train.device if asked else "auto")
        cfg.train.device = str(device.type)
    if device.type != "cuda" and cfg.model.scan_backend in CUDA_ONLY_SCANS:
        # A CUDA-only kernel stored by a GPU run: the same scan in PyTorch on this device.
        cfg.model.scan_backend = "auto"
    # The encoder weights come from the checkpoint, not from model.weights.
    cfg.model.weights = None
    modalities = checkpoint_modalities(ckpt)
    wanted = cfg.modalities()
    if wanted.keys != modalities.keys:
        raise CheckpointError(
            f"{checkpoint}: the model was trained on the modalities {modalities}; dataset "
            f"{cfg.data.dataset} has {wanted}"
        )
    model = build_model(cfg, ckpt["num_classes"], ckpt["num_cameras"], modalities)
    cfg.model.weights = stored["model"]["weights"]
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint}: weights do not fit the model: {err}") from err
    return model.to(device).eval(), cfg, ckpt
