"""Parsers on synthetic trees of the three layouts (counts, ids, cameras, scenes, and every error)
and on file names typed out in the published datasets' naming, with hand-written pids, cameras
and scenes."""

from __future__ import annotations

import re
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
    samples_at,
    split_validation,
    synth,
)
from mambapro.errors import ConfigError

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
    with pytest.raises(ConfigError, match="'market'.*RGBNT201"):
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
    with pytest.raises(DatasetError, match=r"2 broken triplet.*camera 9 out of range 1\.\.8") as err:
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
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) * 3 // 4])  # the header is intact, the pixels are not
    with pytest.raises(DatasetError, match=f"cannot read image {victim}"):
        build_dataset("RGBNT201", root, verify=True)
    # skip_broken decodes everything so that it can skip what is broken.
    with pytest.warns(UserWarning, match="skipped 1 broken triplet"):
        skipping = build_dataset("RGBNT201", root, skip_broken=True)
    assert [f for f, _ in skipping.skipped] == [sorted((root / "RGBNT201/test/RGB").iterdir())[0].as_posix()]
    # Without verify only the headers are read; the error comes when the triplet is decoded.
    ds = build_dataset("RGBNT201", root)
    sample = next(s for s in ds.query if s.paths[2] == str(victim))
    with pytest.raises(ImageReadError, match=f"cannot read image {victim}"):
        read_triplet(sample, "RGBNT201")


def test_headers_are_always_read(tiny) -> None:
    # An empty file or a cut-off header is found when the dataset is parsed, verify or not, so
    # training is refused before its run folder exists.
    root = tiny("rgbnt201")
    victim = sorted((root / "RGBNT201/train_171/NI").iterdir())[0]
    victim.write_bytes(b"")
    with pytest.raises(DatasetError, match=f"1 broken triplet.*cannot read image {victim}"):
        build_dataset("RGBNT201", root)


def test_far_smaller_sibling_is_named(tiny) -> None:
    root = tiny("rgbnt201")
    victim = sorted((root / "RGBNT201/test/TI").iterdir())[0]
    with Image.open(victim) as img:
        img.resize((img.width // 4, img.height // 4)).save(victim)
    with pytest.warns(UserWarning, match=f"1 triplet.*far smaller than its siblings.*{victim}"):
        ds = build_dataset("RGBNT201", root)
    assert any(s.paths[2] == str(victim) for s in ds.gallery)  # kept: it is usable, only odd


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
    full_gallery = len(build_dataset("MSVR310", root).gallery)
    victim.write_bytes(victim.read_bytes()[:500])
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
    with pytest.raises(ConfigError, match=r"^'data.val_ids' = 6 must be in 1..5: the training set has 6"):
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


# --------------------------------------------------------------------------- published names
# File names typed out in the published datasets' naming and folder layout, each with
# its pid, camera and scene written by hand as the authors' release parsers read them
# (data/datasets/RGBNT201.py, RGBNT100.py, msvr310.py of the release):
#   RGBNT201  pid = int(name.split("_")[0][0:6]), camid = int(name.split("_")[1][3]) - 1
#   RGBNT100  pid, cam = re.search(r"([-\d]+)_c([-\d]+)", ...).groups(), camid = cam - 1
#   MSVR310   pid = int(name[0:4]), sceneid = int(name[6:9]), camid = int(name[11])
# Query and gallery keep the original pids; training pids are relabelled 0..K-1 in sorted order.

# (split folder, file name, pid, camid)
RGBNT201_NAMES = [
    ("train_171", "000001_cam1_0_00.jpg", 1, 0),
    ("train_171", "000001_cam3_2_15.jpg", 1, 2),
    ("train_171", "000171_cam4_1_07.jpg", 171, 3),
    ("train_171", "000064_cam2_0_31.jpg", 64, 1),
    ("test", "000258_cam1_0_00.jpg", 258, 0),
    ("test", "000258_cam2_0_03.jpg", 258, 1),
    ("test", "000302_cam1_1_12.jpg", 302, 0),
]
# (split folder, file name, pid, camid); the query folder holds copies of gallery images.
RGBNT100_NAMES = [
    ("bounding_box_train", "0001_c0001_003.jpg", 1, 0),
    ("bounding_box_train", "0001_c0004_012.jpg", 1, 3),
    ("bounding_box_train", "0050_c0008_000.jpg", 50, 7),
    ("bounding_box_train", "0023_c0006_117.jpg", 23, 5),
    ("query", "0501_c0001_000.jpg", 501, 0),
    ("bounding_box_test", "0501_c0001_000.jpg", 501, 0),
    ("bounding_box_test", "0501_c0002_005.jpg", 501, 1),
    ("bounding_box_test", "0600_c0008_010.jpg", 600, 7),
]
# (split folder, vehicle folder, file name, pid, camid, sceneid); cameras in names are 0-based.
MSVR310_NAMES = [
    ("bounding_box_train", "0002", "0002_s002_v0_000.jpg", 2, 0, 2),
    ("bounding_box_train", "0002", "0002_s015_v3_021.jpg", 2, 3, 15),
    ("bounding_box_train", "0155", "0155_s001_v7_004.jpg", 155, 7, 1),
    ("query3", "0156", "0156_s020_v1_000.jpg", 156, 1, 20),
    ("bounding_box_test", "0156", "0156_s020_v1_000.jpg", 156, 1, 20),
    ("bounding_box_test", "0156", "0156_s021_v5_003.jpg", 156, 5, 21),
    ("bounding_box_test", "0310", "0310_s100_v2_001.jpg", 310, 2, 100),
]


def _tiny_jpeg(path: Path, size: tuple[int, int] = (4, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path)


def _by_split(ds, base: Path, split_dirs: dict[str, str]) -> dict[str, set]:
    """{split folder: {(relative path of the first file, pid, camid, sceneid)}} of a dataset."""
    out: dict[str, set] = {}
    for split, folder in split_dirs.items():
        rows = {
            (str(Path(s.paths[0]).relative_to(base)), s.pid, s.camid, s.sceneid) for s in getattr(ds, split)
        }
        out.setdefault(folder, set()).update(rows)
    return out


def test_published_rgbnt201_names(tmp_path: Path) -> None:
    base = tmp_path / "RGBNT201"
    for split, name, _, _ in RGBNT201_NAMES:
        for m in ("RGB", "NI", "TI"):
            _tiny_jpeg(base / split / m / name)
    ds = build_dataset("RGBNT201", tmp_path)
    train_label = {1: 0, 64: 1, 171: 2}  # sorted original training pids
    expected = {
        "train_171": {
            (f"train_171/RGB/{n}", train_label[pid], cam, -1)
            for s, n, pid, cam in RGBNT201_NAMES
            if s == "train_171"
        },
        "test": {(f"test/RGB/{n}", pid, cam, -1) for s, n, pid, cam in RGBNT201_NAMES if s == "test"},
    }
    splits = {"train": "train_171", "query": "test", "gallery": "test"}
    assert _by_split(ds, base, splits) == expected
    assert {s.paths for s in ds.query} == {
        tuple(str(base / "test" / m / n) for m in ("RGB", "NI", "TI"))
        for s, n, _, _ in RGBNT201_NAMES
        if s == "test"
    }
    assert ds.num_train_cams == 4  # cameras cam1-cam4 of the training names
    # A single file names its triplet with the original pid.
    (only,) = samples_at(base / "train_171" / "TI" / "000171_cam4_1_07.jpg", "RGBNT201")
    assert (only.pid, only.camid, only.sceneid) == (171, 3, -1)


def test_published_rgbnt100_names(tmp_path: Path) -> None:
    base = tmp_path / "RGBNT100" / "rgbir"
    for split, name, _, _ in RGBNT100_NAMES:
        _tiny_jpeg(base / split / name, (12, 4))  # RGB, NI, TI side by side
    ds = build_dataset("RGBNT100", tmp_path)
    train_label = {1: 0, 23: 1, 50: 2}
    expected: dict[str, set] = {"bounding_box_train": set(), "query": set(), "bounding_box_test": set()}
    for split, name, pid, cam in RGBNT100_NAMES:
        label = train_label[pid] if split == "bounding_box_train" else pid
        expected[split].add((f"{split}/{name}", label, cam, -1))
    splits = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    assert _by_split(ds, base, splits) == expected
    assert all(len(s.paths) == 1 for s in ds.train + ds.query + ds.gallery)
    assert [(s.pid, s.camid) for s in samples_at(base / "bounding_box_train", "RGBNT100")] == [
        (1, 0),
        (1, 3),
        (23, 5),
        (50, 7),
    ]


def test_published_msvr310_names(tmp_path: Path) -> None:
    base = tmp_path / "msvr310"
    for split, vid, name, *_ in MSVR310_NAMES:
        for m in ("vis", "ni", "th"):
            _tiny_jpeg(base / split / vid / m / name, (8, 4))
    ds = build_dataset("MSVR310", tmp_path)
    train_label = {2: 0, 155: 1}
    expected: dict[str, set] = {"bounding_box_train": set(), "query3": set(), "bounding_box_test": set()}
    for split, vid, name, pid, cam, scene in MSVR310_NAMES:
        label = train_label[pid] if split == "bounding_box_train" else pid
        expected[split].add((f"{split}/{vid}/vis/{name}", label, cam, scene))
    splits = {"train": "bounding_box_train", "query": "query3", "gallery": "bounding_box_test"}
    assert _by_split(ds, base, splits) == expected
    (q,) = ds.query
    assert q.paths == tuple(
        str(base / "query3" / "0156" / m / "0156_s020_v1_000.jpg") for m in ("vis", "ni", "th")
    )
    assert ds.num_train_cams == 3  # v0, v3, v7


def test_published_names_follow_the_release_rules() -> None:
    """The hand-written expectations above agree with the release's parsing expressions."""
    for _, name, pid, cam in RGBNT201_NAMES:
        assert (int(name.split("_")[0][0:6]), int(name.split("_")[1][3]) - 1) == (pid, cam), name
    for _, name, pid, cam in RGBNT100_NAMES:
        rpid, rcam = map(int, re.search(r"([-\d]+)_c([-\d]+)", name).groups())
        assert (rpid, rcam - 1) == (pid, cam), name
    for _, vid, name, pid, cam, scene in MSVR310_NAMES:
        assert (int(name[0:4]), int(name[11]), int(name[6:9]), int(vid)) == (pid, cam, scene, pid), name
