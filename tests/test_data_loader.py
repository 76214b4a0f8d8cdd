"""Loaders: batch format, worker-count independence, rank sharding, test loader, synthetic set-up."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mambapro.config import DataConfig, SynthConfig
from mambapro.data import (
    MODALITIES,
    DatasetError,
    TripletDataset,
    build_dataset,
    build_test_loader,
    build_test_transform,
    build_train_loader,
    dataset_from_config,
    synth,
)

IMG = (64, 32)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    synth.generate("rgbnt201", root, seed=2, ids=10, test_ids=2, cameras=2, shots=2)
    synth.generate("rgbnt100", root, seed=2, ids=4, test_ids=2, cameras=2, shots=1)
    return root


def _cfg(**kw) -> DataConfig:
    return dataclasses.replace(DataConfig(), batch_size=8, num_instances=2, padding=4, **kw)


def _epochs(loader, epochs=(0, 1)) -> list[dict]:
    out = []
    for e in epochs:
        loader.batch_sampler.set_epoch(e)
        out += list(loader)
    return out


def test_train_batch_format(root: Path) -> None:
    ds = build_dataset("RGBNT201", root)
    loader = build_train_loader(_cfg(), ds, IMG, seed=0)
    batch = next(iter(loader))
    assert set(batch) == {*MODALITIES, "pids", "camids", "sceneids", "paths"}
    for m in MODALITIES:
        assert batch[m].shape == (8, 3, *IMG) and batch[m].dtype == torch.float32
    for k in ("pids", "camids", "sceneids"):
        assert batch[k].dtype == torch.long and batch[k].shape == (8,)
    # Labels and paths follow the sampler's indices.
    indices = [i for i, _ in next(iter(loader.batch_sampler))]
    assert batch["paths"] == [ds.train[i].paths[0] for i in indices]
    assert batch["pids"].tolist() == [ds.train[i].pid for i in indices]
    assert batch["camids"].tolist() == [ds.train[i].camid for i in indices]
    assert batch["sceneids"].tolist() == [-1] * 8
    assert len(set(batch["pids"].tolist())) == 4  # P = 8 / 2


def test_same_batches_with_0_and_2_workers(root: Path) -> None:
    ds = build_dataset("RGBNT201", root)
    state = torch.get_rng_state()
    a = _epochs(build_train_loader(_cfg(num_workers=0), ds, IMG, seed=3))
    assert torch.equal(torch.get_rng_state(), state)  # loading leaves the caller's RNG alone
    b = _epochs(build_train_loader(_cfg(num_workers=2), ds, IMG, seed=3))
    assert len(a) == len(b) > 2
    for x, y in zip(a, b):
        assert x["paths"] == y["paths"]
        for k in (*MODALITIES, "pids", "camids"):
            assert torch.equal(x[k], y[k]), k
    # A new epoch gives new data, a new seed too.
    loader = build_train_loader(_cfg(), ds, IMG, seed=3)
    first = next(iter(loader))
    loader.batch_sampler.set_epoch(1)
    assert not torch.equal(first["RGB"], next(iter(loader))["RGB"])
    other = next(iter(build_train_loader(_cfg(), ds, IMG, seed=4)))
    assert not torch.equal(first["RGB"], other["RGB"])


def test_ranks_reassemble_the_single_process_batch(root: Path) -> None:
    ds = build_dataset("RGBNT201", root)
    single = _epochs(build_train_loader(_cfg(), ds, IMG, seed=1), (0,))
    shards = [
        _epochs(build_train_loader(_cfg(), ds, IMG, seed=1, rank=r, world_size=2), (0,)) for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == len(single)
    for full, r0, r1 in zip(single, *shards):
        assert r0["RGB"].shape[0] == 4
        assert not set(r0["pids"].tolist()) & set(r1["pids"].tolist())
        for m in MODALITIES:
            assert torch.equal(torch.cat([r0[m], r1[m]]), full[m])


def test_fixed_iterations_per_epoch(root: Path) -> None:
    ds = build_dataset("RGBNT201", root)
    loader = build_train_loader(_cfg(), ds, IMG, seed=0, iters_per_epoch=5)
    assert len(loader) == 5 and len(list(loader)) == 5


def test_test_loader_order_and_missing(root: Path) -> None:
    ds = build_dataset("RGBNT201", root)
    cfg = _cfg()
    full = list(build_test_loader(cfg, ds.gallery, ds.name, IMG, batch_size=5))
    paths = [p for b in full for p in b["paths"]]
    assert paths == [s.paths[0] for s in ds.gallery]
    # Deterministic and equal to the test transform of each sample.
    tf = build_test_transform(cfg, IMG)
    ref = TripletDataset(ds.gallery, ds.name, tf)[0]
    assert torch.equal(full[0]["NI"][0], ref["NI"])
    without = next(iter(build_test_loader(cfg, ds.gallery, ds.name, IMG, batch_size=5, missing="RT")))
    assert torch.equal(without["RGB"], torch.zeros_like(full[0]["RGB"]))
    assert torch.equal(without["TI"], torch.zeros_like(full[0]["TI"]))
    assert torch.equal(without["NI"], full[0]["NI"])
    with pytest.raises(ValueError, match="'-Q'"):
        build_test_loader(cfg, ds.gallery, ds.name, IMG, batch_size=5, missing="-Q")


def test_rgbnt100_items_are_split_into_panels(root: Path) -> None:
    ds = build_dataset("RGBNT100", root)
    item = TripletDataset(ds.query, ds.name, build_test_transform(_cfg(), (128, 256)))[0]
    # With the native size the resize is the identity: each modality is one 256-px panel.
    whole = torch.from_numpy(np.array(Image.open(ds.query[0].paths[0]).convert("RGB"))).float()
    whole = whole.permute(2, 0, 1) / 255 * 2 - 1
    assert whole.shape == (3, 128, 768)
    for k, m in enumerate(MODALITIES):
        assert torch.allclose(item[m], whole[:, :, 256 * k : 256 * (k + 1)], atol=1e-6)


def test_dataset_from_config_generates_once(tmp_path: Path) -> None:
    cfg = dataclasses.replace(
        DataConfig(),
        dataset="MSVR310",
        root=str(tmp_path),
        synthetic=True,
        synth=SynthConfig(seed=0, ids=4, test_ids=2, cameras=2, shots=2, scenes=2),
    )
    ds = dataset_from_config(cfg)
    assert ds.num_train_pids == 2 and len(ds.gallery) == 2 * 2 * 2
    meta = tmp_path / "msvr310" / synth.META_FILE
    stamp = meta.stat().st_mtime_ns
    dataset_from_config(cfg)
    assert meta.stat().st_mtime_ns == stamp  # reused, not regenerated
    cfg.synth.ids = 5
    # A tree made with other parameters is never replaced (it may be what a user made).
    with pytest.raises(DatasetError, match=r"made with seed=0, ids=4.*refusing to replace it"):
        dataset_from_config(cfg)
    assert meta.stat().st_mtime_ns == stamp
    # Without the flag a missing dataset is an error naming the folder.
    missing = re.escape(str(tmp_path / "RGBNT201"))
    with pytest.raises(DatasetError, match=rf"^RGBNT201 dataset folder not found: {missing}; .*msvr310/"):
        dataset_from_config(dataclasses.replace(cfg, dataset="RGBNT201", synthetic=False))
