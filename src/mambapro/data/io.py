"""Image decoding for the modalities of a sample.

Every modality is decoded once into an RGB-mode PIL image (NI and TI are stored as three-channel
JPEGs by the datasets, and a grey image is expanded to three channels, which keeps one code path
for the pretrained three-channel patch embedding). A side-by-side dataset (RGBNT100) stores a
sample as one image with one panel per modality of its spec, left to right in the spec's
``modalities`` order; it is decoded once and cropped into that many equal panels.

A file that cannot be decoded completely raises :class:`ImageReadError` naming the file. Pillow
raises on truncated JPEGs only when the data is actually decoded, so ``load()`` is forced here
instead of relying on the lazy decode in a later transform.

Functions that take a dataset accept its :class:`~mambapro.data.specs.DatasetSpec`, a registered
name (any case) or a spec-file path (:func:`~mambapro.data.specs.dataset_spec`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError
from .specs import DatasetSpec, dataset_spec

__all__ = [
    "DatasetError",
    "DatasetRef",
    "ImageReadError",
    "Sample",
    "is_side_by_side",
    "panel_count",
    "panel_size",
    "read_image",
    "read_triplet",
    "split_panels",
]

#: A dataset as the data functions take it: its spec, a registered name or a spec-file path.
DatasetRef = DatasetSpec | str | Path

_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def _count(n: int) -> str:
    return _WORDS.get(n, str(n))


class ImageReadError(DatasetError):
    """An image file is missing, unreadable, truncated or has the wrong geometry."""


class Sample(NamedTuple):
    """One multi-modal capture.

    ``paths`` holds one file per modality of the dataset, in its ``modalities`` order (RGBNT201:
    ``(RGB, NI, TI)``), or for a side-by-side dataset (RGBNT100) a 1-tuple with the file that
    holds the panels side by side (split rule: one equal panel per modality, left to right in
    the spec's order; see :func:`read_triplet`). ``camid`` is 0-based; ``sceneid`` is -1 where
    the dataset has no scenes (all but MSVR310).
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


def is_side_by_side(dataset: DatasetRef) -> bool:
    """Whether the dataset stores its modalities side by side in one file (its spec)."""
    return dataset_spec(dataset).side_by_side


def panel_count(dataset: DatasetRef) -> int:
    """The number of panels of the dataset's side-by-side images: one per modality."""
    return len(dataset_spec(dataset).modalities)


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


def panel_size(size: tuple[int, int], path: str | Path = "<image>", panels: int = 3) -> tuple[int, int]:
    """(W, H) of each panel of a side-by-side image of ``size`` (``panels`` x W, H), or
    :class:`ImageReadError` naming ``path`` when the width does not split into ``panels`` panels."""
    w, h = size
    if w % panels != 0 or w < panels:
        raise ImageReadError(
            f"{path}: expected {_count(panels)} modality panels side by side (width a multiple of "
            f"{panels}), got {w}x{h}"
        )
    return w // panels, h


def split_panels(img: Image.Image, path: str | Path = "<image>", panels: int = 3) -> tuple[Image.Image, ...]:
    """Crop a side-by-side image (H, ``panels`` x W) into its (H, W) panels, left to right."""
    p, h = panel_size(img.size, path, panels)
    return tuple(img.crop((i * p, 0, (i + 1) * p, h)) for i in range(panels))


def read_triplet(sample: Sample | Sequence[str], dataset: DatasetRef) -> tuple[Image.Image, ...]:
    """Decode a sample into one RGB-mode PIL image per modality of ``dataset``, in its order
    (``(RGB, NI, TI)`` for the paper's datasets).

    ``sample`` is a :class:`Sample` or its ``paths``. For a side-by-side dataset (RGBNT100) the
    single file is cropped into one panel per modality; otherwise each modality is its own file.
    """
    spec = dataset_spec(dataset)
    keys = spec.modalities.keys
    paths = tuple(sample.paths if isinstance(sample, Sample) else sample)
    if spec.side_by_side:
        if len(paths) != 1:
            raise DatasetError(f"{spec.name} samples have one side-by-side file, got paths {paths}")
        return split_panels(read_image(paths[0]), paths[0], len(keys))
    if len(paths) != len(keys):
        raise DatasetError(
            f"{spec.name} samples have {_count(len(keys))} files ({', '.join(keys)}), got paths {paths}"
        )
    return tuple(read_image(p) for p in paths)
