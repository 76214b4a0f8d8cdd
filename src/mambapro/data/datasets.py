"""Parsers of the three multi-modal ReID benchmarks (layouts and name rules of SPEC §1).

Each parser walks one dataset folder under the data root and returns a :class:`ReIDDataset` of
:class:`~mambapro.data.io.Sample` lists. Design choices:

* Files are listed in sorted order (``glob`` order is file-system dependent), and training pids
  are relabelled ``0..K-1`` in sorted order of the original ids, so runs are reproducible.
* Structural problems (missing root or split folder, empty split) always raise
  :class:`~mambapro.data.io.DatasetError` naming the path and listing what is there.
  Per-sample problems (a missing NI/TI/RGB partner, a name that does not parse, a camera out of
  range, with ``verify=True`` an unreadable or truncated image) are collected and raised together
  (first few named, all counted), or with ``skip_broken=True`` dropped with one counted warning
  and kept in ``dataset.skipped``. Nothing is dropped silently.
* RGBNT100 samples keep their single side-by-side file (``paths`` is a 1-tuple); the panel split
  happens when decoding (:func:`~mambapro.data.io.read_triplet`). Market-style junk images
  (``pid == -1``) are left out of RGBNT100 as the official protocol does, with a counted warning.
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

from ..registry import Registry
from .io import DatasetError, ImageReadError, Sample, read_triplet

__all__ = [
    "DATASETS",
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

DATASETS: Registry[Callable[..., ReIDDataset]] = Registry("datasets")


@dataclass
class ReIDDataset:
    """Train/query/gallery sample lists of one benchmark."""

    name: str
    root: Path
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    # (file, reason) of every triplet dropped with skip_broken=True or as junk.
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_train_pids(self) -> int:
        return len({s.pid for s in self.train})

    @property
    def num_train_cams(self) -> int:
        """Camera-embedding table size: the number of distinct training cameras."""
        return len({s.camid for s in self.train})

    @property
    def has_scenes(self) -> bool:
        return any(s.sceneid >= 0 for s in (*self.train, *self.query, *self.gallery))

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
            lines.append(f"  skipped {len(self.skipped)} broken or junk triplet(s)")
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
        shown = "; ".join(f"{p}: {r}" for p, r in self.items[:_MAX_LISTED])
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


def verify_samples(samples: list[Sample], dataset_name: str, problems: _Problems) -> list[Sample]:
    """Decode every image of ``samples``; record unreadable ones in ``problems``."""
    good = []
    for s in samples:
        try:
            read_triplet(s, dataset_name)
        except ImageReadError as err:
            problems.add(s.paths[0], str(err))
            continue
        good.append(s)
    return good


def _finalise(
    name: str,
    root: Path,
    splits: dict[str, tuple[list[Sample], Path]],
    problems: _Problems,
    verify: bool,
    junk: list[tuple[str, str]] | None = None,
) -> ReIDDataset:
    if verify:
        done: list[tuple[list[Sample], list[Sample]]] = []  # (as parsed, readable)
        verified = {}
        for split, (samples, folder) in splits.items():
            # RGBNT201's query and gallery are the same folder: decode it once.
            good = next((v for s, v in done if s == samples), None)
            if good is None:
                good = verify_samples(samples, name, problems)
                done.append((samples, good))
            verified[split] = (list(good), folder)
        splits = verified
    skipped = problems.finish()
    for samples, folder in splits.values():
        _non_empty(samples, folder, name)
    train = _relabel(splits["train"][0])
    return ReIDDataset(
        name=name,
        root=root,
        train=train,
        query=splits["query"][0],
        gallery=splits["gallery"][0],
        skipped=skipped + (junk or []),
    )


# --------------------------------------------------------------------------- RGBNT201

_RGBNT201_NAME = re.compile(r"^(\d{6})[^_]*_cam(\d)")


def _parse_rgbnt201(split_dir: Path, problems: _Problems) -> list[Sample]:
    mod = {m: _require_dir(split_dir / m, f"RGBNT201 {m} folder") for m in ("RGB", "NI", "TI")}
    files = {m: {p.name: p for p in _images(d)} for m, d in mod.items()}
    for m in ("NI", "TI"):
        for n in sorted(set(files[m]) - set(files["RGB"])):
            problems.add(files[m][n], f"has no RGB partner {mod['RGB'] / n}")
    out = []
    for n, rgb in files["RGB"].items():
        missing = [str(mod[m] / n) for m in ("NI", "TI") if n not in files[m]]
        if missing:
            problems.add(rgb, f"missing {' and '.join(missing)}")
            continue
        m = _RGBNT201_NAME.match(n)
        if m is None or int(m.group(2)) < 1:
            problems.add(rgb, "name does not parse as PPPPPP..._camC_... (6-digit pid, camera 1-9)")
            continue
        paths = (str(rgb), str(files["NI"][n]), str(files["TI"][n]))
        out.append(Sample(paths, int(m.group(1)), int(m.group(2)) - 1, -1))
    return out


@DATASETS.register("RGBNT201")
def rgbnt201(root: str | Path, skip_broken: bool = False, verify: bool = False) -> ReIDDataset:
    """``RGBNT201/{train_171,test}/{RGB,NI,TI}/NAME.jpg``; query and gallery are both ``test``."""
    base = _require_dir(Path(root) / "RGBNT201", "RGBNT201 dataset folder")
    problems = _Problems("RGBNT201", skip_broken)
    train_dir = _require_dir(base / "train_171", "RGBNT201 split folder")
    test_dir = _require_dir(base / "test", "RGBNT201 split folder")
    train = _parse_rgbnt201(train_dir, problems)
    test = _parse_rgbnt201(test_dir, problems)
    splits = {"train": (train, train_dir), "query": (test, test_dir), "gallery": (list(test), test_dir)}
    return _finalise("RGBNT201", base, splits, problems, verify)


# --------------------------------------------------------------------------- RGBNT100

_RGBNT100_NAME = re.compile(r"([-\d]+)_c([-\d]+)")


def _parse_rgbnt100(split_dir: Path, problems: _Problems, junk: list[tuple[str, str]]) -> list[Sample]:
    out = []
    for p in _images(split_dir):
        m = _RGBNT100_NAME.search(p.name)
        try:
            pid, cam = (int(g) for g in m.groups()) if m else (None, None)
        except ValueError:
            pid = cam = None
        if pid is None or cam is None:
            problems.add(p, "name does not parse as PID_cCAM... (regex ([-\\d]+)_c([-\\d]+))")
            continue
        if pid == -1:
            junk.append((str(p), "junk image (pid -1), left out as in the official protocol"))
            continue
        if not 1 <= cam <= 8:
            problems.add(p, f"camera c{cam} out of range 1..8")
            continue
        out.append(Sample((str(p),), pid, cam - 1, -1))
    return out


@DATASETS.register("RGBNT100")
def rgbnt100(root: str | Path, skip_broken: bool = False, verify: bool = False) -> ReIDDataset:
    """``RGBNT100/rgbir/{bounding_box_train,query,bounding_box_test}/NAME.jpg``, panels side by side."""
    base = _require_dir(Path(root) / "RGBNT100" / "rgbir", "RGBNT100 dataset folder")
    problems = _Problems("RGBNT100", skip_broken)
    junk: list[tuple[str, str]] = []
    splits = {}
    for split, folder in (
        ("train", "bounding_box_train"),
        ("query", "query"),
        ("gallery", "bounding_box_test"),
    ):
        d = _require_dir(base / folder, "RGBNT100 split folder")
        splits[split] = (_parse_rgbnt100(d, problems, junk), d)
    if junk:
        warnings.warn(f"RGBNT100: left out {len(junk)} junk image(s) with pid -1", stacklevel=2)
    return _finalise("RGBNT100", base, splits, problems, verify, junk)


# --------------------------------------------------------------------------- MSVR310

_MSVR310_NAME = re.compile(r"^(\d{4})_s(\d{3})_v(\d)")


def _parse_msvr310(split_dir: Path, problems: _Problems) -> list[Sample]:
    out = []
    for vid_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not vid_dir.name.isdigit():
            problems.add(vid_dir, "vehicle folder name is not a number")
            continue
        mods = {m: vid_dir / m for m in ("vis", "ni", "th")}
        absent = [str(d) for d in mods.values() if not d.is_dir()]
        if absent:
            problems.add(vid_dir, f"missing modality folder(s) {', '.join(absent)} (has {_listing(vid_dir)})")
            continue
        files = {m: {p.name: p for p in _images(d)} for m, d in mods.items()}
        for m in ("ni", "th"):
            for n in sorted(set(files[m]) - set(files["vis"])):
                problems.add(files[m][n], f"has no RGB partner {mods['vis'] / n}")
        for n, vis in files["vis"].items():
            missing = [str(mods[m] / n) for m in ("ni", "th") if n not in files[m]]
            if missing:
                problems.add(vis, f"missing {' and '.join(missing)}")
                continue
            match = _MSVR310_NAME.match(n)
            if match is None:
                problems.add(
                    vis, "name does not parse as PPPP_sSSS_vC... (4-digit pid, 3-digit scene, camera)"
                )
                continue
            pid, scene, cam = (int(g) for g in match.groups())
            if pid != int(vid_dir.name):
                problems.add(vis, f"pid {pid:04d} in the name differs from its folder {vid_dir.name}")
                continue
            paths = (str(vis), str(files["ni"][n]), str(files["th"][n]))
            out.append(Sample(paths, pid, cam, scene))
    return out


@DATASETS.register("MSVR310")
def msvr310(root: str | Path, skip_broken: bool = False, verify: bool = False) -> ReIDDataset:
    """``msvr310/{bounding_box_train,query3,bounding_box_test}/VID/{vis,ni,th}/NAME.jpg``."""
    base = _require_dir(Path(root) / "msvr310", "MSVR310 dataset folder")
    problems = _Problems("MSVR310", skip_broken)
    splits = {}
    for split, folder in (
        ("train", "bounding_box_train"),
        ("query", "query3"),
        ("gallery", "bounding_box_test"),
    ):
        d = _require_dir(base / folder, "MSVR310 split folder")
        splits[split] = (_parse_msvr310(d, problems), d)
    return _finalise("MSVR310", base, splits, problems, verify)


# --------------------------------------------------------------------------- public API


def _dataset_name(name: str) -> str:
    """The canonical (upper-case) benchmark name of ``name`` in any case, or a DatasetError."""
    if str(name).lower() not in DATASETS:
        raise DatasetError(
            f"unknown dataset {name!r}; choose one of: {', '.join(n.upper() for n in DATASETS.names())}"
        )
    return str(name).upper()


def build_dataset(
    name: str, root: str | Path, skip_broken: bool = False, verify: bool = False
) -> ReIDDataset:
    """Parse benchmark ``name`` (RGBNT201, RGBNT100, MSVR310; any case) under the data root.

    ``verify=True`` decodes every image up front (slow on the real datasets); otherwise an
    unreadable image raises :class:`~mambapro.data.io.ImageReadError` when it is loaded.
    """
    return DATASETS.get(_dataset_name(name))(root, skip_broken=skip_broken, verify=verify)


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

#: Modality folder names, (RGB, NI, TI), of the datasets that keep one file per modality.
_MODALITY_FOLDERS = {"RGBNT201": ("RGB", "NI", "TI"), "MSVR310": ("vis", "ni", "th")}


def triplet_paths(file: str | Path, dataset_name: str) -> tuple[str, ...]:
    """The ``Sample.paths`` of the capture that ``file`` (any of its modality files) belongs to.

    RGBNT201 ``.../{RGB,NI,TI}/NAME`` and MSVR310 ``.../VID/{vis,ni,th}/NAME`` give the three
    files with the same NAME; an RGBNT100 file is its own 1-tuple. Existence is not checked.
    """
    name = _dataset_name(dataset_name)
    file = Path(file)
    if name not in _MODALITY_FOLDERS:
        return (str(file),)
    folders = _MODALITY_FOLDERS[name]
    if file.parent.name not in folders:
        raise DatasetError(
            f"{file} is not a {name} modality file: its folder should be one of {', '.join(folders)}"
        )
    return tuple(str(file.parent.parent / m / file.name) for m in folders)


def samples_at(path: str | Path, dataset_name: str, skip_broken: bool = False) -> list[Sample]:
    """Samples of one split folder, or the one sample a file belongs to (original pids).

    ``path`` is a split folder in the dataset's layout (``RGBNT201/test``,
    ``RGBNT100/rgbir/query``, ``msvr310/query3``) or one file of a capture (any modality). The
    pid, camera and scene come from the names, by the same rules as :func:`build_dataset`.
    """
    name = _dataset_name(dataset_name)
    path = Path(path)
    problems = _Problems(name, skip_broken)
    if path.is_dir():
        split_dir, wanted = path, None
    elif path.is_file():
        first = Path(triplet_paths(path, name)[0])
        split_dir = {"RGBNT201": first.parent.parent, "RGBNT100": first.parent}.get(name, first.parents[2])
        wanted = str(first)
    else:
        raise DatasetError(f"{path} does not exist")
    if name == "RGBNT201":
        samples = _parse_rgbnt201(split_dir, problems)
    elif name == "RGBNT100":
        samples = _parse_rgbnt100(split_dir, problems, [])
    else:
        samples = _parse_msvr310(split_dir, problems)
    problems.finish()
    if wanted is not None:
        samples = [s for s in samples if s.paths[0] == wanted]
        if not samples:
            raise DatasetError(f"{path}: no {name} triplet of that name parses in {split_dir}")
    return _non_empty(samples, split_dir, name)
