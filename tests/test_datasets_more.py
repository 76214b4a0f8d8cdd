"""WMVEID863, Market1501-MM and RGBN300: file names typed out in each dataset's naming, with
hand-written pids, cameras and night flags, parsed by the real parsers; Market's junk and
distractor rule; the comparison with the published split sizes; the generator's trees of the
three layouts; and their preset configs.

The expectations follow the public loaders, whose rules are restated in
``test_names_follow_the_public_loaders``:

  WMVEID863      pid = int(identity folder), cam = re.search('v+\\d', name), night =
                 re.search('n+\\d', name) (the dataset authors' datasets/WMVEID863.py)
  Market1501-MM  pid, cam = re.search(r'([-\\d]+)_c(\\d)', name), camid = cam - 1; pid -1 junk
                 (torchreid market1501.py, 924973292/EDITOR market_to_RGBNT201.py)
  RGBN300        pid, cam = re.search(r'([-\\d]+)_c([-\\d]+)', name), camid = cam - 1
                 (lsh-ahu/ICPL-ReID datasets/RGBN300.py)
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mambapro.cli import main
from mambapro.config import load_config
from mambapro.data import DatasetError, ReIDDataset, Sample, build_dataset, read_triplet, samples_at, synth
from mambapro.data.published import (
    condition_counts,
    condition_groups,
    published_differences,
    published_report,
    split_sizes,
    warn_published_differences,
)
from mambapro.data.specs import dataset_spec
from mambapro.modalities import RGB_NI_TI, ModalitySet

# (split folder, vehicle folder, file name, pid, camid, night); cameras in names are 0-based.
WMVEID863_NAMES = [
    ("train", "0003", "v1_n0_s001_0001.jpg", 3, 1, "0"),
    ("train", "0003", "v6_n1_s002_0005.jpg", 3, 6, "1"),
    ("train", "0800", "v0_n1_s005_0002.jpg", 800, 0, "1"),
    ("query", "0863", "v7_n1_s010_0001.jpg", 863, 7, "1"),
    ("test", "0863", "v2_n0_s011_0003.jpg", 863, 2, "0"),
    ("test", "0612", "v4_n1_s003_0001.jpg", 612, 4, "1"),
]
# (split folder, file name, pid, camid); -1 is junk, 0000 a distractor.
MARKET_NAMES = [
    ("train", "0002_c1s1_000451_03.jpg", 2, 0),
    ("train", "0002_c2s1_000301_01.jpg", 2, 1),
    ("train", "1500_c6s3_086567_01.jpg", 1500, 5),
    ("query", "0001_c1s1_001051_00.jpg", 1, 0),
    ("gallery", "0001_c2s1_000301_01.jpg", 1, 1),
    ("gallery", "0001_c5s1_000176_04.jpg", 1, 4),
    ("gallery", "0000_c3s1_000151_01.jpg", 0, 2),
    ("gallery", "-1_c1s1_000401_03.jpg", -1, 0),
]
# (split folder, file name, pid, camid); RGB and NI side by side.
RGBN300_NAMES = [
    ("bounding_box_train", "0001_c0001_003.jpg", 1, 0),
    ("bounding_box_train", "0001_c0005_012.jpg", 1, 4),
    ("bounding_box_train", "0150_c0008_000.jpg", 150, 7),
    ("query", "0300_c0002_000.jpg", 300, 1),
    ("bounding_box_test", "0300_c0002_000.jpg", 300, 1),
    ("bounding_box_test", "0151_c0007_041.jpg", 151, 6),
]


def _tiny_jpeg(
    path: Path, size: tuple[int, int] = (4, 8), color: tuple[int, int, int] = (90, 120, 150)
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _wmveid863_tree(root: Path) -> Path:
    base = root / "WMVEID863"
    for split, vid, name, *_ in WMVEID863_NAMES:
        for m in ("vis", "ni", "th"):
            _tiny_jpeg(base / split / vid / m / name, (8, 4))
    return base


def _market_tree(root: Path) -> Path:
    base = root / "Market1501-MM"
    for split, name, *_ in MARKET_NAMES:
        for m in ("RGB", "NI", "TI"):
            _tiny_jpeg(base / split / m / name)
    return base


def _rows(samples: list[Sample]) -> set[tuple[str, int, int]]:
    return {(Path(s.paths[0]).name, s.pid, s.camid) for s in samples}


# ------------------------------------------------------------------------ WMVEID863


def test_wmveid863_names_parse_with_folder_pids_cameras_and_night(tmp_path: Path) -> None:
    base = _wmveid863_tree(tmp_path)
    ds = build_dataset("wmveid863", tmp_path)
    label = {3: 0, 800: 1}  # training pids relabelled in sorted order
    folders = {"train": "train", "query": "query", "gallery": "test"}
    rows = {
        split: {(n, label[p] if split == "train" else p, c) for t, _, n, p, c, _ in WMVEID863_NAMES if t == f}
        for split, f in folders.items()
    }
    assert {split: _rows(getattr(ds, split)) for split in rows} == rows
    assert all(s.sceneid == -1 for s in ds.train + ds.query + ds.gallery)  # same-camera protocol
    assert not ds.has_scenes and ds.num_train_cams == 3  # v0, v1, v6
    (q,) = ds.query
    assert q.paths == tuple(
        str(base / "query" / "0863" / m / "v7_n1_s010_0001.jpg") for m in ("vis", "ni", "th")
    )
    # The night flag of each capture, per split, from the names.
    assert condition_groups(ds.spec) == ("night",)
    counts = condition_counts(ds)["night"]
    assert (counts["train"], counts["query"], counts["gallery"]) == (
        {"0": 1, "1": 2},
        {"1": 1},
        {"0": 1, "1": 1},
    )
    # One file names its capture, the pid from its identity folder.
    (one,) = samples_at(base / "test" / "0612" / "th" / "v4_n1_s003_0001.jpg", "WMVEID863")
    assert (one.pid, one.camid) == (612, 4)


def test_wmveid863_names_that_do_not_fit_are_named(tmp_path: Path) -> None:
    base = _wmveid863_tree(tmp_path)
    for m in ("vis", "ni", "th"):
        _tiny_jpeg(base / "train" / "0003" / m / "0004_v2_n0_s001_0001.jpg", (8, 4))  # pid of another folder
        _tiny_jpeg(base / "train" / "0003" / m / "x2_s001_0002.jpg", (8, 4))  # no camera
        _tiny_jpeg(base / "train" / "0003" / m / "v8_n0_s001_0003.jpg", (8, 4))  # camera 8 of 0-7
    with pytest.raises(DatasetError) as err:
        build_dataset("WMVEID863", tmp_path)
    msg = str(err.value)
    assert "3 broken triplet(s)" in msg
    assert "pid 0004 in the name differs from its folder 0003" in msg
    assert "x2_s001_0002.jpg: name does not parse as" in msg
    assert "camera 8 out of range 0..7" in msg


# ------------------------------------------------------------------------ Market1501-MM


def test_market_names_junk_and_distractors(tmp_path: Path) -> None:
    _market_tree(tmp_path)
    with pytest.warns(UserWarning, match="left out 1 junk image"):
        ds = build_dataset("Market1501-MM", tmp_path)
    label = {2: 0, 1500: 1}
    for split in ("train", "query", "gallery"):
        want = {
            (n, label[p] if split == "train" else p, c)
            for s, n, p, c in MARKET_NAMES
            if s == split and p != -1
        }
        assert _rows(getattr(ds, split)) == want, split
    # pid -1: junk, left out and listed; pid 0: a distractor, kept in the gallery as a negative.
    assert [Path(f).name for f, _ in ds.junk] == ["-1_c1s1_000401_03.jpg"]
    assert "junk image (pid -1)" in ds.junk[0][1]
    assert any(s.pid == 0 and s.camid == 2 for s in ds.gallery)
    assert split_sizes(ds)["gallery"] == (2, 3, 3)  # pid 1 and the distractor group 0
    assert ds.num_train_cams == 3 and ds.query[0].paths[2].endswith("TI/0001_c1s1_001051_00.jpg")


def test_junk_pids_come_from_the_spec(tmp_path: Path) -> None:
    _market_tree(tmp_path)
    both = dataclasses.replace(dataset_spec("Market1501-MM"), junk_pids=(-1, 0))
    with pytest.warns(UserWarning, match="left out 2 junk image"):
        ds = build_dataset(both, tmp_path)
    assert {s.pid for s in ds.gallery} == {1}
    assert sorted(Path(f).name for f, _ in ds.junk) == ["-1_c1s1_000401_03.jpg", "0000_c3s1_000151_01.jpg"]


# ------------------------------------------------------------------------ RGBN300


def test_rgbn300_names_and_two_panels(tmp_path: Path) -> None:
    base = tmp_path / "RGBN300" / "rgbir"
    for split, name, *_ in RGBN300_NAMES:
        _tiny_jpeg(base / split / name, (8, 4))  # RGB and NI side by side: two 4x4 panels
    ds = build_dataset("RGBN300", tmp_path)
    label = {1: 0, 150: 1}
    for split, folder in (
        ("train", "bounding_box_train"),
        ("query", "query"),
        ("gallery", "bounding_box_test"),
    ):
        want = {(n, label[p] if split == "train" else p, c) for s, n, p, c in RGBN300_NAMES if s == folder}
        assert _rows(getattr(ds, split)) == want, split
    assert ds.modalities == ModalitySet.of(("RGB", "NI")) and all(len(s.paths) == 1 for s in ds.train)
    assert [im.size for im in read_triplet(ds.query[0], "RGBN300")] == [(4, 4), (4, 4)]


def test_rgbn300_three_panel_image_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "RGBN300" / "rgbir"
    for split, name, *_ in RGBN300_NAMES:
        _tiny_jpeg(base / split / name, (8, 4))
    _tiny_jpeg(base / "bounding_box_train" / "0002_c0001_000.jpg", (9, 4))  # width not 2 x panel
    with pytest.raises(DatasetError, match="two modality panels side by side"):
        build_dataset("RGBN300", tmp_path)


def test_names_follow_the_public_loaders() -> None:
    """The hand-written expectations agree with the public loaders' parsing expressions."""
    for _, vid, name, pid, cam, night in WMVEID863_NAMES:
        release = (int(vid), int(re.search(r"v+\d", name).group(0)[1]), re.search(r"n+\d", name).group(0)[1])
        assert release == (pid, cam, night), name
    for _, name, pid, cam in MARKET_NAMES:
        rpid, rcam = map(int, re.search(r"([-\d]+)_c(\d)", name).groups())
        assert (rpid, rcam - 1) == (pid, cam), name
    for _, name, pid, cam in RGBN300_NAMES:
        rpid, rcam = map(int, re.search(r"([-\d]+)_c([-\d]+)", name).groups())
        assert (rpid, rcam - 1) == (pid, cam), name


# ------------------------------------------------------------------------ published split sizes


def _dataset(root: Path, published: dict | None) -> ReIDDataset:
    """A dataset of 2 train ids (3 captures, 2 cameras), query 1/1/1 and gallery 2/2/2."""
    spec = dataclasses.replace(dataset_spec("MSVR310"), published_splits=published, source="a paper")

    def s(pid: int, cam: int) -> Sample:
        return Sample((f"{root}/{pid:04d}_s001_v{cam}_000.jpg",), pid, cam, 1)

    return ReIDDataset(
        "MSVR310", root, [s(0, 0), s(0, 1), s(1, 1)], [s(7, 0)], [s(7, 1), s(8, 2)], source_spec=spec
    )


def test_published_sizes_match_or_name_the_differing_split(tmp_path: Path) -> None:
    same = {"train": (2, 3, 2), "query": (1, 1, None), "gallery": (2, 2, 2)}
    ds = _dataset(tmp_path, same)
    lines = published_report(ds)
    assert lines[0] == "published split sizes (a paper):"
    assert lines[1:] == [
        "  train: 2 identities, 3 captures, 2 cameras: as published",
        "  query: 1 identities, 1 captures: as published (cameras not published)",
        "  gallery: 2 identities, 2 captures, 2 cameras: as published",
    ]
    assert published_differences(ds) == []

    ds = _dataset(tmp_path, {**same, "gallery": (2, 5, 3)})
    assert published_differences(ds) == [
        "MSVR310 gallery: differs: captures 2 here, 5 published; cameras 2 here, 3 published"
    ]
    assert (
        "  gallery: differs: captures 2 here, 5 published; cameras 2 here, 3 published"
        in published_report(ds)
    )
    with pytest.warns(
        UserWarning, match=r"MSVR310 gallery: differs: captures 2 here, 5 published.*\(published: a paper\)"
    ):
        assert warn_published_differences(ds) == published_differences(ds)


def test_unpublished_and_synthetic_trees_are_not_compared(tmp_path: Path) -> None:
    assert published_report(_dataset(tmp_path, None)) == ["published split sizes: none recorded for MSVR310"]
    (tmp_path / "synth_meta.json").write_text("{}")
    ds = _dataset(tmp_path, {"train": (9, 9, 9)})
    assert "is a synthetic tree" in published_report(ds)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_published_differences(ds) == []


def test_check_data_prints_the_comparison(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _market_tree(tmp_path)
    assert main(["check-data", "-q", "--data-root", str(tmp_path), "data.dataset=Market1501-MM"]) == 0
    out = capsys.readouterr().out
    assert "published split sizes (Zheng et al., Scalable Person Re-identification" in out
    assert "  train: differs: identities 2 here, 751 published; captures 3 here, 12936 published; " in out
    assert "cameras 3 here, 6 published" in out


def test_check_data_counts_night_captures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _wmveid863_tree(tmp_path)
    assert main(["check-data", "-q", "--data-root", str(tmp_path), "data.dataset=wmveid863"]) == 0
    out = capsys.readouterr().out
    assert "published split sizes: none recorded for WMVEID863" in out
    assert "capture conditions in the file names:\n  train: night=0 1, night=1 2\n  query: night=1 1\n" in out


# ------------------------------------------------------------------------ generator and presets


@pytest.mark.parametrize("name", ["WMVEID863", "Market1501-MM", "RGBN300"])
def test_generator_writes_each_new_layout(tmp_path: Path, name: str) -> None:
    root = synth.generate(name.lower(), tmp_path, seed=2, ids=3, test_ids=1, cameras=2, shots=2)
    assert root == tmp_path / dataset_spec(name).folder
    ds = build_dataset(name, tmp_path)
    assert (ds.num_train_pids, len(ds.train), ds.num_train_cams, len(ds.gallery)) == (2, 8, 2, 4)
    meta = synth.load_meta(name, tmp_path)
    assert {(c["pid"], c["camid"]) for c in meta["captures"] if c["split"] == "test"} == {
        (s.pid, s.camid) for s in ds.gallery
    }
    panels = read_triplet(ds.train[0], name)
    assert len(panels) == len(dataset_spec(name).modalities)


@pytest.mark.parametrize(
    ("preset", "dataset", "modalities", "img_size", "batch", "instances", "epochs", "head"),
    [
        ("wmveid863", "WMVEID863", RGB_NI_TI, (128, 256), 64, 4, 60, "per_modality"),
        ("market1501mm", "Market1501-MM", RGB_NI_TI, (256, 128), 128, 16, 60, "concat"),
        ("rgbn300", "RGBN300", ModalitySet.of(("RGB", "NI")), (128, 256), 128, 16, 30, "per_modality"),
    ],
)
def test_presets_load(preset, dataset, modalities, img_size, batch, instances, epochs, head) -> None:
    cfg = load_config(preset)
    assert cfg.data.dataset == dataset and cfg.modalities() == modalities and cfg.img_size() == img_size
    assert (cfg.data.batch_size, cfg.data.num_instances, cfg.train.epochs, cfg.model.ori_head) == (
        batch,
        instances,
        epochs,
        head,
    )
    assert cfg.train.output == f"runs/{preset}"


def _fidelity_rows() -> list[dict[str, str]]:
    """Rows of the table under "## Presets of the other benchmarks" in docs/FIDELITY.md."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "FIDELITY.md").read_text()
    section = text.split("## Presets of the other benchmarks\n", 1)[1].splitlines()
    table = section[next(i for i, ln in enumerate(section) if ln.startswith("|")) :]
    table = table[: next((i for i, ln in enumerate(table) if not ln.startswith("|")), len(table))]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in table[2:]]


@pytest.mark.parametrize("preset", ["wmveid863", "market1501mm", "rgbn300"])
def test_presets_hold_the_documented_values(preset: str) -> None:
    cfg = load_config(preset)
    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / f"{preset}.yaml").read_text())
    actual = {
        "`_base_`": base["_base_"].removesuffix(".yaml"),
        "`data.dataset`": cfg.data.dataset,
        "`modalities()`": str(cfg.modalities()),
        "`img_size()`": list(cfg.img_size()),
        "`data.batch_size`": cfg.data.batch_size,
        "`data.num_instances`": cfg.data.num_instances,
        "`train.epochs`": cfg.train.epochs,
        "`train.warmup_epochs`": cfg.train.warmup_epochs,
        "`model.ori_head`": cfg.model.ori_head,
        "`has_scenes`": "same scene" if dataset_spec(cfg.data.dataset).has_scenes else "same camera",
    }
    rows = _fidelity_rows()
    assert {r["key"] for r in rows} == set(actual)
    wrong = [
        f"{r['choice']}: FIDELITY.md says {r[f'`{preset}`']}, the preset has {actual[r['key']]!r}"
        for r in rows
        if yaml.safe_load(r[f"`{preset}`"]) != actual[r["key"]]
    ]
    assert not wrong, "\n".join(wrong)
