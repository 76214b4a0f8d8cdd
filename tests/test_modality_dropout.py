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
from mambapro.models import build_model
from mambapro.models.missing import MissingTokens
from mambapro.reports.params import parameter_report

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


# ---------------------------------------------------------------- feature-level dropout


def _feature_model(**overrides: str):
    cfg = load_config(
        "demo",
        [
            "data.synthetic=false",
            "data.img_size=[32,32]",
            "train.modality_dropout=0.5",
            "train.modality_dropout_mode=feature",
            *(f"{k}={v}" for k, v in overrides.items()),
        ],
    )
    torch.manual_seed(0)
    return build_model(cfg, num_classes=4, num_cameras=2), cfg


def test_missing_tokens_replace_exactly_the_all_zero_modalities() -> None:
    torch.manual_seed(0)
    layer = MissingTokens(num_tokens=5, dim=3)
    images = {m: torch.randn(4, 3, 8, 8) for m in MODALITIES}
    images["NI"][1] = 0  # sample 1 misses NI; sample 2 misses RGB and TI
    images["RGB"][2] = 0
    images["TI"][2] = 0
    images["TI"][3, :, 0, 0] = 0  # a few zero pixels are not a missing modality
    tokens = {m: torch.randn(4, 5, 3) for m in MODALITIES}
    out = layer(images, tokens)
    gone = {("NI", 1), ("RGB", 2), ("TI", 2)}
    for i, m in enumerate(MODALITIES):
        for b in range(4):
            expected = layer.tokens[i] if (m, b) in gone else tokens[m][b]
            torch.testing.assert_close(out[m][b], expected, rtol=0, atol=0)


def test_feature_mode_model_uses_the_learned_tokens_before_ma() -> None:
    model, cfg = _feature_model()
    model.eval()
    assert model.missing is not None and model.missing.tokens.shape[0] == 3
    h, w = model.backbone.grid
    assert model.missing.tokens.shape[1:] == (1 + h * w, model.backbone.out_dim)
    gen = torch.Generator().manual_seed(1)
    batch = {m: torch.randn(2, 3, 32, 32, generator=gen) for m in MODALITIES}
    batch["TI"][0] = 0
    batch["camids"] = torch.tensor([0, 1])
    with torch.no_grad():
        got = model.features(batch)
        # By hand: the backbone's tokens, sample 0's TI tokens swapped for the learned ones.
        tokens = model.backbone({m: batch[m] for m in MODALITIES}, batch["camids"])
        tokens["TI"] = tokens["TI"].clone()
        tokens["TI"][0] = model.missing.tokens[2]
        fuse = model.aggregator(tokens["RGB"], tokens["NI"], tokens["TI"])
        ori = torch.cat([tokens[m][:, 0] for m in MODALITIES], dim=1)
    torch.testing.assert_close(got["fuse"], fuse)
    torch.testing.assert_close(got["ori"], ori)
    # Input mode: no learned tokens, the zeroed image's own tokens go on to MA.
    plain_cfg = load_config("demo", ["data.synthetic=false", "data.img_size=[32,32]"])
    assert build_model(plain_cfg, num_classes=4, num_cameras=2).missing is None


def test_feature_mode_tokens_are_a_reported_trainable_part() -> None:
    model, cfg = _feature_model()
    report = parameter_report(cfg, num_classes=4, num_cameras=2)
    h, w = model.backbone.grid
    assert report["parts"]["missing"]["trainable"] == 3 * (1 + h * w) * model.backbone.out_dim
    plain = parameter_report(load_config("demo", ["data.img_size=[32,32]"]), num_classes=4, num_cameras=2)
    assert "missing" not in plain["parts"]
    # The tokens learn from the dropped samples: a training loss reaches them.
    model.train()
    gen = torch.Generator().manual_seed(2)
    batch = {m: torch.randn(4, 3, 32, 32, generator=gen) for m in MODALITIES}
    batch["NI"][:2] = 0
    batch["camids"] = torch.tensor([0, 1, 0, 1])
    loss = sum(feat.square().mean() for feat, _ in model(batch).values())
    loss.backward()
    grad = model.missing.tokens.grad
    assert grad[1].abs().sum() > 0  # NI was missing in two samples
    assert grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0  # RGB and TI never were


def test_an_unknown_dropout_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="modality_dropout_mode"):
        load_config("demo", ["train.modality_dropout_mode=tokens"])
