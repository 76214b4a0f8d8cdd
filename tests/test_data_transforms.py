"""Joint augmentation of pixel-aligned triplets, test transform and missing-modality zeroing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from mambapro.config import DataConfig
from mambapro.data import (
    MODALITIES,
    apply_missing,
    build_test_transform,
    build_train_transform,
    missing_modalities,
)
from mambapro.modalities import MISSING_SETTINGS as MISSING

H, W = 32, 16


def _cfg(**kw) -> DataConfig:
    return dataclasses.replace(DataConfig(), **kw)


def _coordinate_image(blue: int) -> Image.Image:
    """Red = 8 * x + 1, green = 4 * y + 1 (unique per pixel, never 0 = the padding value)."""
    y, x = np.mgrid[0:H, 0:W]
    arr = np.stack([8 * x + 1, 4 * y + 1, np.full_like(x, blue)], axis=-1).astype(np.uint8)
    return Image.fromarray(arr)


def _triplet() -> list[Image.Image]:
    # Same geometry content, different third channel: a joint transform must move all alike.
    return [_coordinate_image(b) for b in (10, 120, 230)]


def _pixels(t: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """Undo the normalisation back to 0..255 values."""
    return (t * cfg.std + cfg.mean) * 255


def _close(a: torch.Tensor, value: float) -> torch.Tensor:
    return (a - value).abs() < 0.01


def _decode_geometry(px: torch.Tensor, valid: torch.Tensor) -> tuple[bool, int]:
    """(flipped, offset) of an output made from a coordinate image (``px`` in 0..255).

    Unflipped, output column c shows source column c + offset; flipped, it shows
    W - 1 - c - offset. Raises if neither holds on every valid pixel.
    """
    xs = (px[0].round() - 1) / 8
    cols = torch.arange(W, dtype=xs.dtype).expand_as(xs)
    straight = (xs - cols)[valid]
    mirrored = (W - 1 - xs - cols)[valid]
    if torch.all(straight == straight[0]):
        return False, int(straight[0])
    assert torch.all(mirrored == mirrored[0]), "output is not a flip + translation of the input"
    return True, int(mirrored[0])


def _erased(px: torch.Tensor, blue: int) -> torch.Tensor:
    """Pixels whose third channel is neither the image's constant nor the padding value."""
    return ~(_close(px[2], blue) | _close(px[2], 0))


def test_joint_transform_moves_all_modalities_alike() -> None:
    cfg = _cfg(padding=4, erase_prob=0.5, flip_prob=0.5, independent_aug=False)
    tf = build_train_transform(cfg, (H, W))
    flips, offsets, n_erased = set(), set(), 0
    for seed in range(40):
        torch.manual_seed(seed)
        rgb, ni, ti = tf(_triplet())
        assert rgb.shape == ni.shape == ti.shape == (3, H, W)
        assert rgb.dtype == torch.float32 and type(rgb) is torch.Tensor
        # Same flip and crop: the geometric channels agree exactly everywhere ...
        assert torch.equal(rgb[:2], ni[:2]) and torch.equal(rgb[:2], ti[:2])
        # ... and the same erased rectangle with the same noise in all three.
        px = [_pixels(t, cfg) for t in (rgb, ni, ti)]
        erased = _erased(px[0], 10)
        assert torch.equal(erased, _erased(px[1], 120)) and torch.equal(erased, _erased(px[2], 230))
        assert torch.equal(rgb[:, erased], ni[:, erased]) and torch.equal(rgb[:, erased], ti[:, erased])
        n_erased += int(erased.any())
        valid = ~erased & (px[0][0] > 0.5) & (px[0][1] > 0.5)
        flipped, offset = _decode_geometry(px[0], valid)
        ys = (px[0][1].round() - 1) / 4 - torch.arange(H, dtype=px[0].dtype)[:, None]
        assert torch.all(ys[valid] == ys[valid][0])  # a vertical translation, no scaling
        assert abs(offset) <= cfg.padding and abs(int(ys[valid][0])) <= cfg.padding
        flips.add(flipped)
        offsets.add((offset, int(ys[valid][0])))
    # Both flip outcomes, several crop offsets, and some erasing happened.
    assert flips == {False, True}
    assert len(offsets) > 10
    assert 5 <= n_erased <= 35


def test_independent_option_draws_per_modality() -> None:
    cfg = _cfg(padding=4, erase_prob=0.0)
    tf = build_train_transform(cfg, (H, W), independent=True)
    differ = 0
    for seed in range(10):
        torch.manual_seed(seed)
        rgb, ni, ti = tf(_triplet())
        differ += int(not torch.equal(rgb[:2], ni[:2]) or not torch.equal(rgb[:2], ti[:2]))
    assert differ >= 8
    # The config key selects the default, which is per-modality draws (the authors' release).
    assert build_train_transform(_cfg(), (H, W)).independent
    assert not build_train_transform(_cfg(independent_aug=False), (H, W)).independent


def test_random_erasing_fills_per_pixel_noise() -> None:
    cfg = _cfg(padding=0, flip_prob=0.0, erase_prob=1.0, independent_aug=False)
    tf = build_train_transform(cfg, (H, W))
    clean = build_test_transform(cfg, (H, W))(_triplet())
    for seed in range(5):
        torch.manual_seed(seed)
        out = tf(_triplet())
        mask = (out[0] != clean[0]).any(0)
        # One rectangle, the same in all modalities, with the same N(0, 1) noise in it.
        rows, cols = torch.nonzero(mask, as_tuple=True)
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.float().mean() > 0.95
        assert 0.02 * H * W * 0.5 <= box.numel() <= 0.34 * H * W
        for m in (1, 2):
            assert torch.equal(out[m][:, mask], out[0][:, mask])
        noise = out[0][:, mask]
        assert noise.std() > 0.5 and noise.unique().numel() > noise.numel() // 2


def test_flip_probability_and_disabled_steps() -> None:
    tf = build_train_transform(_cfg(padding=0, erase_prob=0.0, flip_prob=0.5), (H, W))
    n_flip = 0
    for seed in range(200):
        torch.manual_seed(seed)
        px = _pixels(tf(_triplet())[0], _cfg())
        n_flip += _decode_geometry(px, torch.ones(H, W, dtype=torch.bool))[0]
    assert 70 <= n_flip <= 130  # Binomial(200, 0.5): 6 sigma band
    still = build_train_transform(_cfg(padding=0, erase_prob=0.0, flip_prob=0.0), (H, W))
    ref = build_test_transform(_cfg(), (H, W))(_triplet())
    for seed in range(5):
        torch.manual_seed(seed)
        assert all(torch.equal(a, b) for a, b in zip(still(_triplet()), ref))


def test_same_seed_same_output() -> None:
    tf = build_train_transform(_cfg(padding=4), (H, W))
    torch.manual_seed(7)
    a = tf(_triplet())
    torch.manual_seed(7)
    b = tf(_triplet())
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_test_transform_resizes_and_normalises() -> None:
    cfg = _cfg(mean=0.25, std=0.5)
    imgs = [Image.new("RGB", (50, 100), c) for c in ((255, 255, 255), (0, 0, 0), (51, 102, 153))]
    rgb, ni, ti = build_test_transform(cfg, (64, 24))(imgs)
    assert rgb.shape == (3, 64, 24)
    assert torch.allclose(rgb, torch.full_like(rgb, (1 - 0.25) / 0.5))
    assert torch.allclose(ni, torch.full_like(ni, -0.5))
    expect = (torch.tensor([51, 102, 153]) / 255 - 0.25) / 0.5
    assert torch.allclose(ti, expect[:, None, None].expand_as(ti), atol=1e-6)


def test_transform_rejects_wrong_arity() -> None:
    # One image per modality: 2 to 4 of them (a dataset has 2 to 4 modalities).
    tf = build_test_transform(_cfg(), (H, W))
    with pytest.raises(ValueError, match=r"one image per modality \(2 to 4\), got 1 images"):
        tf(_triplet()[:1])
    with pytest.raises(ValueError, match="got 5 images"):
        tf([*_triplet(), *_triplet()[:2]])
    assert [t.shape for t in tf(_triplet()[:2])] == [(3, H, W)] * 2


# --------------------------------------------------------------------------- missing modalities

EXPECTED_GONE = {
    "full": set(),
    "R": {"RGB"},
    "N": {"NI"},
    "T": {"TI"},
    "RN": {"RGB", "NI"},
    "RT": {"RGB", "TI"},
    "NT": {"NI", "TI"},
}


@pytest.mark.parametrize("missing", MISSING)
def test_apply_missing_dict_and_tuple(missing: str) -> None:
    assert set(EXPECTED_GONE) == set(MISSING)
    batch = {m: torch.rand(2, 3, 4, 2) + 1 for m in MODALITIES}
    batch["pids"] = torch.tensor([1, 2])
    out = apply_missing(batch, missing)
    for m in MODALITIES:
        if m in EXPECTED_GONE[missing]:
            assert torch.equal(out[m], torch.zeros(2, 3, 4, 2))
        else:
            assert out[m] is batch[m]
    assert out["pids"] is batch["pids"]
    assert all((batch[m] > 0).all() for m in MODALITIES)  # the input is untouched
    triple = apply_missing(
        tuple(batch[m] for m in MODALITIES), "-" + missing if missing != "full" else missing
    )
    assert isinstance(triple, tuple)
    assert [bool((t == 0).all()) for t in triple] == [m in EXPECTED_GONE[missing] for m in MODALITIES]


def test_missing_spellings_and_errors() -> None:
    assert missing_modalities("-rn") == ("RGB", "NI")
    assert missing_modalities("FULL") == ()
    for bad in ("RNT", "X", "-", "RR", ""):
        with pytest.raises(ValueError, match=f"unknown missing-modality setting '{bad}'"):
            missing_modalities(bad)
    with pytest.raises(KeyError, match="no TI"):
        apply_missing({"RGB": torch.zeros(1), "NI": torch.zeros(1)}, "R")
