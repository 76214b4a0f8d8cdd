"""Where ``mambapro serve`` reads gallery images from: the files of each index row with symlinks
resolved, the default gallery root (the deepest folder holding them), whether a path lies inside
the root, and the one-line start-up warning when the root holds none or only some of them."""

from __future__ import annotations

import os
from pathlib import Path

from mambapro.data import DatasetError, triplet_paths

__all__ = ["default_root", "gallery_root_warning", "inside", "resolved_captures"]


def inside(path: Path, root: Path) -> bool:
    """Whether the resolved ``path`` is ``root`` or lies under it."""
    return path == root or root in path.parents


def _real(path: str, folders: dict[str, str]) -> str:
    """``os.path.realpath(path)``; ``folders`` caches resolved folders, so a gallery costs one
    ``realpath`` per folder and one ``lstat`` per file (only a file that is a link is followed)."""
    folder, name = os.path.split(path)
    if name in ("", ".", ".."):
        return os.path.realpath(path)
    real = folders.get(folder)
    if real is None:
        real = folders[folder] = os.path.realpath(folder or ".")
    full = os.path.join(real, name)
    return os.path.realpath(full) if os.path.islink(full) else full


def resolved_captures(paths: list[str], dataset: str) -> list[tuple[str, ...] | None]:
    """Per index row, every file of its capture (all modalities) with symlinks resolved, as
    :meth:`~mambapro.deploy.serve.SearchService.gallery_image` resolves them; ``None`` for a row
    not in the layout, which is never served. Relative paths are read from the current folder."""
    folders: dict[str, str] = {}
    captures: list[tuple[str, ...] | None] = []
    for path in paths:
        try:
            files = triplet_paths(path, dataset)
        except DatasetError:
            captures.append(None)
            continue
        captures.append(tuple(_real(f, folders) for f in files))
    return captures


def default_root(captures: list[tuple[str, ...] | None]) -> Path:
    """The deepest folder holding every existing file of every servable capture, symlinks
    resolved (the request check resolves them too, so a gallery of links is served from where
    they point); if none exists, of all of them; the working folder if no row is servable."""
    files = [f for fs in captures if fs is not None for f in fs]
    # A stale row (a file since deleted) must not widen what may be served.
    dirs = {os.path.dirname(f) for f in files if os.path.isfile(f)} or {os.path.dirname(f) for f in files}
    if not dirs:
        return Path.cwd().resolve()
    return Path(os.path.commonpath(sorted(dirs)))


def _missing_reason(
    path: str, files: tuple[str, ...] | None, root: str, dataset: str
) -> tuple[str, str] | None:
    """Why the capture of index path ``path`` cannot be served from ``root`` (a kind and a
    phrase); ``None`` if it can."""
    if files is None:
        return "layout", f"not a {dataset} modality file"
    prefix = root if root.endswith(os.sep) else root + os.sep
    for f in files:
        if not os.path.isfile(f):
            if os.path.isabs(path):
                return "absent", f"{f} does not exist"
            return "relative", f"{f} does not exist (relative paths are read from the current folder)"
        if f != root and not f.startswith(prefix):
            return "outside", f"it resolves to {f}, outside the root"
    return None


# What to do when the root holds none of the captures, by the first capture's problem.
_ROOT_HINTS = {
    "relative": "start it from the folder extract ran in",
    "absent": "the images are not where extract read them: serve on the machine that has them, "
    "or extract and build the index again from where they are now",
    "outside": "pass a --gallery-root that holds the files the index lists (symlinks resolved)",
    "layout": "build the index from features of this dataset",
}


def gallery_root_warning(
    root: Path, paths: list[str], captures: list[tuple[str, ...] | None], dataset: str
) -> str | None:
    """One line when ``root`` holds none or only some of the captures the index lists."""
    held, first = 0, None
    for path, files in zip(paths, captures):
        reason = _missing_reason(path, files, str(root), dataset)
        if reason is None:
            held += 1
        elif first is None:
            first = (path, *reason)
    if first is None:
        return None
    path, kind, why = first
    if held:
        return (
            f"gallery root {root} holds {held} of the {len(paths)} captures the index lists (first "
            f"missing: {path}: {why}); the others show no gallery images"
        )
    return (
        f"gallery root {root} holds none of the {len(paths)} captures the index lists (first: "
        f"{path}: {why}); the service answers searches but shows no gallery images; {_ROOT_HINTS[kind]}"
    )
