"""Modality dropout (train.modality_dropout): its draw, its form and its determinism."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from mambapro.config import ConfigError, DataConfig, config_diff, config_to_dict, load_config
from mambapro.data import MODALITIES, TripletDataset, build_dataset, build_train_loader, synth
from mambapro.data.loader import DROPPABLE, draw_modality_dropout
from mambapro.data.transforms import build_train_transform
from mambapro.modalities import missing_modalities

IMG = (32, 32)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    synth.generate("rgbnt201", root, seed=4, ids=8, test_ids=2, cameras=2, shots=2)
    return root


def test_the_draw_is_uniform_over_the_six_settings() -> None:
    n, rate = 60_000, 0.4
    counts = Counter(draw_modality_dropout(seed, rate) for seed in range(n))
    assert set(counts) == {"full", *DROPPABLE} and len(DROPPABLE) == 6
    # Binomial counts within 5 standard deviations of their expectation.
    for setting, p in [("full", 1 - rate), *((s, rate / 6) for s in DROPPABLE)]:
        assert abs(counts[setting] - n * p) < 5 * math.sqrt(n * p * (1 - p)), setting
    assert {draw_modality_dropout(seed, 0.0) for seed in range(1000)} == {"full"}
    assert draw_modality_dropout(123, 0.4) == draw_modality_dropout(123, 0.4)  # a pure function


def test_dropped_modalities_are_zero_and_the_rest_is_unchanged(root: Path) -> None:
    ds = build_dataset("RGBNT201", root)
    transform = build_train_transform(DataConfig(), IMG)
    plain = TripletDataset(ds.train, ds.name, transform)
    dropping = TripletDataset(ds.train, ds.name, transform, modality_dropout=0.9)
    seen = set()
    for i in range(len(ds.train)):
        a, b = plain[(i, 1000 + i)], dropping[(i, 1000 + i)]
        assert a["dropped"] == "full"
        gone = set(missing_modalities(b["dropped"]))
        seen.add(b["dropped"])
        for m in MODALITIES:
            # Zero after normalisation: exactly what `test --missing` feeds the model.
            expected = torch.zeros_like(a[m]) if m in gone else a[m]
            assert torch.equal(b[m], expected), (i, m)
    assert len(seen) >= 4  # several settings occur among the items


def test_same_batches_with_0_and_2_workers(root: Path) -> None:
    ds = build_dataset("RGBNT201", root)
    cfg = dataclasses.replace(DataConfig(), batch_size=8, num_instances=2)
    batches = []
    for workers in (0, 2):
        loader = build_train_loader(
            dataclasses.replace(cfg, num_workers=workers), ds, IMG, seed=5, modality_dropout=0.5
        )
        batches.append(list(loader))
    zeroed = 0
    for x, y in zip(*batches):
        for m in MODALITIES:
            assert torch.equal(x[m], y[m])
            zeroed += int((x[m].flatten(1).abs().sum(1) == 0).sum())
    assert zeroed > 0


@pytest.mark.parametrize("value", ["1", "-0.1", "1.5"])
def test_rate_outside_0_1_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"'train.modality_dropout' = .* must be >= 0 and < 1"):
        load_config(None, [f"train.modality_dropout={value}"])


@pytest.mark.parametrize("base", ["demo", "rgbnt201", "rgbnt100", "msvr310"])
def test_robust_presets_differ_from_their_base_only_in_the_dropout(base: str) -> None:
    plain, robust = config_to_dict(load_config(base)), config_to_dict(load_config(f"{base}_robust"))
    assert plain["train"]["modality_dropout"] == 0  # the paper's recipe stays faithful
    assert robust["train"]["modality_dropout"] > 0
    assert config_diff(plain, robust) == [
        f"train.modality_dropout: 0.0 -> {robust['train']['modality_dropout']!r}",
        f"train.output: 'runs/{base}' -> 'runs/{base}_robust'",
    ]
