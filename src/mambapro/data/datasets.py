"""Building a dataset's :class:`ReIDDataset` (layouts and name rules in its spec, ``specs.py``).

:func:`build_dataset` walks a dataset folder under the data root as its
:class:`~mambapro.data.specs.DatasetSpec` describes (one parser per folder structure, the file
names matched by the spec's pattern) and returns a :class:`ReIDDataset` of
:class:`~mambapro.data.io.Sample` lists. Design choices:

* Files are listed in sorted order (``glob`` order is file-system dependent), and training pids
  are relabelled ``0..K-1`` in sorted order of the original ids, so runs are reproducible.
* Structural problems (missing root or split folder, empty split) always raise
  :class:`~mambapro.data.io.DatasetError` naming the path and listing what is there.
  Per-sample problems (a missing partner of another modality, a name that does not parse, a camera out of
  range, a file whose header is not an image's or whose panels do not split; with ``verify=True``
  or ``skip_broken=True``, which decode everything, also a truncated image) are collected and
  raised together (first few named, all counted), or with ``skip_broken=True`` dropped with one
  counted warning and kept in ``dataset.skipped``. Nothing is dropped silently.
* Side-by-side samples (RGBNT100) keep their single file (``paths`` is a 1-tuple); the panel
  split happens when decoding (:func:`~mambapro.data.io.read_triplet`). Market-style junk images
  (``pid == -1``) are left out as the official protocol does, with a counted warning.
* ``num_train_cams`` is the size of the camera-embedding table: the number of distinct training
  cameras, as the release counts it (``data/datasets/bases.py``). A test camera id outside
  ``0..num_train_cams - 1`` cannot be embedded; :func:`check_cameras` names it before any
  feature is extracted.

This module holds the dataset type and the build functions (:func:`build_dataset`,
:func:`samples_at`, :func:`triplet_paths`); the parsers per folder structure are in
``layout_parsers.py``, the per-sample checks in ``sample_checks.py`` and the training-id
relabelling and validation hold-out in ``splits.py``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..modalities import ModalitySet
from .io import DatasetError, DatasetRef, Sample
from .layout_parsers import PARSERS, non_empty, require_dir
from .sample_checks import Problems, check_cameras, verify_samples
from .specs import DATASETS, DatasetSpec, dataset_spec
from .splits import relabel, split_validation

# The parsers, checks and splits live in their own modules; their public names stay importable
# from here, where the rest of the package has always found them.
__all__ = [
    "DATASETS",
    "PARSERS",
    "ReIDDataset",
    "build_dataset",
    "check_cameras",
    "samples_at",
    "split_validation",
    "triplet_paths",
    "verify_samples",
]


@dataclass
class ReIDDataset:
    """Train/query/gallery sample lists of one benchmark (``source_spec``: the spec it was parsed
    by, which a dataset of a spec file needs: its name is not registered)."""

    name: str
    root: Path
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    # (file, reason) of every triplet dropped with skip_broken=True.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # (file, reason) of the junk images (a pid of the spec's junk_pids) left out by the protocol.
    junk: list[tuple[str, str]] = field(default_factory=list)
    source_spec: DatasetSpec | None = field(default=None, repr=False, compare=False)

    @property
    def num_train_pids(self) -> int:
        return len({s.pid for s in self.train})

    @property
    def num_train_cams(self) -> int:
        """Camera-embedding table size: the number of distinct training cameras."""
        return len({s.camid for s in self.train})

    @property
    def spec(self) -> DatasetSpec:
        return self.source_spec if self.source_spec is not None else dataset_spec(self.name)

    @property
    def modalities(self) -> ModalitySet:
        """The dataset's modalities, in batch order."""
        return self.spec.modalities

    @property
    def has_scenes(self) -> bool:
        """Evaluation protocol: same pid and same scene is junk (else same camera)."""
        return self.spec.has_scenes

    def __str__(self) -> str:
        scenes = self.has_scenes
        head = f"  {'subset':<8}| {'# ids':>6} | {'# triplets':>10} | {'# cameras':>9}"
        head += f" | {'# scenes':>8}" if scenes else ""
        rule = "  " + "-" * (len(head) - 2)
        lines = [f"{self.name} at {self.root}", rule, head, rule]
        for split in ("train", "query", "gallery"):
            samples: list[Sample] = getattr(self, split)
            row = (
                f"  {split:<8}| {len({s.pid for s in samples}):>6} | {len(samples):>10} | "
                f"{len({s.camid for s in samples}):>9}"
            )
            if scenes:
                row += f" | {len({s.sceneid for s in samples}):>8}"
            lines.append(row)
        lines.append(rule)
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} broken triplet(s)")
        if self.junk:
            pids = ", ".join(str(p) for p in self.spec.junk_pids)
            lines.append(f"  left out {len(self.junk)} junk image(s) (pid {pids})")
        return "\n".join(lines)


# --------------------------------------------------------------------------- building a dataset


def _finalise(
    spec: DatasetSpec,
    root: Path,
    splits: dict[str, tuple[list[Sample], Path]],
    problems: Problems,
    verify: bool,
    junk: list[tuple[str, str]] | None = None,
    progress: bool = False,
) -> ReIDDataset:
    """Check the parsed splits, report their problems, and relabel the training pids."""
    name = spec.name
    done: list[tuple[list[Sample], list[Sample]]] = []  # (as parsed, usable)
    checked = {}
    for split, (samples, folder) in splits.items():
        # RGBNT201's query and gallery are the same folder: check it once.
        good = next((v for s, v in done if s == samples), None)
        if good is None:
            desc = f"{'verify' if verify else 'check'} {name} {split}"
            good = verify_samples(samples, spec, problems, progress and verify, desc, decode=verify)
            done.append((samples, good))
        checked[split] = (list(good), folder)
    skipped = problems.finish()
    for samples, folder in checked.values():
        non_empty(samples, folder, name)
    train = relabel(checked["train"][0])
    return ReIDDataset(
        name=name,
        root=root,
        train=train,
        query=checked["query"][0],
        gallery=checked["gallery"][0],
        skipped=skipped,
        junk=junk or [],
        source_spec=spec,
    )


def build_dataset(
    name: DatasetRef,
    root: str | Path,
    skip_broken: bool = False,
    verify: bool = False,
    progress: bool = False,
) -> ReIDDataset:
    """Parse the dataset ``name`` (RGBNT201, RGBNT100, MSVR310 or any registered name, any case;
    a spec-file path; or a :class:`~mambapro.data.specs.DatasetSpec`) under the data root, by its spec.

    Every image's header is read (format and size: an empty, non-image or wrongly sized file
    is found before training starts). ``verify=True``, and ``skip_broken=True`` (which must
    find what it skips), decode every image up front (slower on the real datasets: a
    progress bar shows it); otherwise a truncated image raises
    :class:`~mambapro.data.io.ImageReadError` when it is loaded.
    """
    spec = dataset_spec(name)
    base = require_dir(Path(root) / spec.folder, f"{spec.name} dataset folder")
    problems = Problems(spec.name, skip_broken)
    junk: list[tuple[str, str]] = []
    parsed: dict[str, list[Sample]] = {}  # by folder: query and gallery may share one
    splits = {}
    for split, folder in spec.splits.items():
        d = require_dir(base / folder, f"{spec.name} split folder")
        if folder not in parsed:
            parsed[folder] = PARSERS[spec.structure](spec, d, problems, junk)
        splits[split] = (list(parsed[folder]), d)
    if junk:
        pids = ", ".join(str(p) for p in spec.junk_pids)
        warnings.warn(f"{spec.name}: left out {len(junk)} junk image(s) with pid {pids}", stacklevel=2)
    return _finalise(spec, base, splits, problems, verify or skip_broken, junk, progress)


# --------------------------------------------------------------------------- single folders and files


def triplet_paths(file: str | Path, dataset_name: DatasetRef) -> tuple[str, ...]:
    """The ``Sample.paths`` of the capture that ``file`` (any of its modality files) belongs to.

    With modality folders (RGBNT201 ``.../{RGB,NI,TI}/NAME``, MSVR310 ``.../VID/{vis,ni,th}/NAME``)
    the files with the same NAME, one per modality; a side-by-side file (RGBNT100) is its own 1-tuple.
    Existence is not checked.
    """
    spec = dataset_spec(dataset_name)
    file = Path(file)
    if spec.side_by_side:
        return (str(file),)
    folders = spec.modality_folders
    if file.parent.name not in folders:
        raise DatasetError(
            f"{file} is not a {spec.name} modality file: its folder should be one of {', '.join(folders)}"
        )
    return tuple(str(file.parent.parent / m / file.name) for m in folders)


#: How many folders up from a capture's first file its split folder is, per structure.
_SPLIT_LEVEL = {"modality_folders": 1, "side_by_side": 0, "id_folders": 2}


def samples_at(path: str | Path, dataset_name: DatasetRef, skip_broken: bool = False) -> list[Sample]:
    """Samples of one split folder, or the one sample a file belongs to (original pids).

    ``path`` is a split folder in the dataset's layout (``RGBNT201/test``,
    ``RGBNT100/rgbir/query``, ``msvr310/query3``) or one file of a capture (any modality). The
    pid, camera and scene come from the names, by the same rules as :func:`build_dataset`.
    """
    spec = dataset_spec(dataset_name)
    path = Path(path)
    problems = Problems(spec.name, skip_broken)
    if path.is_dir():
        split_dir, wanted = path, None
    elif path.is_file():
        first = Path(triplet_paths(path, spec)[0])
        split_dir = first.parents[_SPLIT_LEVEL[spec.structure]]
        wanted = str(first)
    else:
        raise DatasetError(f"{path} does not exist")
    samples = PARSERS[spec.structure](spec, split_dir, problems, [])
    if wanted is not None:
        samples = [s for s in samples if s.paths[0] == wanted]
        problems.items = [(f, why) for f, why in problems.items if f == wanted]
        if not samples and not problems.items:
            raise DatasetError(f"{path}: no {spec.name} triplet of that name parses in {split_dir}")
    samples = verify_samples(samples, spec, problems, decode=skip_broken)
    problems.finish()
    return non_empty(samples, split_dir, spec.name)
