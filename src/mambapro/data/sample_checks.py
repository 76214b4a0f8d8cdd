"""Per-sample checks of a parsed dataset, and the collector that reports what they find.

:class:`Problems` gathers every per-sample problem of one dataset (from the parsers and from
:func:`verify_samples`) and then raises them together, or warns once and skips them with
``skip_broken``. :func:`verify_samples` reads each image's header (or decodes it) and flags
modality images far smaller than their siblings; :func:`check_cameras` names a camera id that a
model's camera table has no row for.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .io import DatasetError, ImageReadError, Sample, panel_count, panel_size, read_triplet
from .specs import dataset_spec

__all__ = ["Problems", "check_cameras", "verify_samples"]

_MAX_LISTED = 5


class Problems:
    """Collects per-sample problems of one dataset, then raises or warns once."""

    def __init__(self, name: str, skip_broken: bool) -> None:
        self.name = name
        self.skip_broken = skip_broken
        self.items: list[tuple[str, str]] = []

    def add(self, path: Path | str, reason: str) -> None:
        self.items.append((str(path), reason))

    def finish(self) -> list[tuple[str, str]]:
        """Raise the problems together, or with ``skip_broken`` warn once and return them."""
        if not self.items:
            return []
        shown = "; ".join(r if p in r else f"{p}: {r}" for p, r in self.items[:_MAX_LISTED])
        more = f" (and {len(self.items) - _MAX_LISTED} more)" if len(self.items) > _MAX_LISTED else ""
        if not self.skip_broken:
            raise DatasetError(
                f"{self.name}: {len(self.items)} broken triplet(s): {shown}{more}. "
                "Fix the files, or pass skip_broken=True (data.skip_broken=true) to skip them."
            )
        warnings.warn(
            f"{self.name}: skipped {len(self.items)} broken triplet(s): {shown}{more}", stacklevel=3
        )
        return self.items


#: A modality image with a side below this fraction of its largest sibling's is flagged: it is
#: upscaled to the model's input size like the others, which is rarely what was meant.
_SMALL_SIBLING = 0.5


def _header_size(path: str) -> tuple[int, int]:
    try:
        with Image.open(path) as img:  # lazy: reads the header only
            return img.size
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err


def _probe(sample: Sample, dataset_name: str, decode: bool) -> tuple[str | None, str | None]:
    """(why the sample is unusable or None, a size warning or None).

    Without ``decode`` only the headers are read (format and size: catches empty, non-image and
    wrongly sized files in well under a millisecond each); with it every pixel is decoded
    (also catches truncated files).
    """
    try:
        if decode:
            sizes = [img.size for img in read_triplet(sample, dataset_name)]
        else:
            sizes = [_header_size(path) for path in sample.paths]
            if len(sample.paths) == 1:
                panel_size(sizes[0], sample.paths[0], panel_count(dataset_name))
    except ImageReadError as err:
        return str(err), None
    if len(sample.paths) == 1:  # side-by-side panels share one size
        return None, None
    big_w, big_h = max(w for w, _ in sizes), max(h for _, h in sizes)
    for path, (w, h) in zip(sample.paths, sizes):
        if w < _SMALL_SIBLING * big_w or h < _SMALL_SIBLING * big_h:
            return None, f"{path} is {w}x{h}, its sibling modalities up to {big_w}x{big_h}"
    return None, None


def verify_samples(
    samples: list[Sample],
    dataset_name: str,
    problems: Problems,
    progress: bool = False,
    desc: str = "verify",
    decode: bool = True,
) -> list[Sample]:
    """Check every image of ``samples`` (decoded, or headers only with ``decode=False``); record
    unusable ones in ``problems`` and return the others. Modality images far smaller than their
    siblings are named in one counted warning."""
    good, small = [], []
    # disable=None: no bar when stderr is not a terminal (logs, CI).
    bar = tqdm(samples, desc=desc, unit="triplet", disable=None if progress else True, leave=False)
    for s in bar:
        why, size_note = _probe(s, dataset_name, decode)
        if why is not None:
            problems.add(s.paths[0], why)
            continue
        if size_note is not None:
            small.append(size_note)
        good.append(s)
    if small:
        more = f" (and {len(small) - 1} more)" if len(small) > 1 else ""
        name = dataset_spec(dataset_name).name
        warnings.warn(
            f"{name}: {len(small)} triplet(s) have a modality image far smaller than "
            f"its siblings, upscaled to the input size: {small[0]}{more}",
            stacklevel=3,
        )
    return good


def check_cameras(samples: list[Sample], num_cameras: int, what: str) -> None:
    """Raise :class:`DatasetError` when a sample's camera id has no row in a camera-embedding
    table of ``num_cameras`` rows (ids ``0..num_cameras - 1``)."""
    bad = [s for s in samples if not 0 <= s.camid < num_cameras]
    if bad:
        ids = sorted({s.camid for s in bad})
        raise DatasetError(
            f"{what}: camera id {ids[0]} of {bad[0].paths[0]} (and {len(bad) - 1} more samples, camera ids "
            f"{ids}) is outside the model's camera table 0..{num_cameras - 1}, sized by the "
            "training cameras; train with these cameras or set model.camera_embedding=false"
        )
