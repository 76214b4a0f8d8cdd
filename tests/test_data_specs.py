"""Adding a dataset is one spec: a fourth benchmark registered here works end to end.

This is the worked example of docs/CONTRACTS.md: a spec with new folder and file names but a
known folder structure needs no code; the parser, the synthetic generator, the config (name,
image size) and the loaders read it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from mambapro.config import ConfigError, load_config
from mambapro.data import DATASETS, DatasetSpec, build_dataset, build_train_loader, dataset_spec, samples_at
from mambapro.data.synth import generate

NEW = DatasetSpec(
    name="TRIPLE42",
    folder="triple42",
    splits={"train": "train", "query": "probe", "gallery": "gallery"},
    structure="modality_folders",
    modality_folders=("visible", "nir", "thermal"),
    name_pattern=r"^P(?P<pid>\d{4})_C(?P<cam>\d)",
    name_rule="PNNNN_CN_... (4-digit pid, camera 1-6)",
    camera_base=1,
    max_cameras=6,
    img_size=(64, 32),
    has_scenes=False,
    subject="person",
    synth_name="P{pid:04d}_C{cam1}_{shot:03d}.png",
    published=(42, 6),
)


@pytest.fixture()
def registered() -> Iterator[DatasetSpec]:
    DATASETS.register(NEW.name)(NEW)
    try:
        yield NEW
    finally:
        del DATASETS._items[NEW.name.lower()]


def _write(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 64), (10, 20, 30)).save(path)


def test_literal_names_parse_by_the_new_spec(registered: DatasetSpec, tmp_path: Path) -> None:
    base = tmp_path / "triple42"
    names = {
        "train": ["P0007_C1_000.png", "P0007_C3_001.png", "P0012_C2_000.png"],
        "probe": [],
        "gallery": [],
    }
    names["probe"] = ["P0100_C6_000.png"]
    names["gallery"] = ["P0100_C2_000.png", "P0101_C5_004.png"]
    for split, files in names.items():
        for n in files:
            for m in registered.modality_folders:
                _write(base / split / m / n)
    ds = build_dataset("triple42", tmp_path)
    # pids relabelled 0..K-1 in training only; cameras 0-based
    assert [(s.pid, s.camid) for s in ds.train] == [(0, 0), (0, 2), (1, 1)]
    assert [(s.pid, s.camid, s.sceneid) for s in ds.query] == [(100, 5, -1)]
    assert [(s.pid, s.camid) for s in ds.gallery] == [(100, 1), (101, 4)]
    assert ds.query[0].paths == tuple(
        str(base / "probe" / m / "P0100_C6_000.png") for m in ("visible", "nir", "thermal")
    )
    assert ds.num_train_cams == 3 and not ds.has_scenes
    one = samples_at(base / "gallery" / "thermal" / "P0101_C5_004.png", "TRIPLE42")
    assert [(s.pid, s.camid) for s in one] == [(101, 4)]


def test_new_spec_works_with_generator_config_and_loader(registered: DatasetSpec, tmp_path: Path) -> None:
    root = generate("triple42", tmp_path, ids=6, test_ids=2, cameras=3, shots=2)
    assert root == tmp_path / "triple42"
    assert (root / "probe").is_dir() and sorted(p.name for p in (root / "train").iterdir()) == [
        "nir",
        "thermal",
        "visible",
    ]
    ds = build_dataset("TRIPLE42", tmp_path)
    assert (ds.num_train_pids, len(ds.train), ds.num_train_cams) == (4, 4 * 3 * 2, 3)
    cfg = load_config(
        None, ["data.dataset=triple42", f"data.root={tmp_path}", "data.batch_size=4", "data.num_instances=2"]
    )
    assert cfg.data.dataset == "TRIPLE42" and cfg.img_size() == (64, 32)
    loader = build_train_loader(cfg.data, ds, cfg.img_size(), seed=0)
    batch = next(iter(loader))
    assert batch["RGB"].shape == (4, 3, 64, 32) and batch["TI"].dtype == torch.float32


def test_unregistered_names_are_refused() -> None:
    assert "triple42" not in DATASETS
    with pytest.raises(
        ConfigError, match="'data.dataset' = 'triple42' is not one of: RGBNT201, RGBNT100, MSVR310"
    ):
        load_config(None, ["data.dataset=triple42"])
    with pytest.raises(ConfigError, match=r"^unknown dataset 'triple42'; choose one of: RGBNT201, RGBNT100"):
        dataset_spec("triple42")


def test_a_spec_checks_itself() -> None:
    with pytest.raises(ValueError, match="lacks the group"):
        DatasetSpec(**{**NEW.__dict__, "has_scenes": True})
    with pytest.raises(ValueError, match="structure"):
        DatasetSpec(**{**NEW.__dict__, "structure": "zip"})
