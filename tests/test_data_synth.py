"""The synthetic generator: determinism, layout rules, argument checks, and that it is a fair problem.

The fairness test computes a naive raw-pixel baseline with its own small mAP (market protocol) on
the default-size test split: raw pixels must retrieve better than chance but far from solving it,
and fusing the three modalities must beat each single modality on the night captures.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mambapro.config import SynthConfig
from mambapro.data import build_dataset, read_triplet, synth

SMALL = dict(ids=4, test_ids=2, cameras=2, shots=2, scenes=2)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.jpg"))
    }


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = synth.generate("msvr310", tmp_path / "a", seed=5, **SMALL)
    b = synth.generate("msvr310", tmp_path / "b", seed=5, **SMALL)
    c = synth.generate("msvr310", tmp_path / "c", seed=6, **SMALL)
    assert a == tmp_path / "a" / "msvr310"
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert len(da) == 3 * (4 * 2 * 2 + 2 * 2)  # train + test + query copies, three modalities
    assert da == db
    assert set(da) == set(dc) and all(da[k] != dc[k] for k in da)


def test_capture_independent_of_dataset_size() -> None:
    """A capture depends on (seed, pid, camera, shot) only, not on how many others are drawn."""
    ids_small = synth.make_identities(0, 10, 5)
    ids_large = synth.make_identities(0, 10, 5)
    a = synth.render_capture(ids_small[3], "rgbnt201", 1, 2, seed=0)
    b = synth.render_capture(ids_large[3], "rgbnt201", 1, 2, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3]))
    c = synth.render_capture(ids_small[3], "rgbnt201", 1, 1, seed=0)
    assert not np.array_equal(a[0], c[0])


def test_train_and_test_identities_are_disjoint(tmp_path: Path) -> None:
    synth.generate("rgbnt100", tmp_path, seed=0, ids=6, test_ids=3, cameras=3, shots=1)
    meta = synth.load_meta("rgbnt100", tmp_path)
    train = {c["pid"] for c in meta["captures"] if c["split"] == "train"}
    test = {c["pid"] for c in meta["captures"] if c["split"] == "test"}
    assert train == {1, 2, 3} and test == {4, 5, 6}
    ds = build_dataset("RGBNT100", tmp_path)
    assert {s.pid for s in ds.gallery} == test
    assert len(ds.query) == 3 * 3


def test_defaults_match_config() -> None:
    import inspect

    sig = inspect.signature(synth.generate).parameters
    for key, value in vars(SynthConfig()).items():
        assert sig[key].default == value, key


def test_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown synthetic layout 'market'"):
        synth.generate("market", tmp_path)
    with pytest.raises(ValueError, match="cameras = 9 must be in 2..8 for the rgbnt100 layout"):
        synth.generate("rgbnt100", tmp_path, cameras=9)
    with pytest.raises(ValueError, match="ids = 5 must exceed test_ids = 5"):
        synth.generate("rgbnt201", tmp_path, ids=5, test_ids=5)
    with pytest.raises(ValueError, match="needs shots >= 2 and scenes >= 2"):
        synth.generate("msvr310", tmp_path, scenes=1)
    real = tmp_path / "RGBNT201"
    real.mkdir()
    (real / "keep.txt").write_text("a real dataset")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        synth.generate("rgbnt201", tmp_path, **SMALL)
    assert (real / "keep.txt").is_file()


def test_regenerating_replaces_the_tree(tmp_path: Path) -> None:
    synth.generate("rgbnt201", tmp_path, seed=0, ids=5, test_ids=2, cameras=2, shots=1)
    synth.generate("rgbnt201", tmp_path, seed=0, ids=4, test_ids=2, cameras=2, shots=1)
    ds = build_dataset("RGBNT201", tmp_path)
    assert ds.num_train_pids == 2 and len(ds.gallery) == 4  # no stale files of the first run
    assert "ids=4" in synth.summary("rgbnt201", tmp_path)


# --------------------------------------------------------------------------- fairness


def _map_market(dist: np.ndarray, pids: np.ndarray, cams: np.ndarray, queries: np.ndarray) -> float:
    """Plain mAP over ``queries`` with query = gallery and same (pid, camera) junk."""
    aps = []
    for q in np.nonzero(queries)[0]:
        keep = ~((pids == pids[q]) & (cams == cams[q]))
        match = pids[keep][np.argsort(dist[q, keep], kind="stable")] == pids[q]
        if not match.any():
            continue
        ranks = np.nonzero(match)[0] + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return float(np.mean(aps))


def _pixel_features(images: list, size: tuple[int, int]) -> torch.Tensor:
    """Downsampled raw pixels, centred and L2-normalised per image."""
    x = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() for im in images])
    x = F.adaptive_avg_pool2d(x, size).flatten(1)
    return F.normalize(x - x.mean(1, keepdim=True), dim=1)


@pytest.fixture(scope="module")
def default_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import dataclasses

    from mambapro.config import load_config

    root = tmp_path_factory.mktemp("synth_default")
    synth.generate("rgbnt201", root, **dataclasses.asdict(load_config("demo").data.synth))  # the demo's
    return root


def test_raw_pixels_do_not_solve_it_and_fusion_helps_at_night(default_tree: Path) -> None:
    ds = build_dataset("RGBNT201", default_tree)
    p = synth.load_meta("rgbnt201", default_tree)["params"]
    per_id = p["cameras"] * p["shots"]
    assert len(ds.train) == (p["ids"] - p["test_ids"]) * per_id and len(ds.gallery) == p["test_ids"] * per_id
    meta = synth.load_meta("rgbnt201", default_tree)
    night_of = {c["name"]: c["night"] for c in meta["captures"]}
    triplets = [read_triplet(s, ds.name) for s in ds.gallery]
    pids = np.array([s.pid for s in ds.gallery])
    cams = np.array([s.camid for s in ds.gallery])
    night = np.array([night_of[Path(s.paths[0]).name] for s in ds.gallery])
    assert 0.1 < night.mean() < 0.5

    feats = {m: _pixel_features([t[k] for t in triplets], (16, 8)) for k, m in enumerate(("R", "N", "T"))}
    feats["fused"] = F.normalize(torch.cat([feats["R"], feats["N"], feats["T"]], 1), dim=1)
    all_q = np.ones(len(pids), bool)

    def score(f: torch.Tensor, queries: np.ndarray) -> float:
        return _map_market(torch.cdist(f, f).numpy(), pids, cams, queries)

    # Chance level: random features, averaged over draws.
    g = torch.Generator().manual_seed(0)
    chance = np.mean([score(torch.randn(len(pids), 64, generator=g), all_q) for _ in range(5)])
    fused = score(feats["fused"], all_q)
    print(f"chance {chance:.3f} fused {fused:.3f}", {m: round(score(f, night), 3) for m, f in feats.items()})
    assert 0.05 < chance < 0.09
    assert 1.3 * chance < fused < 0.3
    night_fused = score(feats["fused"], night)
    for m in ("R", "N", "T"):
        assert night_fused > score(feats[m], night), m
