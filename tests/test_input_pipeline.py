"""Fast input pipeline: worker defaults, the decoded cache, batched device augmentation.

Expectations come from outside the code under test: PIL decoding + the transform's own resize
step for the cache, torchvision's v2 transforms (driven with forced parameters) for the device
augmentation's images, torchvision's ``make_params`` draws and exact uniform laws for its
parameter distributions.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from mambapro.config import PRESETS_DIR, DataConfig, load_config
from mambapro.data import MODALITIES, DatasetError, build_dataset, build_train_loader, read_triplet, synth
from mambapro.data.cache import build_cache, choose_decoder, decode_file
from mambapro.data.device_aug import DeviceAugment, apply_params, draw_params
from mambapro.data.loader import draw_modality_dropout, resolve_num_workers
from mambapro.data.transforms import build_train_transform, resize_transform
from mambapro.modalities import missing_modalities

IMG = (64, 32)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    synth.generate("rgbnt201", root, seed=3, ids=6, test_ids=2, cameras=2, shots=2)
    synth.generate("rgbnt100", root, seed=3, ids=4, test_ids=2, cameras=2, shots=1)
    return root


def _cfg(**kw) -> DataConfig:
    kw = {"batch_size": 8, "num_instances": 2, "padding": 4, "num_workers": 0, **kw}
    return dataclasses.replace(DataConfig(), **kw)


# ------------------------------------------------------------------------------- workers


def test_num_workers_auto_and_explicit() -> None:
    assert DataConfig().num_workers == "auto"
    assert resolve_num_workers("auto", cpus=1) == 0  # one CPU: a worker only competes
    assert resolve_num_workers("auto", cpus=2) == 2
    assert resolve_num_workers("auto", cpus=64) == 8
    assert resolve_num_workers(3, cpus=1) == 3
    assert (
        resolve_num_workers("auto") == min(len(os.sched_getaffinity(0)), 8)
        or len(os.sched_getaffinity(0)) == 1
    )
    assert load_config(None, ["data.num_workers=5"]).data.num_workers == 5
    assert load_config(None, ["data.num_workers=AUTO"]).data.num_workers == "auto"
    for bad in ("-1", "many"):
        with pytest.raises(Exception, match="data.num_workers"):
            load_config(None, [f"data.num_workers={bad}"])
    # Every paper preset leaves the worker count to auto.
    for name in ("rgbnt201", "rgbnt100", "msvr310"):
        assert load_config(PRESETS_DIR / f"{name}.yaml").data.num_workers == "auto"


# ------------------------------------------------------------------------------- cache


def _fresh(sample, name: str, size: tuple[int, int]) -> list[np.ndarray]:
    """What the uncached pipeline's resize step makes of a sample: PIL decode + v2 Resize on PIL."""
    return [np.asarray(resize_transform(size)(im)).transpose(2, 0, 1) for im in read_triplet(sample, name)]


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cache_contents_equal_fresh_decoding(root: Path, tmp_path: Path, mode: str) -> None:
    for name, size in (
        ("RGBNT201", (256, 128)),
        ("RGBNT201", IMG),
        ("RGBNT100", (128, 256)),
        ("RGBNT100", IMG),
    ):
        ds = build_dataset(name, root)
        cache = build_cache(ds.train, name, size, "bicubic", mode, tmp_path)
        assert cache.decoder == "torchvision"  # it decodes these JPEGs exactly as PIL does
        assert len(cache) == len(ds.train) and (mode == "disk") == (cache.path is not None)
        for i, s in enumerate(ds.train):
            for got, want in zip(cache[i], _fresh(s, name, size)):
                assert got.dtype == torch.uint8 and np.array_equal(got.numpy(), want), (name, size, i)


def test_torchvision_decoder_matches_pil_on_every_file(root: Path) -> None:
    files = sorted(str(p) for p in (root / "RGBNT201").rglob("*.jpg"))[:40]
    assert choose_decoder(files) == "torchvision"
    for f in files:
        assert np.array_equal(decode_file(f, "torchvision"), np.asarray(Image.open(f).convert("RGB")))


def test_cached_loader_batches_equal_uncached_any_worker_count(root: Path) -> None:
    ds = build_dataset("RGBNT201", root)
    for independent in (True, False):
        plain = list(build_train_loader(_cfg(independent_aug=independent), ds, IMG, seed=4))
        cfg = _cfg(cache="memory", num_workers=2, independent_aug=independent)
        cached = list(build_train_loader(cfg, ds, IMG, seed=4))
        assert len(plain) == len(cached) > 1
        for a, b in zip(plain, cached):
            assert a["paths"] == b["paths"]
            for m in MODALITIES:
                assert torch.equal(a[m], b[m]), (independent, m)


def test_disk_cache_reused_and_rebuilt_when_files_change(root: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(root / "RGBNT201", tree / "RGBNT201")
    ds = build_dataset("RGBNT201", tree)
    where = tmp_path / "cache"
    first = build_cache(ds.train, ds.name, IMG, "bicubic", "disk", where)
    stamp = first.path.stat().st_mtime_ns
    again = build_cache(ds.train, ds.name, IMG, "bicubic", "disk", where)
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp  # read, not rebuilt
    # Change one image: the key (file sizes and mtimes) changes, a new file holds the new pixels.
    target = Path(ds.train[0].paths[1])
    arr = np.asarray(Image.open(target)).copy()
    arr[:8] = 255 - arr[:8]
    Image.fromarray(arr).save(target, quality=95)
    os.utime(target, ns=(stamp + 10**9, stamp + 10**9))
    changed = build_cache(ds.train, ds.name, IMG, "bicubic", "disk", where)
    assert changed.path != first.path
    assert np.array_equal(changed[0][1].numpy(), _fresh(ds.train[0], ds.name, IMG)[1])
    assert not [p for p in where.iterdir() if p.name.endswith(".tmp")]  # atomic writes, no leftovers


@pytest.fixture(scope="module")
def disk_build(root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    """The file name and bytes of a fresh disk cache of the RGBNT201 training split."""
    ds = build_dataset("RGBNT201", root)
    cache = build_cache(ds.train, ds.name, IMG, "bicubic", "disk", tmp_path_factory.mktemp("cache"))
    name, data = cache.path.name, cache.path.read_bytes()
    del cache  # no map of the file stays open
    return name, data


def _npy_of(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# How the file is damaged (from its bytes and its array, as numpy reads them) and what the warning
# must then say about it (n: the size of the whole file).
DAMAGES = {
    "truncated": (lambda b, a: b[: len(b) // 2], lambda n: rf"it is truncated \({n // 2} of {n} bytes\)"),
    "cut in the header": (lambda b, a: b[:40], lambda n: r"no readable \.npy header \(40 bytes: "),
    "zero bytes": (lambda b, a: b"", lambda n: r"it is empty \(0 bytes\)"),
    "junk header": (lambda b, a: b"junk" * 32 + b[128:], lambda n: r"no readable \.npy header"),
    "longer": (lambda b, a: b + b"\0" * 7, lambda n: rf"longer than its array \({n + 7} of {n} bytes\)"),
    "wrong shape": (
        lambda b, a: _npy_of(a[:2]),
        lambda n: (
            r"uint8 array of shape \(2, 3, 3, 64, 32\), not the uint8 array of shape \(\d+, 3, 3, 64, 32\)"
        ),
    ),
    "wrong dtype": (
        lambda b, a: _npy_of(a.astype(np.float32)),
        lambda n: r"float32 array of shape \((\d+), 3, 3, 64, 32\), not the uint8 array of shape \(\1, 3",
    ),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_disk_cache_is_rebuilt_with_one_warning(
    root: Path, tmp_path: Path, disk_build: tuple[str, bytes], damage: str
) -> None:
    name, original = disk_build
    assert original[:6] == b"\x93NUMPY" and len(original) > 1000
    want = np.load(io.BytesIO(original))  # numpy's own reading of the fresh build
    spoil, says = DAMAGES[damage]
    path = tmp_path / name
    path.write_bytes(spoil(original, want))
    ds = build_dataset("RGBNT201", root)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cache = build_cache(ds.train, ds.name, IMG, "bicubic", "disk", tmp_path)
    ours = [str(w.message) for w in seen if "data.cache" in str(w.message)]
    assert len(ours) == 1 and "\n" not in ours[0], ours
    assert re.match(rf"data\.cache: rebuilding {re.escape(str(path))}: .*{says(len(original))}", ours[0])
    assert cache.path == path and path.read_bytes() == original  # whole again, same bytes
    assert cache.array.dtype == np.uint8 and np.array_equal(cache.array, want)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind
    del cache
    # The rebuilt file is whole: the next build reads it without a warning and without rewriting.
    stamp = path.stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = build_cache(ds.train, ds.name, IMG, "bicubic", "disk", tmp_path)
    assert path.stat().st_mtime_ns == stamp and np.array_equal(again.array, want)


def test_disk_cache_dir_that_is_a_file_is_named(root: Path, tmp_path: Path) -> None:
    from mambapro.errors import UserError
    from mambapro.train.runlog import check_run_folder

    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    ds = build_dataset("RGBNT201", root)
    for where, msg in (
        (afile, rf"^data\.cache_dir {re.escape(str(afile))} is a file, not a folder$"),
        (
            afile / "sub",
            rf"^data\.cache_dir {re.escape(str(afile / 'sub'))}: {re.escape(str(afile))} is a file",
        ),
    ):
        with pytest.raises(UserError, match=msg):
            build_cache(ds.train, ds.name, IMG, "bicubic", "disk", where)
        # The same check runs with the run folder's, before torch loads and the run folder exists.
        run = tmp_path / "run"
        cfg = load_config("demo", [f"train.output={run}", "data.cache=disk", f"data.cache_dir={where}"])
        with pytest.raises(UserError, match=msg):
            check_run_folder(cfg, resume=False)
        # Only the disk cache writes there: other cache modes do not look at data.cache_dir.
        for mode in ("none", "memory"):
            check_run_folder(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache=mode)), False)
    assert afile.read_text() == "not a folder"


def test_broken_images_are_all_named_before_training(root: Path, tmp_path: Path) -> None:
    shutil.copytree(root / "RGBNT201", tmp_path / "RGBNT201")
    ds = build_dataset("RGBNT201", tmp_path)
    bad = [Path(ds.train[1].paths[0]), Path(ds.train[3].paths[2])]
    bad[0].write_bytes(b"not a jpeg at all")
    bad[1].write_bytes(bad[1].read_bytes()[:300])  # truncated
    with pytest.raises(DatasetError) as err:
        build_train_loader(_cfg(cache="memory"), ds, IMG, seed=0)
    msg = str(err.value)
    assert "2 image file(s)" in msg and all(str(p) in msg for p in bad) and "\n" not in msg


def test_memory_cache_that_does_not_fit_is_refused(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mambapro.data.cache as cache_mod

    monkeypatch.setattr(cache_mod, "available_memory", lambda: 1000)
    ds = build_dataset("RGBNT201", root)
    need = len(ds.train) * 9 * IMG[0] * IMG[1] / 2**30
    with pytest.raises(DatasetError, match=rf"needs {need:.2f} GiB.*data\.cache=disk"):
        build_cache(ds.train, ds.name, IMG, "bicubic", "memory")


# ------------------------------------------------------------------------------- device augmentation


def _forced_cpu(
    tf: v2.Compose, images: list[torch.Tensor], prm: dict, fill: torch.Tensor
) -> list[torch.Tensor]:
    """Run the CPU train transform's own v2 steps with their random parameters forced."""
    for step in tf.transforms:
        if isinstance(step, v2.RandomHorizontalFlip):
            step.p = 1.0 if prm["flip"] else 0.0
        elif isinstance(step, v2.RandomCrop):
            base = v2.RandomCrop.make_params

            def crop_params(flat, step=step, base=base):
                return {**base(step, flat), "top": prm["top"], "left": prm["left"]}

            step.make_params = crop_params
        elif isinstance(step, v2.RandomErasing):
            step.p = 1.0 if prm["erase"] else 0.0
            i, j, h, w = prm["box"]
            step.make_params = lambda flat, i=i, j=j, h=h, w=w: {
                "i": i,
                "j": j,
                "h": h,
                "w": w,
                "v": fill[:, i : i + h, j : j + w],
            }
    out = tf(*[tv_tensors.Image(i) for i in images])  # as TripletTransform passes tensors
    return [t.as_subclass(torch.Tensor) for t in (out if isinstance(out, (tuple, list)) else [out])]


@pytest.mark.parametrize(
    ("independent", "mean", "std"),
    [
        (True, 0.45, 0.27),
        (False, 0.45, 0.27),
        (True, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),  # per channel (DINO's ImageNet stats)
    ],
)
def test_device_augmentation_equals_cpu_transform_under_forced_draws(independent: bool, mean, std) -> None:
    cfg = _cfg(erase_prob=0.7, padding=5, independent_aug=independent, mean=mean, std=std)
    b, size = 12, (32, 16)
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (3, b, 3, *size), dtype=torch.uint8, generator=g)
    noise = torch.randn((3, b, 3, *size), generator=g)
    if not independent:
        noise[1:] = noise[0]  # the aligned transform erases the three images with one fill
    p = draw_params(np.arange(b) * 7919 + 11, size, cfg.flip_prob, cfg.padding, cfg.erase_prob, independent)
    assert p.flip.any() and (~p.flip).any() and p.erase.any() and (~p.erase).any()
    tf = build_train_transform(cfg, size, resize=False).transform
    want = torch.empty(3, b, 3, *size)
    for k in range(b):
        for ms in [[0], [1], [2]] if independent else [[0, 1, 2]]:
            m = ms[0]
            prm = {
                "flip": p.flip[m, k],
                "top": int(p.top[m, k]),
                "left": int(p.left[m, k]),
                "erase": p.erase[m, k],
                "box": (int(p.ei[m, k]), int(p.ej[m, k]), int(p.eh[m, k]), int(p.ew[m, k])),
            }
            outs = _forced_cpu(tf, [imgs[j, k] for j in ms], prm, noise[m, k])
            for j, o in zip(ms, outs):
                want[j, k] = o
    for vectorised in (True, False):
        got = apply_params(imgs, p, cfg.padding, cfg.mean, cfg.std, noise=noise, vectorised=vectorised)
        assert torch.equal(got, want), vectorised


def test_vectorised_and_sliced_paths_draw_the_same_noise() -> None:
    imgs = torch.randint(0, 256, (3, 10, 3, 24, 16), dtype=torch.uint8)
    for independent in (True, False):
        p = draw_params(np.arange(10) + 5, (24, 16), 0.5, 3, 0.9, independent)
        a, b = (
            apply_params(
                imgs,
                p,
                3,
                0.5,
                0.5,
                noise_seed=1,
                shared_noise=not independent,
                vectorised=v,
            )
            for v in (True, False)
        )
        assert torch.equal(a, b)


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.union1d(a, b)
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def test_device_draws_follow_torchvision_distributions() -> None:
    n, (h, w), pad = 3000, (256, 128), 10
    p = draw_params(np.arange(n) * 3 + 1, (h, w), 0.5, pad, 0.5, independent=True)
    flip, top, erase = p.flip.ravel(), p.top.ravel(), p.erase.ravel()
    m = flip.size
    # torchvision's own draws of the same transforms (independent reference).
    torch.manual_seed(0)
    img = torch.zeros(3, h, w)
    crop = v2.RandomCrop((h, w))
    eraser = v2.RandomErasing(p=1.0, value="random")
    padded = torch.zeros(3, h + 2 * pad, w + 2 * pad)
    ref_top = np.array([crop.make_params([padded])["top"] for _ in range(3000)])
    ref_erase = [eraser.make_params([img]) for _ in range(4000)]
    ref_ok = np.array([r["v"] is not None for r in ref_erase])
    ref_hw = np.array([(r["h"], r["w"], r["i"], r["j"]) for r in ref_erase if r["v"] is not None])
    # Flip: Bernoulli(0.5).
    assert abs(flip.mean() - 0.5) < 4 * np.sqrt(0.25 / m)
    # Crop offsets: uniform on 0..2p (chi-square, 20 dof, p = 0.001 critical value 45.3), and
    # the same law as torchvision's draws.
    counts = np.bincount(top, minlength=2 * pad + 1)
    expected = m / (2 * pad + 1)
    assert counts.size == 2 * pad + 1 and ((counts - expected) ** 2 / expected).sum() < 45.3
    assert _ks(top, ref_top) < 1.95 * np.sqrt(1 / m + 1 / len(ref_top))
    # Erasing: gate x "an attempt fits" rate, and (area, aspect, position) laws of the boxes.
    fit_rate = ref_ok.mean()
    assert abs(erase.mean() - 0.5 * fit_rate) < 4 * np.sqrt(0.25 / m + 0.25 / len(ref_ok))
    eh, ew = p.eh.ravel()[erase], p.ew.ravel()[erase]
    ei, ej = p.ei.ravel()[erase], p.ej.ravel()[erase]
    crit = 1.95 * np.sqrt(1 / len(eh) + 1 / len(ref_hw))  # KS at alpha = 0.001
    assert _ks(eh * ew, ref_hw[:, 0] * ref_hw[:, 1]) < crit
    assert _ks(eh / ew, ref_hw[:, 0] / ref_hw[:, 1]) < crit
    assert _ks(ei / (h - eh + 1), ref_hw[:, 2] / (h - ref_hw[:, 0] + 1)) < crit
    assert _ks(ej / (w - ew + 1), ref_hw[:, 3] / (w - ref_hw[:, 1] + 1)) < crit
    assert (eh < h).all() and (ew < w).all() and (ei + eh <= h).all() and (ej + ew <= w).all()
    # Independent streams per modality; aligned: one draw for all three.
    assert abs(np.corrcoef(p.flip[0], p.flip[1])[0, 1]) < 0.06
    q = draw_params(np.arange(500), (h, w), 0.5, pad, 0.5, independent=False)
    assert (q.top[0] == q.top[1]).all() and (q.flip[1] == q.flip[2]).all() and (q.ei[0] == q.ei[2]).all()


def test_device_path_is_worker_independent_and_equals_uncached(root: Path) -> None:
    ds = build_dataset("RGBNT201", root)
    cfg = _cfg(augment_on="device", cache="memory")
    aug = DeviceAugment(cfg, IMG)
    runs = [
        list(build_train_loader(dataclasses.replace(cfg, num_workers=k), ds, IMG, seed=2)) for k in (0, 2)
    ]
    uncached = list(build_train_loader(dataclasses.replace(cfg, cache="none"), ds, IMG, seed=2))
    for a, b, c in zip(*runs, uncached):
        assert a["RGB"].dtype == torch.uint8 and torch.equal(a["seeds"], b["seeds"])
        for m in MODALITIES:
            assert torch.equal(a[m], b[m]) and torch.equal(a[m], c[m])
        x, y = aug(a), aug(b)
        for m in MODALITIES:
            assert x[m].dtype == torch.float32 and torch.equal(x[m], y[m])
    # Other epoch, other draws.
    loader = build_train_loader(cfg, ds, IMG, seed=2)
    loader.batch_sampler.set_epoch(1)
    assert not torch.equal(next(iter(loader))["seeds"], runs[0][0]["seeds"])


def test_modality_dropout_on_the_device_path(root: Path) -> None:
    ds = build_dataset("RGBNT201", root)
    cfg = _cfg(augment_on="device", cache="memory", erase_prob=0.0)
    loader = build_train_loader(cfg, ds, IMG, seed=6, modality_dropout=0.6)
    aug = DeviceAugment(cfg, IMG)
    seen = set()
    for batch in loader:
        out = aug(batch)
        for k, (seed, setting) in enumerate(zip(batch["seeds"].tolist(), batch["dropped"])):
            assert setting == draw_modality_dropout(seed, 0.6)
            gone = missing_modalities(setting)
            seen.add(setting)
            for m in MODALITIES:
                assert bool((out[m][k] == 0).all()) == (m in gone), (setting, m)
    assert "full" in seen and len(seen) > 2


def test_train_step_augments_on_the_device_path(root: Path, tmp_path: Path) -> None:
    from mambapro.train.distributed import DistInfo
    from mambapro.train.trainer import Trainer

    cfg = load_config(
        "demo",
        [
            f"data.root={root}",
            "data.synthetic=false",
            "data.img_size=[32,32]",
            "data.batch_size=4",
            "data.num_instances=2",
            "data.num_workers=0",
            "data.cache=memory",
            "data.augment_on=device",
            "train.modality_dropout=0.5",
            "train.epochs=1",
            "train.warmup_epochs=0",
            "train.iters_per_epoch=2",
            f"train.output={tmp_path / 'run'}",
        ],
    )
    trainer = Trainer(cfg, DistInfo(), quiet=True)
    seen: list[dict] = []
    trainer.model.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    record = trainer.train_epoch(0)
    assert np.isfinite(record["loss"]) and len(seen) == 2
    for batch in seen:  # the model gets the float batch, dropout applied, no seeds left
        assert "seeds" not in batch and batch["RGB"].dtype == torch.float32
        assert batch["RGB"].shape == (4, 3, 32, 32) and batch["RGB"].abs().max() > 1.0
    zeroed = [bool((b[m][k] == 0).all()) for b in seen for m in MODALITIES for k in range(4)]
    assert any(zeroed) and not all(zeroed)
