"""Parsers of one split folder, one per folder structure of ``DatasetSpec.structure``.

Each parser walks a split folder as the spec's structure lays it out (modality folders,
side-by-side images, identity folders), parses pid, camera and scene from the file names by the
spec's pattern (the pid from the identity folder where the name carries none), and returns
:class:`~mambapro.data.io.Sample` lists with the original pids.
Per-sample problems go to a :class:`~mambapro.data.sample_checks.Problems`; structural ones
(a missing folder, an empty split) raise :class:`~mambapro.data.io.DatasetError` naming the path
and what is there.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path

from .io import DatasetError, Sample
from .sample_checks import Problems
from .specs import DatasetSpec

__all__ = ["IMAGE_SUFFIXES", "PARSERS", "Parser", "listing", "non_empty", "require_dir"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def listing(path: Path) -> str:
    """The entries of ``path`` (folders with a trailing ``/``, the first 20), for error messages."""
    try:
        items = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    except OSError:
        return "(cannot be listed)"
    if not items:
        return "(empty)"
    more = f", ... ({len(items)} entries)" if len(items) > 20 else ""
    return ", ".join(items[:20]) + more


def require_dir(path: Path, what: str) -> Path:
    """``path`` when it is a folder, else a DatasetError naming what its nearest existing parent holds."""
    if path.is_dir():
        return path
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    raise DatasetError(f"{what} not found: {path}; {parent} contains: {listing(parent)}")


def _images(folder: Path) -> list[Path]:
    """Image files of ``folder`` in sorted order; other non-hidden files raise a warning."""
    files, other = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        (files if p.suffix.lower() in IMAGE_SUFFIXES else other).append(p)
    if other:
        warnings.warn(
            f"ignored {len(other)} non-image file(s) in {folder}: {', '.join(p.name for p in other[:5])}",
            stacklevel=3,
        )
    return files


def non_empty(samples: list[Sample], folder: Path, name: str) -> list[Sample]:
    """``samples`` when there are any, else a DatasetError naming the split folder and its entries."""
    if not samples:
        raise DatasetError(f"{name}: split folder {folder} has no usable triplets ({listing(folder)})")
    return samples


def _parse_name(
    spec: DatasetSpec,
    path: Path,
    problems: Problems,
    junk: list[tuple[str, str]],
    owner: int | None = None,
) -> tuple[int, int, int] | None:
    """(pid, camid 0-based, sceneid or -1) from a file name by the spec's rule, or None (recorded).

    ``owner``: the pid of the identity folder holding the file (``id_folders``); a name whose
    pattern leaves the optional ``pid`` group empty takes it (WMVEID863 names carry no pid). A
    pid in ``spec.junk_pids`` marks a junk image: left out and listed in ``junk``.
    """
    m = re.search(spec.name_pattern, path.name)
    try:
        if m is None:
            raise ValueError(path.name)
        written = m["pid"]
        if written is None and owner is None:
            raise ValueError(path.name)
        pid = owner if written is None else int(written)
        cam = int(m["cam"])
        scene = int(m["scene"]) if spec.has_scenes else -1
    except (ValueError, TypeError):
        problems.add(path, f"name does not parse as {spec.name_rule}")
        return None
    if pid in spec.junk_pids:
        junk.append((str(path), f"junk image (pid {pid}), left out as in the official protocol"))
        return None
    camid = cam - spec.camera_base
    if not 0 <= camid < spec.max_cameras:
        first = spec.camera_base
        problems.add(path, f"camera {cam} out of range {first}..{first + spec.max_cameras - 1}")
        return None
    return pid, camid, scene


def _modality_triplets(
    spec: DatasetSpec, folder: Path, problems: Problems, junk: list[tuple[str, str]], owner: int | None
) -> list[Sample]:
    """Triplets of one ``folder/{m1,m2,m3}/NAME`` tree; ``owner``: the pid its names must carry."""
    first, *others = spec.modality_folders
    dirs = {m: folder / m for m in spec.modality_folders}
    files = {m: {p.name: p for p in _images(d)} for m, d in dirs.items()}
    for m in others:
        for n in sorted(set(files[m]) - set(files[first])):
            problems.add(files[m][n], f"has no {spec.modalities.keys[0]} partner {dirs[first] / n}")
    out = []
    for n, rgb in files[first].items():
        missing = [str(dirs[m] / n) for m in others if n not in files[m]]
        if missing:
            problems.add(rgb, f"missing {' and '.join(missing)}")
            continue
        parsed = _parse_name(spec, rgb, problems, junk, owner)
        if parsed is None:
            continue
        pid, camid, scene = parsed
        if owner is not None and pid != owner:
            written = re.search(spec.name_pattern, rgb.name)["pid"]
            problems.add(rgb, f"pid {written} in the name differs from its folder {folder.name}")
            continue
        out.append(Sample((str(rgb), *(str(files[m][n]) for m in others)), pid, camid, scene))
    return out


def _parse_modality_folders(
    spec: DatasetSpec, split_dir: Path, problems: Problems, junk: list[tuple[str, str]]
) -> list[Sample]:
    for m in spec.modality_folders:
        require_dir(split_dir / m, f"{spec.name} {m} folder")
    return _modality_triplets(spec, split_dir, problems, junk, owner=None)


def _parse_side_by_side(
    spec: DatasetSpec, split_dir: Path, problems: Problems, junk: list[tuple[str, str]]
) -> list[Sample]:
    out = []
    for p in _images(split_dir):
        parsed = _parse_name(spec, p, problems, junk)
        if parsed is not None:
            out.append(Sample((str(p),), *parsed))
    return out


def _parse_id_folders(
    spec: DatasetSpec, split_dir: Path, problems: Problems, junk: list[tuple[str, str]]
) -> list[Sample]:
    out = []
    for id_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not id_dir.name.isdigit():
            problems.add(id_dir, "identity folder name is not a number")
            continue
        absent = [str(id_dir / m) for m in spec.modality_folders if not (id_dir / m).is_dir()]
        if absent:
            problems.add(id_dir, f"missing modality folder(s) {', '.join(absent)} (has {listing(id_dir)})")
            continue
        out += _modality_triplets(spec, id_dir, problems, junk, owner=int(id_dir.name))
    return out


Parser = Callable[[DatasetSpec, Path, Problems, list[tuple[str, str]]], list[Sample]]

#: One parser per folder structure (``DatasetSpec.structure``): (spec, split folder, problems,
#: junk list) -> samples with original pids.
PARSERS: dict[str, Parser] = {
    "modality_folders": _parse_modality_folders,
    "side_by_side": _parse_side_by_side,
    "id_folders": _parse_id_folders,
}
