"""Image decoding for the three modalities.

Every modality is decoded once into an RGB-mode PIL image (NI and TI are stored as three-channel
JPEGs by the datasets, and a grey image is expanded to three channels, which keeps one code path
for the pretrained three-channel patch embedding). RGBNT100 stores a sample as one image with the
RGB, NI and TI panels side by side; it is decoded once and cropped into three equal panels.

A file that cannot be decoded completely raises :class:`ImageReadError` naming the file. Pillow
raises on truncated JPEGs only when the data is actually decoded, so ``load()`` is forced here
instead of relying on the lazy decode in a later transform.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError
from .specs import DATASETS

__all__ = [
    "DatasetError",
    "ImageReadError",
    "Sample",
    "read_image",
    "read_triplet",
    "is_side_by_side",
    "panel_size",
    "split_panels",
]


class ImageReadError(DatasetError):
    """An image file is missing, unreadable, truncated or has the wrong geometry."""


class Sample(NamedTuple):
    """One tri-modal capture.

    ``paths`` is the ``(RGB, NI, TI)`` file triple, or for RGBNT100 a 1-tuple with the file that
    holds the three panels side by side (split rule: three equal panels, left to right RGB, NI,
    TI; see :func:`read_triplet`). ``camid`` is 0-based; ``sceneid`` is -1 where the dataset has
    no scenes (all but MSVR310).
    """

    paths: tuple[str, ...]
    pid: int
    camid: int
    sceneid: int


#: An image upscaled by more than this factor on a side to reach the model's input carries too
#: little of the object for a ranking to mean much; search and serve say so.
TINY_UPSCALE = 4


def tiny_image_note(size: tuple[int, int], target: tuple[int, int]) -> str | None:
    """``"is WxH, upscaled more than 4x to the model's WxH input"`` when an image of ``size``
    (W, H) needs more than :data:`TINY_UPSCALE` times on a side to reach ``target`` (H, W)."""
    w, h = size
    if h * TINY_UPSCALE < target[0] or w * TINY_UPSCALE < target[1]:
        return f"is {w}x{h}, upscaled more than {TINY_UPSCALE}x to the model's {target[1]}x{target[0]} input"
    return None


def is_side_by_side(dataset_name: str) -> bool:
    """Whether the dataset stores the three modalities side by side in one file (its spec)."""
    if dataset_name.lower() not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset_name!r}; choose one of: {', '.join(DATASETS.names())}")
    return DATASETS.get(dataset_name).side_by_side


def read_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully into an RGB-mode PIL image, or raise :class:`ImageReadError`."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        # Truncated JPEGs raise OSError("image file is truncated ...") from load().
        raise ImageReadError(f"cannot read image {path}: {err}") from err


def panel_size(size: tuple[int, int], path: str | Path = "<image>") -> tuple[int, int]:
    """(W, H) of each panel of a side-by-side image of ``size`` (3W, H), or :class:`ImageReadError`."""
    w, h = size
    if w % 3 != 0 or w < 3:
        raise ImageReadError(
            f"{path}: expected three modality panels side by side (width a multiple of 3), got {w}x{h}"
        )
    return w // 3, h


def split_panels(img: Image.Image, path: str | Path = "<image>") -> tuple[Image.Image, ...]:
    """Crop a side-by-side image (H, 3W) into its three (H, W) panels, left to right."""
    p, h = panel_size(img.size, path)
    return tuple(img.crop((i * p, 0, (i + 1) * p, h)) for i in range(3))


def read_triplet(
    sample: Sample | Sequence[str], dataset_name: str
) -> tuple[Image.Image, Image.Image, Image.Image]:
    """Decode a sample into ``(RGB, NI, TI)`` RGB-mode PIL images.

    ``sample`` is a :class:`Sample` or its ``paths``. For a side-by-side dataset (RGBNT100) the
    single file is cropped into its three panels; otherwise each modality is its own file.
    """
    paths = tuple(sample.paths if isinstance(sample, Sample) else sample)
    if is_side_by_side(dataset_name):
        if len(paths) != 1:
            raise DatasetError(f"{dataset_name} samples have one side-by-side file, got paths {paths}")
        rgb, ni, ti = split_panels(read_image(paths[0]), paths[0])
        return rgb, ni, ti
    if len(paths) != 3:
        raise DatasetError(f"{dataset_name} samples have three files (RGB, NI, TI), got paths {paths}")
    rgb, ni, ti = (read_image(p) for p in paths)
    return rgb, ni, ti
