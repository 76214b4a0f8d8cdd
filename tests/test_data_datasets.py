"""Parsers on synthetic trees of the three layouts: counts, ids, cameras, scenes, and every error."""

from __future__ import annotations

import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mambapro.data import (
    DatasetError,
    ImageReadError,
    Sample,
    build_dataset,
    read_triplet,
    split_validation,
    synth,
)

NAMES = {"rgbnt201": "RGBNT201", "rgbnt100": "RGBNT100", "msvr310": "MSVR310"}
PARAMS = dict(seed=3, ids=6, test_ids=3, cameras=3, shots=2, scenes=2)


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for layout in NAMES:
        synth.generate(layout, root, **PARAMS)
    return root


@pytest.fixture
def tiny(tmp_path: Path):
    """A fresh, smallest valid tree of one layout, for tests that break it."""

    def make(layout: str) -> Path:
        synth.generate(layout, tmp_path, seed=1, ids=3, test_ids=1, cameras=2, shots=2, scenes=2)
        return tmp_path

    return make


def _expected(root: Path, layout: str, split: str) -> Counter:
    """(pid, camid, sceneid) multiset of a split, from the generator's own record."""
    meta = synth.load_meta(layout, root)
    out: Counter = Counter()
    for c in meta["captures"]:
        if c["split"] != split.replace("query", "test").replace("gallery", "test"):
            continue
        if split == "query" and not c["query"]:
            continue
        scene = c["scene"] + 1 if layout == "msvr310" else -1
        out[(c["pid"], c["camid"], scene)] += 1
    return out


@pytest.mark.parametrize("layout", list(NAMES))
def test_parser_matches_generated_tree(trees: Path, layout: str) -> None:
    ds = build_dataset(NAMES[layout].lower(), trees)  # names are case-insensitive
    assert ds.name == NAMES[layout]
    n_train = PARAMS["ids"] - PARAMS["test_ids"]
    per_id = PARAMS["cameras"] * PARAMS["shots"]
    assert len(ds.train) == n_train * per_id
    assert len(ds.gallery) == PARAMS["test_ids"] * per_id
    # RGBNT201 queries are the whole test folder; the others hold one shot per id and camera.
    n_query = PARAMS["test_ids"] * (per_id if layout == "rgbnt201" else PARAMS["cameras"])
    assert len(ds.query) == n_query
    assert ds.num_train_pids == n_train
    assert ds.num_train_cams == PARAMS["cameras"]

    # Train pids are relabelled 0..K-1 in sorted order of the original ids (1..n_train here).
    train = Counter((s.pid + 1, s.camid, s.sceneid) for s in ds.train)
    assert train == _expected(trees, layout, "train")
    for split in ("query", "gallery"):
        got = Counter((s.pid, s.camid, s.sceneid) for s in getattr(ds, split))
        assert got == _expected(trees, layout, split)
    scenes = {s.sceneid for s in ds.gallery}
    assert scenes == ({1, 2} if layout == "msvr310" else {-1})

    n_paths = 1 if layout == "rgbnt100" else 3
    assert all(len(s.paths) == n_paths and Path(s.paths[0]).is_file() for s in ds.train)


@pytest.mark.parametrize("layout", list(NAMES))
def test_read_triplet_geometry(trees: Path, layout: str) -> None:
    ds = build_dataset(NAMES[layout], trees)
    imgs = read_triplet(ds.query[0], ds.name)
    size = (128, 256) if layout == "rgbnt201" else (256, 128)  # PIL sizes are (W, H)
    assert [im.size for im in imgs] == [size] * 3
    assert all(im.mode == "RGB" for im in imgs)


def test_table(trees: Path) -> None:
    text = str(build_dataset("MSVR310", trees))
    rows = {
        line.split("|")[0].strip(): [int(x) for x in line.split("|")[1:]] for line in text.splitlines()[4:7]
    }
    # ids, triplets, cameras, scenes
    assert rows["train"] == [3, 18, 3, 2]
    assert rows["query"] == [3, 9, 3, 1]
    assert rows["gallery"] == [3, 18, 3, 2]


def test_rgbnt100_panels_are_cropped(tmp_path: Path) -> None:
    colours = [(200, 10, 10), (90, 90, 90), (250, 250, 250)]
    arr = np.concatenate([np.full((128, 256, 3), c, np.uint8) for c in colours], axis=1)
    path = tmp_path / "0001_c001_0000.png"
    Image.fromarray(arr).save(path)
    imgs = read_triplet(Sample((str(path),), 1, 0, -1), "RGBNT100")
    for im, c in zip(imgs, colours):
        assert im.size == (256, 128)
        assert np.array_equal(np.unique(np.asarray(im).reshape(-1, 3), axis=0), np.array([c]))


def test_rgbnt100_wrong_width(tmp_path: Path) -> None:
    path = tmp_path / "0001_c001_0000.png"
    Image.fromarray(np.zeros((128, 500, 3), np.uint8)).save(path)
    with pytest.raises(ImageReadError, match=r"0001_c001_0000\.png.*500x128"):
        read_triplet(Sample((str(path),), 1, 0, -1), "RGBNT100")


# --------------------------------------------------------------------------- errors


def test_unknown_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="'market'.*RGBNT201"):
        build_dataset("market", tmp_path)


def test_missing_root_lists_parent(tmp_path: Path) -> None:
    (tmp_path / "something_else").mkdir()
    with pytest.raises(DatasetError, match=r"RGBNT201 dataset folder not found: .*RGBNT201.*something_else/"):
        build_dataset("RGBNT201", tmp_path)


def test_missing_split_folder(tiny) -> None:
    root = tiny("rgbnt100")
    shutil.rmtree(root / "RGBNT100/rgbir/query")
    with pytest.raises(DatasetError, match=r"split folder not found: .*rgbir/query; .*bounding_box_test/"):
        build_dataset("RGBNT100", root)


@pytest.mark.parametrize("modality", ["NI", "TI"])
def test_missing_modality_file_is_named(tiny, modality: str) -> None:
    root = tiny("rgbnt201")
    victim = sorted((root / "RGBNT201/train_171" / modality).iterdir())[1]
    victim.unlink()
    with pytest.raises(DatasetError, match=f"1 broken triplet.*missing {victim}"):
        build_dataset("RGBNT201", root)


def test_missing_msvr310_thermal_file(tiny) -> None:
    root = tiny("msvr310")
    victim = sorted((root / "msvr310/bounding_box_test").glob("*/th/*.jpg"))[0]
    victim.unlink()
    with pytest.raises(DatasetError, match=f"missing {victim}"):
        build_dataset("msvr310", root)


def test_orphan_modality_file(tiny) -> None:
    root = tiny("rgbnt201")
    rgb = sorted((root / "RGBNT201/test/RGB").iterdir())[0]
    rgb.unlink()
    with pytest.raises(DatasetError, match=f"has no RGB partner {rgb}"):
        build_dataset("RGBNT201", root)


def test_unparseable_name(tiny) -> None:
    root = tiny("rgbnt201")
    for m in ("RGB", "NI", "TI"):
        folder = root / "RGBNT201/train_171" / m
        sorted(folder.iterdir())[0].rename(folder / "person7_front.jpg")
    with pytest.raises(DatasetError, match=r"person7_front\.jpg: name does not parse"):
        build_dataset("RGBNT201", root)


def test_rgbnt100_bad_names(tiny) -> None:
    root = tiny("rgbnt100")
    split = root / "RGBNT100/rgbir/bounding_box_train"
    files = sorted(split.iterdir())
    files[0].rename(split / "0001_c009_0000.jpg")
    files[1].rename(split / "car.jpg")
    with pytest.raises(DatasetError, match=r"2 broken triplet.*camera c9 out of range") as err:
        build_dataset("RGBNT100", root)
    assert "car.jpg: name does not parse" in str(err.value)


def test_msvr310_pid_must_match_folder(tiny) -> None:
    root = tiny("msvr310")
    vid = sorted((root / "msvr310/bounding_box_train").iterdir())[0]
    for m in ("vis", "ni", "th"):
        f = sorted((vid / m).iterdir())[0]
        f.rename(f.with_name("0999" + f.name[4:]))
    with pytest.raises(DatasetError, match=f"pid 0999 in the name differs from its folder {vid.name}"):
        build_dataset("MSVR310", root)


def test_truncated_image(tiny) -> None:
    root = tiny("rgbnt201")
    victim = sorted((root / "RGBNT201/test/TI").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:600])
    with pytest.raises(DatasetError, match=f"cannot read image {victim}"):
        build_dataset("RGBNT201", root, verify=True)
    # Without verify the parser is lazy; the error comes when the triplet is decoded.
    ds = build_dataset("RGBNT201", root)
    sample = next(s for s in ds.query if s.paths[2] == str(victim))
    with pytest.raises(ImageReadError, match=f"cannot read image {victim}"):
        read_triplet(sample, "RGBNT201")


def test_garbage_image(tiny) -> None:
    root = tiny("rgbnt100")
    victim = sorted((root / "RGBNT100/rgbir/bounding_box_train").iterdir())[0]
    victim.write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetError, match=f"cannot read image {victim}"):
        build_dataset("RGBNT100", root, verify=True)


def test_empty_split(tiny) -> None:
    root = tiny("rgbnt201")
    for m in ("RGB", "NI", "TI"):
        for f in (root / "RGBNT201/train_171" / m).iterdir():
            f.unlink()
    with pytest.raises(DatasetError, match=r"train_171 has no usable triplets"):
        build_dataset("RGBNT201", root)


def test_skip_broken_warns_with_count(tiny) -> None:
    root = tiny("rgbnt201")
    full = build_dataset("RGBNT201", root)
    ni = sorted((root / "RGBNT201/train_171/NI").iterdir())
    ni[0].unlink()
    ni[3].unlink()
    with pytest.warns(UserWarning, match="skipped 2 broken triplet"):
        ds = build_dataset("RGBNT201", root, skip_broken=True)
    assert len(ds.train) == len(full.train) - 2
    assert sorted(Path(p).name for p, _ in ds.skipped) == sorted([ni[0].name, ni[3].name])


def test_skip_broken_with_verify_drops_truncated(tiny) -> None:
    root = tiny("msvr310")
    victim = sorted((root / "msvr310/bounding_box_test").glob("*/ni/*.jpg"))[-1]
    victim.write_bytes(victim.read_bytes()[:500])
    full_gallery = len(build_dataset("MSVR310", root).gallery)
    with pytest.warns(UserWarning, match="skipped 1 broken triplet"):
        ds = build_dataset("MSVR310", root, skip_broken=True, verify=True)
    assert len(ds.gallery) == full_gallery - 1
    assert all(str(victim) not in s.paths for s in ds.gallery)


def test_stray_files_are_reported(tiny) -> None:
    root = tiny("rgbnt100")
    (root / "RGBNT100/rgbir/query/notes.txt").write_text("x")
    with pytest.warns(UserWarning, match=r"ignored 1 non-image file.*notes\.txt"):
        build_dataset("RGBNT100", root)


def test_clean_tree_builds_without_warnings(trees: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in NAMES.values():
            build_dataset(name, trees, verify=True)


# --------------------------------------------------------------------------- validation split


def _samples(spec: dict[int, list[int]]) -> list[Sample]:
    """Samples from {pid: [camid of each sample]}."""
    return [
        Sample((f"{pid}_{i}.jpg",), pid, cam, -1) for pid, cams in spec.items() for i, cam in enumerate(cams)
    ]


def test_split_validation() -> None:
    spec = {
        10: [0, 0, 1, 1, 2],
        11: [0, 1],  # two cameras, one sample each: only one query can keep a match
        12: [3, 3, 3],  # a single camera: never chosen while multi-camera ids remain
        13: [0, 1, 1],
        14: [2, 0],
        15: [1, 2, 2, 0],
    }
    samples = _samples(spec)
    train, query, gallery = split_validation(samples, val_ids=5, seed=0)
    held = {s.pid for s in query} | {s.pid for s in gallery}
    assert held == {10, 11, 13, 14, 15}
    assert sorted(s.pid for s in train) == [0, 0, 0]  # pid 12 relabelled to 0
    assert Counter(s.paths for s in query + gallery) == Counter(s.paths for s in samples if s.pid in held)
    for q in query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in gallery)
    q_cams = {pid: sorted(s.camid for s in query if s.pid == pid) for pid in held}
    assert q_cams[10] == [0, 1, 2]  # one query per camera when the others keep matches
    assert len(q_cams[15]) == 2  # a third query would leave only its own camera in the gallery
    assert len(q_cams[11]) == len(q_cams[14]) == 1
    assert split_validation(samples, 5, seed=0) == (train, query, gallery)
    with pytest.raises(ValueError, match="val_ids = 6 must be in 1..5"):
        split_validation(samples, 6, seed=0)


@pytest.mark.parametrize("layout", list(NAMES))
def test_samples_at_a_split_folder_and_a_single_file(trees: Path, layout: str) -> None:
    from mambapro.data import samples_at, triplet_paths

    name = NAMES[layout]
    ds = build_dataset(name, trees)
    split_dir = Path(ds.query[0].paths[0]).parent
    split_dir = {"RGBNT201": split_dir.parent, "RGBNT100": split_dir}.get(name, split_dir.parent.parent)
    assert samples_at(split_dir, name) == ds.query
    target = ds.query[-1]
    assert triplet_paths(target.paths[-1], name) == target.paths  # any modality file names the triplet
    assert samples_at(target.paths[-1], name) == [target]


def test_samples_at_errors_name_the_path(trees: Path, tmp_path: Path) -> None:
    from mambapro.data import samples_at, triplet_paths

    with pytest.raises(DatasetError, match="does_not_exist"):
        samples_at(tmp_path / "does_not_exist", "RGBNT201")
    stray = tmp_path / "elsewhere" / "x.jpg"
    stray.parent.mkdir()
    stray.write_bytes(b"")
    with pytest.raises(DatasetError, match="x.jpg is not a RGBNT201 modality file"):
        triplet_paths(stray, "rgbnt201")
