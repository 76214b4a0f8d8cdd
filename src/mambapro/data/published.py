"""A parsed dataset's split sizes against the ones its paper publishes, and its capture conditions.

A spec's ``published_splits`` maps ``train``/``query``/``gallery`` to (identities, captures,
cameras) as the dataset's paper gives them, None where a number is not published.
:func:`published_report` compares a built :class:`~mambapro.data.datasets.ReIDDataset` with
them, one line per split saying it matches or which count differs, and counts the capture
conditions its file names carry (any named group of ``name_pattern`` besides ``pid``, ``cam``
and ``scene``: WMVEID863's ``night``); ``mambapro check-data`` prints it.
:func:`published_differences` gives only the differing splits, one line each (nothing when all
match, nothing is published, or the tree is synthetic), and :func:`warn_published_differences`
warns them once, for the start of training.

A synthetic tree (``mambapro synth``, recognised by its ``synth_meta.json``) has the layout of
the dataset but sizes of its own: it is not compared.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from .spec_type import DatasetSpec
from .synth_params import META_FILE

if TYPE_CHECKING:
    from .datasets import ReIDDataset

__all__ = [
    "SPLITS",
    "condition_counts",
    "condition_groups",
    "published_differences",
    "published_report",
    "split_sizes",
    "warn_published_differences",
]

SPLITS = ("train", "query", "gallery")
_COUNTS = ("identities", "captures", "cameras")
_NAME_GROUPS = {"pid", "cam", "scene"}


def split_sizes(dataset: ReIDDataset) -> dict[str, tuple[int, int, int]]:
    """(identities, captures, cameras) of each split as parsed (original pids, 0-based cameras;
    the distractor pid 0 of a Market-style gallery counts as one identity, as its loaders count it)."""
    out = {}
    for split in SPLITS:
        samples = getattr(dataset, split)
        out[split] = (len({s.pid for s in samples}), len(samples), len({s.camid for s in samples}))
    return out


def _is_synthetic(dataset: ReIDDataset) -> bool:
    return (Path(dataset.root) / META_FILE).is_file()


def _split_line(
    split: str, found: tuple[int, int, int], published: tuple[int | None, ...]
) -> tuple[str, bool]:
    """(the line of one split, whether it differs)."""
    differ = [
        f"{what} {have} here, {want} published"
        for what, have, want in zip(_COUNTS, found, published)
        if want is not None and have != want
    ]
    if differ:
        return f"{split}: differs: {'; '.join(differ)}", True
    shown = ", ".join(
        f"{have} {what}" for what, have, want in zip(_COUNTS, found, published) if want is not None
    )
    unpublished = [what for what, want in zip(_COUNTS, published) if want is None]
    rest = f" ({' and '.join(unpublished)} not published)" if unpublished else ""
    return f"{split}: {shown}: as published{rest}", False


def _comparison(dataset: ReIDDataset) -> tuple[list[str], list[str]]:
    """(every line, the lines of differing splits) of the comparison with the published sizes."""
    spec: DatasetSpec = dataset.spec
    published = spec.published_splits
    if _is_synthetic(dataset):
        return [f"published split sizes: not compared, {dataset.root} is a synthetic tree ({META_FILE})"], []
    if not published:
        return [f"published split sizes: none recorded for {spec.name}"], []
    found = split_sizes(dataset)
    lines = [f"published split sizes ({spec.source or 'no source given'}):"]
    differing = []
    for split in SPLITS:
        if split not in published:
            continue
        line, differs = _split_line(split, found[split], published[split])
        lines.append(f"  {line}")
        if differs:
            differing.append(f"{spec.name} {line}")
    return lines, differing


def condition_groups(spec: DatasetSpec) -> tuple[str, ...]:
    """The capture-condition groups of the spec's name pattern (``("night",)`` for WMVEID863)."""
    return tuple(g for g in re.compile(spec.name_pattern).groupindex if g not in _NAME_GROUPS)


def condition_counts(dataset: ReIDDataset) -> dict[str, dict[str, Counter[str]]]:
    """Per condition group, per split: how many captures carry each value in their file name
    ("?" where the name leaves the group empty)."""
    spec = dataset.spec
    pattern = re.compile(spec.name_pattern)
    out: dict[str, dict[str, Counter[str]]] = {}
    for group in condition_groups(spec):
        per_split = {}
        for split in SPLITS:
            values: Counter[str] = Counter()
            for s in getattr(dataset, split):
                m = pattern.search(Path(s.paths[0]).name)
                value = m[group] if m is not None else None
                values["?" if value is None else value] += 1
            per_split[split] = values
        out[group] = per_split
    return out


def _condition_lines(dataset: ReIDDataset) -> list[str]:
    counts = condition_counts(dataset)
    if not counts:
        return []
    lines = ["capture conditions in the file names:"]
    for split in SPLITS:
        parts = [
            f"{group}={value} {n}"
            for group, per_split in counts.items()
            for value, n in sorted(per_split[split].items())
        ]
        lines.append(f"  {split}: {', '.join(parts) if parts else 'no captures'}")
    return lines


def published_report(dataset: ReIDDataset) -> list[str]:
    """The lines ``mambapro check-data`` prints after the split table: each published split
    matched or its differing counts, then the capture conditions of the file names."""
    lines, _ = _comparison(dataset)
    return lines + _condition_lines(dataset)


def published_differences(dataset: ReIDDataset) -> list[str]:
    """One line per split whose identities, captures or cameras differ from the published ones
    (``"MSVR310 train: differs: captures 1031 here, 1032 published"``); empty when they all
    match, nothing is published, or the tree is synthetic."""
    return _comparison(dataset)[1]


def warn_published_differences(dataset: ReIDDataset) -> list[str]:
    """Warn once (a ``UserWarning``) when the dataset's splits differ from the published sizes,
    naming each differing split and count and the source; return the differing lines."""
    differing = published_differences(dataset)
    if differing:
        warnings.warn(
            f"{'; '.join(differing)} (published: {dataset.spec.source}); a partial or re-split copy "
            "gives numbers not comparable with the paper's",
            stacklevel=2,
        )
    return differing
