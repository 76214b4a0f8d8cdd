"""Parsers of the registered benchmarks (layouts and name rules declared in ``specs.py``).

:func:`build_dataset` walks a dataset folder under the data root as its
:class:`~mambapro.data.specs.DatasetSpec` describes (one parser per folder structure, the file
names matched by the spec's pattern) and returns a :class:`ReIDDataset` of
:class:`~mambapro.data.io.Sample` lists. Design choices:

* Files are listed in sorted order (``glob`` order is file-system dependent), and training pids
  are relabelled ``0..K-1`` in sorted order of the original ids, so runs are reproducible.
* Structural problems (missing root or split folder, empty split) always raise
  :class:`~mambapro.data.io.DatasetError` naming the path and listing what is there.
  Per-sample problems (a missing NI/TI/RGB partner, a name that does not parse, a camera out of
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
"""

from __future__ import annotations

import random
import re
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .io import DatasetError, ImageReadError, Sample, panel_size, read_triplet
from .specs import DATASETS, DatasetSpec

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

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_MAX_LISTED = 5


@dataclass
class ReIDDataset:
    """Train/query/gallery sample lists of one benchmark."""

    name: str
    root: Path
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    # (file, reason) of every triplet dropped with skip_broken=True.
    skipped: list[tuple[str, str]] = field(default_factory=list)
    # (file, reason) of the junk images (pid -1) left out by the official protocol.
    junk: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_train_pids(self) -> int:
        return len({s.pid for s in self.train})

    @property
    def num_train_cams(self) -> int:
        """Camera-embedding table size: the number of distinct training cameras."""
        return len({s.camid for s in self.train})

    @property
    def spec(self) -> DatasetSpec:
        return _spec(self.name)

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
            lines.append(f"  left out {len(self.junk)} junk image(s) (pid -1)")
        return "\n".join(lines)


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


# --------------------------------------------------------------------------- helpers


def _listing(path: Path) -> str:
    try:
        items = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    except OSError:
        return "(cannot be listed)"
    if not items:
        return "(empty)"
    more = f", ... ({len(items)} entries)" if len(items) > 20 else ""
    return ", ".join(items[:20]) + more


def _require_dir(path: Path, what: str) -> Path:
    if path.is_dir():
        return path
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    raise DatasetError(f"{what} not found: {path}; {parent} contains: {_listing(parent)}")


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


class _Problems:
    """Collects per-sample problems of one dataset, then raises or warns once."""

    def __init__(self, name: str, skip_broken: bool) -> None:
        self.name = name
        self.skip_broken = skip_broken
        self.items: list[tuple[str, str]] = []

    def add(self, path: Path | str, reason: str) -> None:
        self.items.append((str(path), reason))

    def finish(self) -> list[tuple[str, str]]:
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


def _relabel(samples: list[Sample]) -> list[Sample]:
    label = {pid: i for i, pid in enumerate(sorted({s.pid for s in samples}))}
    return [s._replace(pid=label[s.pid]) for s in samples]


def _non_empty(samples: list[Sample], folder: Path, name: str) -> list[Sample]:
    if not samples:
        raise DatasetError(f"{name}: split folder {folder} has no usable triplets ({_listing(folder)})")
    return samples


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
                panel_size(sizes[0], sample.paths[0])
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
    problems: _Problems,
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
        warnings.warn(
            f"{dataset_name}: {len(small)} triplet(s) have a modality image far smaller than its siblings, "
            f"upscaled to the input size: {small[0]}{more}",
            stacklevel=3,
        )
    return good


def _finalise(
    name: str,
    root: Path,
    splits: dict[str, tuple[list[Sample], Path]],
    problems: _Problems,
    verify: bool,
    junk: list[tuple[str, str]] | None = None,
    progress: bool = False,
) -> ReIDDataset:
    done: list[tuple[list[Sample], list[Sample]]] = []  # (as parsed, usable)
    checked = {}
    for split, (samples, folder) in splits.items():
        # RGBNT201's query and gallery are the same folder: check it once.
        good = next((v for s, v in done if s == samples), None)
        if good is None:
            desc = f"{'verify' if verify else 'check'} {name} {split}"
            good = verify_samples(samples, name, problems, progress and verify, desc, decode=verify)
            done.append((samples, good))
        checked[split] = (list(good), folder)
    skipped = problems.finish()
    for samples, folder in checked.values():
        _non_empty(samples, folder, name)
    train = _relabel(checked["train"][0])
    return ReIDDataset(
        name=name,
        root=root,
        train=train,
        query=checked["query"][0],
        gallery=checked["gallery"][0],
        skipped=skipped,
        junk=junk or [],
    )


# --------------------------------------------------------------------------- parsers


def _parse_name(
    spec: DatasetSpec, path: Path, problems: _Problems, junk: list[tuple[str, str]]
) -> tuple[int, int, int] | None:
    """(pid, camid 0-based, sceneid or -1) from a file name by the spec's rule, or None (recorded)."""
    m = re.search(spec.name_pattern, path.name)
    try:
        if m is None:
            raise ValueError(path.name)
        pid, cam = int(m["pid"]), int(m["cam"])
        scene = int(m["scene"]) if spec.has_scenes else -1
    except ValueError:
        problems.add(path, f"name does not parse as {spec.name_rule}")
        return None
    if pid == -1:
        junk.append((str(path), "junk image (pid -1), left out as in the official protocol"))
        return None
    camid = cam - spec.camera_base
    if not 0 <= camid < spec.max_cameras:
        first = spec.camera_base
        problems.add(path, f"camera {cam} out of range {first}..{first + spec.max_cameras - 1}")
        return None
    return pid, camid, scene


def _modality_triplets(
    spec: DatasetSpec, folder: Path, problems: _Problems, junk: list[tuple[str, str]], owner: int | None
) -> list[Sample]:
    """Triplets of one ``folder/{m1,m2,m3}/NAME`` tree; ``owner``: the pid its names must carry."""
    first, *others = spec.modality_folders
    dirs = {m: folder / m for m in spec.modality_folders}
    files = {m: {p.name: p for p in _images(d)} for m, d in dirs.items()}
    for m in others:
        for n in sorted(set(files[m]) - set(files[first])):
            problems.add(files[m][n], f"has no RGB partner {dirs[first] / n}")
    out = []
    for n, rgb in files[first].items():
        missing = [str(dirs[m] / n) for m in others if n not in files[m]]
        if missing:
            problems.add(rgb, f"missing {' and '.join(missing)}")
            continue
        parsed = _parse_name(spec, rgb, problems, junk)
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
    spec: DatasetSpec, split_dir: Path, problems: _Problems, junk: list[tuple[str, str]]
) -> list[Sample]:
    for m in spec.modality_folders:
        _require_dir(split_dir / m, f"{spec.name} {m} folder")
    return _modality_triplets(spec, split_dir, problems, junk, owner=None)


def _parse_side_by_side(
    spec: DatasetSpec, split_dir: Path, problems: _Problems, junk: list[tuple[str, str]]
) -> list[Sample]:
    out = []
    for p in _images(split_dir):
        parsed = _parse_name(spec, p, problems, junk)
        if parsed is not None:
            out.append(Sample((str(p),), *parsed))
    return out


def _parse_id_folders(
    spec: DatasetSpec, split_dir: Path, problems: _Problems, junk: list[tuple[str, str]]
) -> list[Sample]:
    out = []
    for id_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not id_dir.name.isdigit():
            problems.add(id_dir, "identity folder name is not a number")
            continue
        absent = [str(id_dir / m) for m in spec.modality_folders if not (id_dir / m).is_dir()]
        if absent:
            problems.add(id_dir, f"missing modality folder(s) {', '.join(absent)} (has {_listing(id_dir)})")
            continue
        out += _modality_triplets(spec, id_dir, problems, junk, owner=int(id_dir.name))
    return out


Parser = Callable[[DatasetSpec, Path, _Problems, list[tuple[str, str]]], list[Sample]]

#: One parser per folder structure (``DatasetSpec.structure``): (spec, split folder, problems,
#: junk list) -> samples with original pids.
PARSERS: dict[str, Parser] = {
    "modality_folders": _parse_modality_folders,
    "side_by_side": _parse_side_by_side,
    "id_folders": _parse_id_folders,
}


# --------------------------------------------------------------------------- public API


def _spec(name: str) -> DatasetSpec:
    """The spec of ``name`` in any case, or a DatasetError naming the choices."""
    if str(name).lower() not in DATASETS:
        raise DatasetError(
            f"unknown dataset {name!r}; choose one of: {', '.join(n.upper() for n in DATASETS.names())}"
        )
    return DATASETS.get(str(name))


def build_dataset(
    name: str, root: str | Path, skip_broken: bool = False, verify: bool = False, progress: bool = False
) -> ReIDDataset:
    """Parse benchmark ``name`` (RGBNT201, RGBNT100, MSVR310, or any registered spec; any
    case) under the data root, by its :class:`~mambapro.data.specs.DatasetSpec`.

    Every image's header is read (format and size: an empty, non-image or wrongly sized file
    is found before training starts). ``verify=True``, and ``skip_broken=True`` (which must
    find what it skips), decode every image up front (slower on the real datasets: a
    progress bar shows it); otherwise a truncated image raises
    :class:`~mambapro.data.io.ImageReadError` when it is loaded.
    """
    spec = _spec(name)
    base = _require_dir(Path(root) / spec.folder, f"{spec.name} dataset folder")
    problems = _Problems(spec.name, skip_broken)
    junk: list[tuple[str, str]] = []
    parsed: dict[str, list[Sample]] = {}  # by folder: query and gallery may share one
    splits = {}
    for split, folder in spec.splits.items():
        d = _require_dir(base / folder, f"{spec.name} split folder")
        if folder not in parsed:
            parsed[folder] = PARSERS[spec.structure](spec, d, problems, junk)
        splits[split] = (list(parsed[folder]), d)
    if junk:
        warnings.warn(f"{spec.name}: left out {len(junk)} junk image(s) with pid -1", stacklevel=2)
    return _finalise(spec.name, base, splits, problems, verify or skip_broken, junk, progress)


def split_validation(
    train_samples: list[Sample], val_ids: int, seed: int
) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """Hold out ``val_ids`` training identities as a validation query/gallery.

    Returns ``(train, val_query, val_gallery)``: the remaining training samples with pids
    relabelled ``0..K-1`` (sorted order), and the held-out samples with their pids unchanged.
    Held-out identities are drawn (seeded) among those seen by at least two cameras when there
    are enough of them. For each held-out identity one sample per camera goes to the query and
    the rest to the gallery, except where a query would be left without a gallery sample from
    another camera (market protocol): such a sample stays in the gallery.
    """
    by_pid: dict[int, list[Sample]] = defaultdict(list)
    for s in train_samples:
        by_pid[s.pid].append(s)
    pids = sorted(by_pid)
    if not 0 < val_ids < len(pids):
        raise ValueError(
            f"val_ids = {val_ids} must be in 1..{len(pids) - 1} (the training set has {len(pids)} ids)"
        )
    rng = random.Random(seed)
    multi = [p for p in pids if len({s.camid for s in by_pid[p]}) >= 2]
    single = [p for p in pids if len({s.camid for s in by_pid[p]}) < 2]
    rng.shuffle(multi)
    rng.shuffle(single)
    held = set((multi + single)[:val_ids])

    query: list[Sample] = []
    gallery: list[Sample] = []
    for pid in sorted(held):
        samples = list(by_pid[pid])
        rng.shuffle(samples)
        by_cam: dict[int, list[Sample]] = defaultdict(list)
        for s in samples:
            by_cam[s.camid].append(s)
        q: list[Sample] = []
        g = list(samples)
        # Cameras with more samples first: they can give one away and still serve as matches.
        for cam in sorted(by_cam, key=lambda c: (-len(by_cam[c]), c)):
            cand = by_cam[cam][0]
            rest = [s for s in g if s is not cand]
            if all(any(r.camid != x.camid for r in rest) for x in (*q, cand)):
                q.append(cand)
                g = rest
        query += q
        gallery += g
    train = _relabel([s for s in train_samples if s.pid not in held])
    return train, query, gallery


# --------------------------------------------------------------------------- single folders and files


def triplet_paths(file: str | Path, dataset_name: str) -> tuple[str, ...]:
    """The ``Sample.paths`` of the capture that ``file`` (any of its modality files) belongs to.

    With modality folders (RGBNT201 ``.../{RGB,NI,TI}/NAME``, MSVR310 ``.../VID/{vis,ni,th}/NAME``)
    the three files with the same NAME; a side-by-side file (RGBNT100) is its own 1-tuple.
    Existence is not checked.
    """
    spec = _spec(dataset_name)
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


def samples_at(path: str | Path, dataset_name: str, skip_broken: bool = False) -> list[Sample]:
    """Samples of one split folder, or the one sample a file belongs to (original pids).

    ``path`` is a split folder in the dataset's layout (``RGBNT201/test``,
    ``RGBNT100/rgbir/query``, ``msvr310/query3``) or one file of a capture (any modality). The
    pid, camera and scene come from the names, by the same rules as :func:`build_dataset`.
    """
    spec = _spec(dataset_name)
    path = Path(path)
    problems = _Problems(spec.name, skip_broken)
    if path.is_dir():
        split_dir, wanted = path, None
    elif path.is_file():
        first = Path(triplet_paths(path, spec.name)[0])
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
    samples = verify_samples(samples, spec.name, problems, decode=skip_broken)
    problems.finish()
    return _non_empty(samples, split_dir, spec.name)
