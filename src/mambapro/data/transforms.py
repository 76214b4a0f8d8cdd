"""Joint train/test transforms of a sample's pixel-aligned images (one per modality: RGB, NI, TI
for the paper's datasets, 2 to 4 in general), and missing modalities.

Built on ``torchvision.transforms.v2``. ``independent=True`` (``data.independent_aug``, the
default) calls the transform once per modality, so each modality gets its own flip, crop and
erasing draw: the authors' release applies its transform to each image separately
(``data/datasets/bases.py``); the paper says nothing about it. ``independent=False`` calls it once
on all the images, and a v2 transform called on several images draws its random parameters
once and applies them to all of them: the pixel-aligned modalities then stay aligned.

Train pipeline (the release's recipe): resize (bicubic), horizontal flip ``flip_prob``, pad
``padding`` with zeros + random crop back to size, scale to [0, 1], normalise with mean = std =
``data.mean``/``data.std`` per channel, random erasing ``erase_prob`` filled with per-pixel
N(0, 1) noise (timm's ``mode='pixel'``, which the official code uses; after normalisation this is
noise of the data's own scale). Test: resize with ``data.test_interpolation`` (the release's
``T.Resize(size)``: bilinear) + normalise.

Randomness comes from the global torch RNG (as in torchvision); :class:`TripletDataset` seeds it
per item, so every decision is a pure function of the item seed.

Missing-modality evaluation: :func:`apply_missing` replaces the missing modalities (a setting
of the dataset's :class:`~mambapro.modalities.ModalitySet`) by all-zero tensors *after*
normalisation (mid-grey for mean = std = 0.5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..modalities import (
    MAX_MODALITIES,
    MIN_MODALITIES,
    MODALITIES,
    RGB_NI_TI,
    ModalitySet,
    missing_modalities,
)

if TYPE_CHECKING:  # the config imports the data package (dataset specs), not the reverse
    from ..config import DataConfig

__all__ = [
    "channel_stats",
    "MODALITIES",
    "TripletTransform",
    "apply_missing",
    "build_resize_transform",
    "build_test_transform",
    "build_train_transform",
    "missing_modalities",
    "resize_transform",
]


class TripletTransform:
    """Maps a sample's images (one per modality, 2 to 4: ``(rgb, ni, ti)`` for the paper's
    datasets) to as many ``(3, H, W)`` tensors, in the same order.

    With ``independent=False`` one random draw of ``transform`` applies to all the images; with
    ``independent=True`` each image gets its own draws, in modality order.
    """

    def __init__(self, transform: v2.Transform, independent: bool = False) -> None:
        self.transform = transform
        self.independent = independent

    def __call__(self, images: Sequence[Image.Image | torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if not MIN_MODALITIES <= len(images) <= MAX_MODALITIES:
            raise ValueError(
                f"expected one image per modality ({MIN_MODALITIES} to {MAX_MODALITIES}), "
                f"got {len(images)} images"
            )
        # Tensors (the decoded cache's uint8 images) are marked as images: v2 transforms only
        # the first plain tensor of several, and a joint call must transform all of them.
        images = [tv_tensors.Image(i) if type(i) is torch.Tensor else i for i in images]
        if self.independent:
            out = [self.transform(img) for img in images]
        else:
            out = list(self.transform(*images))
        # Plain tensors: tv_tensors.Image wrappers would leak into collate and the model.
        return tuple(t.as_subclass(torch.Tensor) for t in out)

    def __repr__(self) -> str:
        return f"TripletTransform(independent={self.independent}, {self.transform!r})"


def channel_stats(
    mean: float | Sequence[float], std: float | Sequence[float]
) -> tuple[list[float], list[float]]:
    """``data.mean``/``data.std`` (one value for the three channels, or one per channel) as two
    3-lists."""

    def three(value: float | Sequence[float]) -> list[float]:
        return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * 3

    return three(mean), three(std)


def _normalise(data_cfg: DataConfig) -> list[v2.Transform]:
    mean, std = channel_stats(data_cfg.mean, data_cfg.std)
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=mean, std=std)]


def _resize(img_size: tuple[int, int], interpolation: str = "bicubic") -> v2.Transform:
    mode = v2.InterpolationMode(interpolation)
    return v2.Resize(tuple(img_size), interpolation=mode, antialias=True)


#: The resize step of the train (bicubic) and test transforms (the decoded cache reuses it).
resize_transform = _resize


def build_train_transform(
    data_cfg: DataConfig, img_size: tuple[int, int], independent: bool | None = None, resize: bool = True
) -> TripletTransform:
    """Train transform of a triplet; ``independent=None`` takes ``data_cfg.independent_aug``.

    ``resize=False``: the input is already resized uint8 (the decoded cache); the other steps,
    and their random draws, are the same.
    """
    h, w = (int(x) for x in img_size)
    # Resize before ToImage: on PIL input it is PIL's own filter, exactly as the release resizes.
    steps: list[v2.Transform] = [_resize((h, w)), v2.ToImage()] if resize else [v2.ToImage()]
    if data_cfg.flip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(p=data_cfg.flip_prob))
    if data_cfg.padding > 0:
        steps += [v2.Pad(data_cfg.padding, fill=0), v2.RandomCrop((h, w))]
    steps += _normalise(data_cfg)
    if data_cfg.erase_prob > 0:
        steps.append(v2.RandomErasing(p=data_cfg.erase_prob, value="random"))
    ind = data_cfg.independent_aug if independent is None else independent
    return TripletTransform(v2.Compose(steps), independent=ind)


def build_test_transform(
    data_cfg: DataConfig, img_size: tuple[int, int], resize: bool = True
) -> TripletTransform:
    """Test transform of a triplet: resize (``data.test_interpolation``) + normalise (deterministic).
    ``resize=False``: the input is already resized uint8 (the decoded cache)."""
    h, w = (int(x) for x in img_size)
    steps = [_resize((h, w), data_cfg.test_interpolation)] if resize else []
    return TripletTransform(v2.Compose([*steps, v2.ToImage(), *_normalise(data_cfg)]))


def build_resize_transform(img_size: tuple[int, int], interpolation: str = "bicubic") -> TripletTransform:
    """Only the resize step, to (3, H, W) uint8 tensors (``data.augment_on=device`` without a cache:
    the rest of the train transform runs batched in the train step)."""
    return TripletTransform(v2.Compose([_resize(tuple(img_size), interpolation), v2.ToImage()]))


def apply_missing(
    batch_or_images: Mapping[str, Any] | Sequence[torch.Tensor],
    missing: str,
    modalities: ModalitySet = RGB_NI_TI,
) -> dict[str, Any] | tuple[torch.Tensor, ...]:
    """Zero the ``missing`` modalities (a setting of ``modalities``: ``RN``, ...) of a batch dict or
    of a sample's tensors, after normalisation.

    A dict (returned as a new dict) must hold every key of ``modalities`` and keeps its other
    entries (pids, paths, ...); a sequence must hold one tensor per modality, in ``modalities``
    order, and comes back as a tuple. The input is not modified.
    """
    gone = modalities.missing(missing)
    keys = modalities.keys
    if isinstance(batch_or_images, Mapping):
        absent = [m for m in keys if m not in batch_or_images]
        if absent:
            raise KeyError(
                f"apply_missing: batch has no {', '.join(absent)} entry (keys: {list(batch_or_images)})"
            )
        out = dict(batch_or_images)
        for m in gone:
            out[m] = torch.zeros_like(out[m])
        return out
    images = list(batch_or_images)
    if len(images) != len(keys):
        raise ValueError(f"apply_missing: expected ({', '.join(keys)}) tensors, got {len(images)} items")
    return tuple(torch.zeros_like(x) if m in gone else x for m, x in zip(keys, images))
