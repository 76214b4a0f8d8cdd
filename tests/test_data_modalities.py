"""The data pipeline for any modality set: 2 to 4 modalities, from the dataset's spec.

Specs built here (two modalities in modality folders and side by side, four in identity folders)
go through the synthetic generator, the parser, the loaders (CPU and device augmentation, the
decoded cache) and the batch; the paper's three keep their images, draws and cache keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mambapro.config import DataConfig, load_config
from mambapro.data import (
    DATASETS,
    DatasetError,
    DatasetSpec,
    apply_missing,
    build_dataset,
    build_test_loader,
    build_train_loader,
    dataset_from_config,
    dataset_spec,
    read_triplet,
    synth,
)
from mambapro.data.cache import build_cache, cache_key
from mambapro.data.device_aug import DeviceAugment
from mambapro.data.fingerprint import dataset_fingerprint
from mambapro.data.loader import DROPPABLE, draw_modality_dropout, droppable
from mambapro.errors import ConfigError
from mambapro.modalities import RGB_NI_TI, ModalitySet

RGB_TI = ModalitySet.of(("RGB", "TI"))
FOUR = ModalitySet.of(("RGB", "NI", "TI", "D"))
SMALL = dict(seed=1, ids=5, test_ids=2, cameras=2, shots=2, scenes=2)

DUO = DatasetSpec(
    name="DUO2",
    folder="duo2",
    splits={"train": "train", "query": "query", "gallery": "gallery"},
    structure="modality_folders",
    modality_folders=("vis", "th"),
    name_pattern=r"^(?P<pid>\d{4})_c(?P<cam>\d)",
    name_rule="PPPP_cC_... (camera 1-6)",
    camera_base=1,
    max_cameras=6,
    img_size=(32, 16),
    has_scenes=False,
    subject="person",
    synth_name="{pid:04d}_c{cam1}_{shot:02d}.jpg",
    published=(3, 2),
    modalities=RGB_TI,
)
DUO_SBS = dataclasses.replace(
    DUO, name="DUOSBS", folder="duosbs", structure="side_by_side", modality_folders=(), subject="vehicle"
)
QUAD = DatasetSpec(
    name="QUAD4",
    folder="quad4",
    splits={"train": "train", "query": "query", "gallery": "test"},
    structure="id_folders",
    modality_folders=("rgb", "nir", "tir", "depth"),
    name_pattern=r"^(?P<pid>\d{4})_s(?P<scene>\d{3})_v(?P<cam>\d)",
    name_rule="PPPP_sSSS_vC... (camera 0-7)",
    camera_base=0,
    max_cameras=8,
    img_size=(16, 32),
    has_scenes=True,
    subject="vehicle",
    synth_name="{pid:04d}_s{scene1:03d}_v{cam}_{shot:03d}.png",
    published=(3, 2),
    modalities=FOUR,
)


def _cfg(**kw) -> DataConfig:
    kw = {"batch_size": 4, "num_instances": 2, "padding": 2, "num_workers": 0, **kw}
    return dataclasses.replace(DataConfig(), **kw)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("modalities")
    for spec in (DUO, DUO_SBS, QUAD):
        synth.generate(spec, root, **SMALL)
    return root


def _keys(batch: dict) -> list[str]:
    return [k for k in batch if torch.is_tensor(batch[k]) and batch[k].dim() == 4]


@pytest.mark.parametrize("spec", [DUO, DUO_SBS, QUAD], ids=lambda s: s.name)
@pytest.mark.parametrize("augment_on,cache", [("cpu", "none"), ("cpu", "memory"), ("device", "none")])
def test_synth_to_batch_has_the_spec_modalities(
    root: Path, spec: DatasetSpec, augment_on: str, cache: str
) -> None:
    ds = build_dataset(spec, root)
    assert ds.modalities == spec.modalities and ds.spec is spec
    assert (ds.num_train_pids, len(ds.train)) == (3, 3 * 2 * 2)
    n = 1 if spec.side_by_side else len(spec.modalities)
    assert all(len(s.paths) == n for s in ds.train + ds.query + ds.gallery)
    h, w = spec.img_size
    cfg = _cfg(augment_on=augment_on, cache=cache)
    batch = next(iter(build_train_loader(cfg, ds, (h, w), seed=0, modality_dropout=0.5)))
    if augment_on == "device":
        assert batch["RGB"].dtype == torch.uint8
        batch = DeviceAugment(cfg, (h, w), spec.modalities)(batch)
    assert _keys(batch) == list(spec.modalities.keys)
    for key in spec.modalities:
        assert batch[key].shape == (4, 3, h, w) and batch[key].dtype == torch.float32
    assert batch["pids"].shape == (4,) and len(batch["paths"]) == 4
    test = next(iter(build_test_loader(cfg, ds.query, spec, (h, w), batch_size=3, missing="T")))
    assert _keys(test) == list(spec.modalities.keys)
    assert not test["RGB"].eq(0).all() and test["TI"].eq(0).all()


def test_two_modality_files_and_panels(root: Path) -> None:
    train = root / "duo2" / "train"
    assert sorted(p.name for p in train.iterdir()) == ["th", "vis"]
    sbs = build_dataset(DUO_SBS, root)
    with Image.open(sbs.train[0].paths[0]) as img:
        assert img.size == (2 * 16, 32)  # two panels of W = 16
    rgb, ti = read_triplet(sbs.train[0], DUO_SBS)
    assert rgb.size == ti.size == (16, 32)
    quad = build_dataset(QUAD, root)
    assert [Path(p).parent.name for p in quad.train[0].paths] == ["rgb", "nir", "tir", "depth"]
    assert len(read_triplet(quad.train[0], QUAD)) == 4
    meta = synth.load_meta(QUAD, root)
    assert synth.meta_modalities(meta) == ["RGB", "NI", "TI", "D"]
    assert "of the modalities RGB+NI+TI+D" in synth.describe_tree(root / "quad4")
    assert synth.load_meta(DUO, root)["modalities"] == ["RGB", "TI"]
    fp = dataset_fingerprint(quad)
    assert fp["modalities"] == ["RGB", "NI", "TI", "D"]


def test_base_modalities_render_the_same_whatever_the_set() -> None:
    ident = synth.make_identities(0, 6, 2)[4]
    r201 = dataclasses.replace(DUO, modalities=RGB_NI_TI, modality_folders=("a", "b", "c"))
    rgb, ni, ti, cap = synth.render_capture(ident, r201, 1, 1, seed=0)
    rgb2, ti2, cap2 = synth.render_capture(ident, DUO, 1, 1, seed=0)
    assert np.array_equal(rgb, rgb2) and np.array_equal(ti, ti2) and cap == cap2
    quad = dataclasses.replace(QUAD, img_size=DUO.img_size, subject="person")
    *four, cap4 = synth.render_capture(ident, quad, 1, 1, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(four[:3], (rgb, ni, ti))) and cap4 == cap
    depth = four[3]
    # Its own deterministic appearance: grey, not a copy of another band, not flat, repeatable.
    assert depth.shape == rgb.shape and np.array_equal(depth[..., 0], depth[..., 2])
    assert not np.array_equal(depth, ni) and not np.array_equal(depth, ti) and depth.std() > 5
    assert np.array_equal(synth.render_capture(ident, quad, 1, 1, seed=0)[3], depth)
    assert not np.array_equal(synth.render_capture(ident, quad, 1, 0, seed=0)[3], depth)


@pytest.mark.parametrize("missing,gone", [("full", set()), ("R", {"RGB"}), ("T", {"TI"}), ("-t", {"TI"})])
def test_apply_missing_two_modalities(missing: str, gone: set[str]) -> None:
    assert RGB_TI.settings == ("full", "R", "T")
    batch = {m: torch.rand(2, 3, 4, 2) + 1 for m in RGB_TI}
    batch["pids"] = torch.tensor([1, 2])
    out = apply_missing(batch, missing, RGB_TI)
    for m in RGB_TI:
        assert torch.equal(out[m], torch.zeros(2, 3, 4, 2)) if m in gone else out[m] is batch[m]
    assert out["pids"] is batch["pids"] and set(out) == {"RGB", "TI", "pids"}
    pair = apply_missing((batch["RGB"], batch["TI"]), missing, RGB_TI)
    assert [bool((t == 0).all()) for t in pair] == [m in gone for m in RGB_TI]
    with pytest.raises(ValueError, match="unknown missing-modality setting 'N'"):
        apply_missing(batch, "N", RGB_TI)
    with pytest.raises(ValueError, match=r"expected \(RGB, TI\) tensors, got 3 items"):
        apply_missing((batch["RGB"],) * 3, missing, RGB_TI)


def test_modality_dropout_draws_among_the_set() -> None:
    assert droppable(RGB_NI_TI) == DROPPABLE == ("R", "N", "T", "RN", "RT", "NT")
    assert droppable(RGB_TI) == ("R", "T") and len(droppable(FOUR)) == 14
    three = [draw_modality_dropout(s, 0.5) for s in range(400)]
    assert three == [draw_modality_dropout(s, 0.5, RGB_NI_TI) for s in range(400)]
    two = [draw_modality_dropout(s, 0.5, RGB_TI) for s in range(400)]
    assert set(two) == {"full", "R", "T"}
    # The same stream: the same items keep all their modalities whatever the set.
    assert [d == "full" for d in two] == [d == "full" for d in three]


def test_side_by_side_width_must_split_into_the_panels(tmp_path: Path) -> None:
    split = tmp_path / "duosbs"
    for folder in ("train", "query", "gallery"):
        (split / folder).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(split / folder / "0001_c1_00.jpg")
    bad = split / "train" / "0002_c2_00.jpg"
    Image.new("RGB", (33, 32)).save(bad)
    with pytest.raises(
        DatasetError,
        match=rf"{bad}: expected two modality panels side by side \(width a multiple of 2\), got 33x32",
    ):
        build_dataset(DUO_SBS, tmp_path)
    with pytest.raises(DatasetError, match=rf"{bad}: expected two modality panels"):
        read_triplet((str(bad),), DUO_SBS)
    # 32 = 2 x 16: two panels of 16 x 32.
    assert [im.size for im in read_triplet((str(split / "query" / "0001_c1_00.jpg"),), DUO_SBS)] == [
        (16, 32)
    ] * 2


def test_cache_keys_and_shapes_follow_the_modalities(root: Path) -> None:
    ds = build_dataset(DUO, root)
    three = dataclasses.replace(
        DUO, modalities=ModalitySet.of(("RGB", "NI", "TI")), modality_folders=("a", "b", "c")
    )
    assert cache_key(ds.train, DUO, (8, 4), "bicubic", "pil") != cache_key(
        ds.train, three, (8, 4), "bicubic", "pil"
    )
    # The paper's three: the key as a name gives it, whatever form names the dataset.
    assert cache_key(ds.train, "RGBNT201", (8, 4), "bicubic", "pil") == cache_key(
        ds.train, DATASETS.get("RGBNT201"), (8, 4), "bicubic", "pil"
    )
    cache = build_cache(ds.train, DUO, (8, 4), decoder="pil")
    assert cache.array.shape == (len(ds.train), 2, 3, 8, 4) and len(cache[0]) == 2


@pytest.fixture()
def registered() -> Iterator[DatasetSpec]:
    DATASETS.register(DUO.name)(DUO)
    try:
        yield DUO
    finally:
        del DATASETS._items[DUO.name.lower()]


def test_config_synthetic_two_modality_dataset(registered: DatasetSpec, tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "data.dataset=duo2",
            f"data.root={tmp_path}",
            "data.synthetic=true",
            "data.synth.ids=4",
            "data.synth.test_ids=2",
            "data.synth.cameras=2",
            "data.synth.shots=2",
            "data.batch_size=4",
            "data.num_instances=2",
            "data.num_workers=0",
            "test.missing=T",
        ],
    )
    assert cfg.modalities() == RGB_TI
    ds = dataset_from_config(cfg.data)
    assert ds.modalities == RGB_TI and (tmp_path / "duo2" / "train" / "th").is_dir()
    assert dataset_from_config(cfg.data).num_train_pids == 2  # the tree is reused
    batch = next(iter(build_train_loader(cfg.data, ds, cfg.img_size(), seed=0)))
    assert _keys(batch) == ["RGB", "TI"] and batch["TI"].shape == (4, 3, 32, 16)
    aug = DeviceAugment(dataclasses.replace(cfg.data, augment_on="device"), cfg.img_size())
    assert aug.modalities == RGB_TI  # from data.dataset
    # Another modality set under the same folder is refused, not mixed.
    other = dataclasses.replace(DUO, modalities=ModalitySet.of(("RGB", "NI")))
    DATASETS._items[DUO.name.lower()] = other
    with pytest.raises(DatasetError, match=r"modalities RGB\+NI"):
        dataset_from_config(cfg.data)


def test_generator_checks_the_names_parse_back() -> None:
    broken = dataclasses.replace(DUO, synth_name="{pid:04d}_c{cam}_{shot:02d}.jpg")  # camera_base 1
    with pytest.raises(ConfigError, match="does not parse back"):
        synth.check_params(broken, synth.SynthParams())
    with pytest.raises(ConfigError, match=r"a file name must end in \.jpg, \.jpeg, \.png or \.bmp"):
        synth.check_params(
            dataclasses.replace(DUO, synth_name="{pid:04d}_c{cam1}_{shot:02d}.tif"), synth.SynthParams()
        )
    with pytest.raises(ConfigError, match="has no synth_name"):
        synth.generate(dataclasses.replace(DUO, synth_name=""), "/nonexistent")
    for name in synth.layout_names():
        synth.check_params(name, synth.SynthParams())  # every registered dataset generates


def test_a_spec_file_path_names_the_dataset(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mambapro.data.specs as specs

    reads = []

    def load(path: str | Path) -> DatasetSpec:
        reads.append(str(path))
        return DUO

    monkeypatch.setattr(specs, "load_spec_file", load)
    path = tmp_path / "duo.yaml"
    path.write_text("name: DUO2\n")
    assert dataset_spec(str(path)) is DUO and dataset_spec(path) is DUO and reads == [str(path), str(path)]
    ds = build_dataset(str(path), root)
    assert ds.spec is DUO and ds.name == "DUO2"
    batch = next(iter(build_test_loader(_cfg(), ds.query, str(path), DUO.img_size, batch_size=2)))
    assert _keys(batch) == ["RGB", "TI"]
    assert synth.dataset_dir(str(path), tmp_path) == tmp_path / "duo2"
    with pytest.raises(
        ConfigError, match=r"^unknown dataset 'nope'; choose one of: RGBNT201, .* \(or a dataset spec file"
    ):
        dataset_spec("nope")


def test_the_paper_modalities_leave_the_metadata_as_it_was(tmp_path: Path) -> None:
    synth.generate("rgbnt201", tmp_path, seed=0, ids=3, test_ids=1, cameras=2, shots=1)
    meta = synth.load_meta("rgbnt201", tmp_path)
    assert "modalities" not in meta and synth.meta_modalities(meta) == ["RGB", "NI", "TI"]
    assert "modalities" not in synth.describe_tree(tmp_path / "RGBNT201")
