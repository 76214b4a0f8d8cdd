"""The fingerprint of a dataset folder: cheap enough for every run, precise enough to tell two
copies of a benchmark apart.

:func:`dataset_fingerprint` lists every file under the dataset folder (names starting with ``.``
left out: ``.DS_Store`` and the like), sorted, each as its path relative to the folder and its
size in bytes, and hashes that list with SHA-256 (``sha256``). Per split (``train``, ``query``,
``gallery``) it records the numbers of identities, captures and cameras, and the SHA-256 of the
split's own files (``files_sha256``); ``eval_sha256`` combines the query's and the gallery's, the
part ``mambapro test`` compares with the fingerprint a checkpoint carries. ``modalities`` records
the dataset's modality keys (fingerprints made before it was recorded are of RGB, NI, TI).

No image is read: a file renamed, added, removed or changed in size changes the fingerprint, an
edit that keeps a file's size does not. Torch-free (the CLI reads it).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..modalities import RGB_NI_TI
from .io import Sample

__all__ = [
    "FINGERPRINT_VERSION",
    "dataset_fingerprint",
    "describe",
    "eval_part",
    "file_sizes",
    "same_eval_split",
]

#: Bumped when what is hashed changes, so fingerprints of two versions are never compared.
FINGERPRINT_VERSION = 1

SPLITS = ("train", "query", "gallery")


def file_sizes(folder: str | Path) -> dict[str, int]:
    """``{relative path (with '/'): size in bytes}`` of every file under ``folder`` (symbolic
    links followed for the size, not walked into; names starting with ``.`` left out)."""
    base = Path(folder)
    out: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(base)
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            try:
                size = path.stat().st_size
            except OSError:  # a dangling link: listed, without a size
                size = -1
            out[(rel_dir / name).as_posix()] = size
    return out


def _hash_listing(items: Iterable[tuple[str, int]]) -> str:
    digest = hashlib.sha256()
    for rel, size in sorted(items):
        digest.update(f"{rel}\t{size}\n".encode())
    return digest.hexdigest()


def _split_entry(samples: Sequence[Sample], groups: Sequence[int], base: Path, sizes: dict[str, int]) -> dict:
    files: dict[str, int] = {}
    for s in samples:
        for p in s.paths:
            rel = Path(os.path.relpath(p, base)).as_posix()
            if rel not in sizes:
                try:
                    sizes[rel] = Path(p).stat().st_size
                except OSError:
                    sizes[rel] = -1
            files[rel] = sizes[rel]
    return {
        "ids": len({(g, s.pid) for g, s in zip(groups, samples)}),
        "captures": len(samples),
        "cameras": len({s.camid for s in samples}),
        "files": len(files),
        "files_sha256": _hash_listing(files.items()),
    }


def dataset_fingerprint(
    dataset: Any, held_out: Sequence[Sequence[Sample]] = (), sizes: dict[str, int] | None = None
) -> dict[str, Any]:
    """The fingerprint of a parsed dataset (a :class:`~mambapro.data.ReIDDataset`: its ``name``,
    ``root`` folder and ``train``/``query``/``gallery`` samples).

    ``held_out``: training samples a run set aside (the validation identities of
    ``train.select_best=val``, with their original pids), counted back into ``train`` so that the
    fingerprint describes the dataset, not the run's use of it. ``sizes``: a listing of
    :func:`file_sizes` already made.
    """
    base = Path(dataset.root)
    sizes = dict(file_sizes(base) if sizes is None else sizes)
    listing = list(sizes.items())
    modalities = getattr(dataset, "modalities", None) or RGB_NI_TI
    splits: dict[str, Any] = {}
    for split in SPLITS:
        samples = list(getattr(dataset, split))
        groups = [0] * len(samples)
        if split == "train":
            for extra in held_out:  # original pids: never the same identity as a relabelled one
                samples += list(extra)
                groups += [1] * len(extra)
        splits[split] = _split_entry(samples, groups, base, sizes)
    return {
        "version": FINGERPRINT_VERSION,
        "dataset": dataset.name,
        "modalities": list(modalities.keys),
        "root": str(base.resolve()),
        "files": len(listing),
        "bytes": sum(size for _, size in listing if size > 0),
        "sha256": _hash_listing(listing),
        "splits": splits,
        "eval_sha256": _eval_hash(splits),
    }


def _eval_hash(splits: dict[str, Any]) -> str:
    text = "".join(f"{s}\t{splits[s]['files_sha256']}\n" for s in ("query", "gallery"))
    return hashlib.sha256(text.encode()).hexdigest()


def eval_part(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """What ``mambapro test`` compares: the dataset, the query and gallery entries, their hash."""
    return {
        "version": fingerprint.get("version"),
        "dataset": fingerprint.get("dataset"),
        "query": fingerprint.get("splits", {}).get("query"),
        "gallery": fingerprint.get("splits", {}).get("gallery"),
        "eval_sha256": fingerprint.get("eval_sha256"),
    }


def same_eval_split(trained: dict[str, Any] | None, here: dict[str, Any]) -> tuple[str, str]:
    """``("match" | "mismatch" | "unknown", a line saying so)``: is the query+gallery part of
    ``here`` the one ``trained`` (a checkpoint's fingerprint, None for older checkpoints) holds?"""
    if not isinstance(trained, dict) or trained.get("version") != FINGERPRINT_VERSION:
        return "unknown", (
            "dataset check: unknown (the checkpoint carries no dataset fingerprint of this version; "
            f"evaluated {here['dataset']} query+gallery {here['eval_sha256'][:12]})"
        )
    a, b = eval_part(trained), eval_part(here)
    if a == b:
        return "match", (
            f"dataset check: match (the evaluated {b['dataset']} query+gallery is the one the checkpoint "
            f"was trained against, {b['eval_sha256'][:12]})"
        )
    changes = []
    if a["dataset"] != b["dataset"]:
        changes.append(f"dataset {a['dataset']} -> {b['dataset']}")
    for split in ("query", "gallery"):
        was, now = a[split] or {}, b[split] or {}
        for key in ("ids", "captures", "cameras", "files"):
            if was.get(key) != now.get(key):
                changes.append(f"{split} {key} {was.get(key)} -> {now.get(key)}")
        if was.get("files_sha256") != now.get("files_sha256") and not any(
            c.startswith(split) for c in changes
        ):
            changes.append(f"{split} file list differs (names or sizes)")
    return "mismatch", (
        "dataset check: MISMATCH (the evaluated query+gallery is not the one the checkpoint was trained "
        f"against: {'; '.join(changes) or 'file list differs'}; checkpoint {str(a['eval_sha256'])[:12]}, "
        f"here {b['eval_sha256'][:12]})"
    )


def describe(fingerprint: dict[str, Any]) -> str:
    """The fingerprint as the lines a report shows."""
    fp = fingerprint
    keys = fp.get("modalities") or list(RGB_NI_TI.keys)
    sensors = "" if keys == list(RGB_NI_TI.keys) else f" ({'+'.join(keys)})"
    lines = [
        f"dataset {fp['dataset']}{sensors} at {fp['root']}: {fp['files']} files, {fp['bytes']:,} bytes, "
        f"file list sha256 {fp['sha256'][:16]}; query+gallery {fp['eval_sha256'][:16]}"
    ]
    for split in SPLITS:
        e = fp["splits"][split]
        lines.append(
            f"  {split:<8} {e['ids']:>6} ids {e['captures']:>7} captures {e['cameras']:>3} cameras "
            f"(files {e['files_sha256'][:16]})"
        )
    return "\n".join(lines)
