"""The FAISS gallery index (mambapro.retrieval.index): exact ranking, recall, add, files and errors."""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import IDENTITY
from mambapro.cli import main
from mambapro.config import config_to_dict, load_config
from mambapro.data.synth import generate
from mambapro.errors import UserError
from mambapro.evaluation import compute_distmat
from mambapro.models import build_model
from mambapro.retrieval.features import FeatureSet
from mambapro.retrieval.index import FaissMissingError, GalleryIndex, GalleryIndexError, run_index
from mambapro.retrieval.search import rank_index
from mambapro.train.checkpoint import save_checkpoint

N, F = 2000, 64
IDENT = IDENTITY


def _features(feats: np.ndarray, start: int = 0) -> FeatureSet:
    n = len(feats)
    rows = np.arange(start, start + n)
    return FeatureSet(
        feats.astype(np.float32),
        rows % 97,
        rows % 6,
        rows % 3,
        [f"gallery/{i:06d}_cam{i % 6}.jpg" for i in rows],
        dict(IDENT),
    )


@pytest.fixture(scope="module")
def random_set() -> tuple[FeatureSet, np.ndarray]:
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(N, F)).astype(np.float32) * rng.uniform(0.5, 3.0, size=(N, 1)).astype(
        np.float32
    )
    queries = rng.normal(size=(200, F)).astype(np.float32)
    return _features(gallery), queries


@pytest.fixture(scope="module")
def clustered_set() -> FeatureSet:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(100, F)).astype(np.float32)
    pids = rng.integers(0, 100, size=N)
    feats = centres[pids] + 0.35 * rng.normal(size=(N, F)).astype(np.float32)
    fs = _features(feats)
    fs.pids = pids
    return fs


@pytest.fixture(scope="module")
def flat(random_set) -> GalleryIndex:
    pytest.importorskip("faiss")
    return GalleryIndex.build(random_set[0])


def test_flat_ranking_equals_compute_distmat(random_set, flat) -> None:
    gallery, queries = random_set
    k = 50
    dist, rows = flat.search(queries, k)
    ref = compute_distmat(queries, gallery.feats)
    ref_rows = np.argsort(ref, axis=1, kind="stable")[:, :k]
    ref_top = np.take_along_axis(ref, ref_rows, 1)
    # The top-10 (what `search` shows) is identical; deeper down, two gallery entries whose
    # distances differ by one float32 rounding step (~1e-7) may trade places (FAISS and torch
    # sum the dot products in different orders): such swaps are ties, and nothing else differs.
    np.testing.assert_array_equal(rows[:, :10], ref_rows[:, :10])
    np.testing.assert_allclose(np.take_along_axis(ref, rows, 1), ref_top, atol=1e-6, rtol=0)
    assert (rows != ref_rows).mean() < 0.01
    np.testing.assert_allclose(dist, ref_top, atol=1e-5, rtol=0)
    assert dist.dtype == np.float32 and rows.dtype == np.int64
    # cosine: half the squared Euclidean distance on unit vectors, same ranking
    cdist, crows = flat.search(queries, k, metric="cosine")
    ref_c = compute_distmat(queries, gallery.feats, metric="cosine")
    np.testing.assert_array_equal(crows[:, :10], ref_rows[:, :10])
    np.testing.assert_allclose(cdist, np.take_along_axis(ref_c, ref_rows, 1), atol=1e-5, rtol=0)
    np.testing.assert_allclose(cdist, dist / 2, atol=1e-6, rtol=0)


def test_flat_k_larger_than_gallery_and_bad_queries(flat) -> None:
    small = GalleryIndex.build(_features(np.eye(5, F, dtype=np.float32) + 0.1))
    dist, rows = small.search(np.ones((2, F), np.float32), k=10)
    assert rows.shape == (2, 5) and sorted(rows[0]) == [0, 1, 2, 3, 4]
    assert np.all(np.diff(dist, axis=1) >= 0)
    with pytest.raises(GalleryIndexError, match="dimension 32 but the index holds 64-d"):
        flat.search(np.ones((1, 32), np.float32))
    with pytest.raises(GalleryIndexError, match="NaN or inf"):
        flat.search(np.full((1, F), np.nan, np.float32))


def test_ivf_pq_recall(clustered_set) -> None:
    pytest.importorskip("faiss")
    with pytest.warns(UserWarning, match="check the recall@10"):  # 2000 vectors for 256 PQ centroids
        gi = GalleryIndex.build(clustered_set, kind="ivf-pq", nlist=32, m=16, nbits=8, nprobe=8)
    assert gi.kind == "ivf-pq" and gi.ntotal == N
    assert gi.recall_queries == 1000
    assert 0.7 < gi.recall <= 1.0, gi.recall
    assert "recall@10" in gi.summary()
    dist, rows = gi.search(clustered_set.feats[:20], 10)
    assert rows.shape == (20, 10) and np.all(np.diff(dist, axis=1) >= 0)
    # the nearest neighbours mostly share the query's identity
    assert (clustered_set.pids[rows[:, 1:]] == clustered_set.pids[:20, None]).mean() > 0.9


def test_ivf_pq_bad_parameters(clustered_set) -> None:
    pytest.importorskip("faiss")
    with pytest.raises(GalleryIndexError, match="--m 12: must divide the feature dimension 64"):
        GalleryIndex.build(clustered_set, kind="ivf-pq", m=12)
    with pytest.raises(GalleryIndexError, match="--kind 'hnsw'"):
        GalleryIndex.build(clustered_set, kind="hnsw")
    tiny = _features(clustered_set.feats[:100])
    with pytest.raises(GalleryIndexError, match="cannot train 256 PQ centroids"):
        GalleryIndex.build(tiny, kind="ivf-pq", m=16)


def test_add_keeps_ids_and_equals_building_on_concatenation(random_set, tmp_path) -> None:
    faiss = pytest.importorskip("faiss")
    gallery, queries = random_set
    first = _features(gallery.feats[:1200])
    second = _features(gallery.feats[1200:], start=1200)
    gi = GalleryIndex.build(first)
    before = (gi.paths[:], gi.pids.copy())
    ids = gi.add(second)
    assert list(ids) == list(range(1200, N))
    assert gi.paths[:1200] == before[0] and np.array_equal(gi.pids[:1200], before[1])
    assert gi.paths == gallery.paths
    for name in ("pids", "camids", "sceneids"):
        np.testing.assert_array_equal(getattr(gi, name), getattr(gallery, name))
    whole = GalleryIndex.build(gallery)
    assert bytes(faiss.serialize_index(gi.index)) == bytes(faiss.serialize_index(whole.index))
    d1, r1 = gi.search(queries, 10)
    d2, r2 = whole.search(queries, 10)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(d1, d2)
    # refused: a width mismatch, and captures already indexed
    with pytest.raises(GalleryIndexError, match="dimension 32 but the index holds 64-d"):
        gi.add(_features(np.ones((3, 32), np.float32), start=5000))
    with pytest.raises(GalleryIndexError, match="already in the index"):
        gi.add(_features(gallery.feats[:2]))
    assert gi.ntotal == N and len(gi.paths) == N


def test_save_load_round_trip(random_set, clustered_set, flat, tmp_path) -> None:
    faiss = pytest.importorskip("faiss")
    gallery, queries = random_set
    path = flat.save(tmp_path / "gallery.index")
    assert path == tmp_path / "gallery.index" and path.is_file()
    back = GalleryIndex.load(path)
    assert back.kind == "flat" and back.ntotal == N and back.dim == F and back.recall is None
    assert back.paths == [os.path.abspath(p) for p in gallery.paths]  # stored absolute
    np.testing.assert_array_equal(back.pids, gallery.pids)
    np.testing.assert_array_equal(back.search(queries, 10)[1], flat.search(queries, 10)[1])
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left
    with pytest.raises(GalleryIndexError, match=f"dimension 32 but the index {path} holds 64-d"):
        back.search(np.ones((1, 32), np.float32))
    with pytest.warns(UserWarning):
        ivf = GalleryIndex.build(clustered_set, kind="ivf-pq", nlist=16, m=8, nprobe=4)
    ivf.save(path)  # overwrites
    back = GalleryIndex.load(path)
    assert back.kind == "ivf-pq" and back.recall == ivf.recall and back.params == ivf.params
    assert faiss.extract_index_ivf(back.index).nprobe == 4
    wide = back.search(clustered_set.feats[:5], 10, nprobe=16)[1]
    assert wide.shape == (5, 10) and back.index.nprobe == 4  # the override lasts one call
    np.testing.assert_array_equal(
        back.search(clustered_set.feats[:5], 10)[1], ivf.search(clustered_set.feats[:5], 10)[1]
    )


def test_rank_index_leaves_out_the_query_file(flat, random_set) -> None:
    gallery, _ = random_set
    query = _features(gallery.feats[:3])  # the same paths as gallery rows 0..2
    ranked = rank_index(flat, query, k=5)
    assert [len(m) for m in ranked] == [5, 5, 5]
    for i, matches in enumerate(ranked):
        assert all(m.index != i for m in matches)
        assert [m.rank for m in matches] == [1, 2, 3, 4, 5]
        assert all(m.same_identity == (m.pid == int(query.pids[i])) for m in matches)
        ref = compute_distmat(query.feats[i : i + 1], gallery.feats)[0]
        order = [j for j in np.argsort(ref, kind="stable") if j != i][:5]
        assert [m.index for m in matches] == order


def _good_file(flat, tmp_path: Path) -> Path:
    return flat.save(tmp_path / "good.index")


def test_corrupt_files_raise_the_named_error(flat, random_set, tmp_path) -> None:
    good = _good_file(flat, tmp_path).read_bytes()
    cases = {}
    cases["random.index"] = np.random.default_rng(0).bytes(5000)
    cases["truncated.index"] = good[: len(good) // 2]
    cases["flipped.index"] = good[:3000] + bytes(b ^ 0xFF for b in good[3000:3100]) + good[3100:]
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    # an .npz without the index key, and a features file given as an index
    with zipfile.ZipFile(tmp_path / "good.index") as z, zipfile.ZipFile(tmp_path / "nokey.index", "w") as out:
        for item in z.namelist():
            if item != "index.npy":
                out.writestr(item, z.read(item))
    random_set[0].save(tmp_path / "features.npz")
    np.save(tmp_path / "bare.npy", np.zeros(3))
    for name in [*cases, "nokey.index", "features.npz", "bare.npy", "missing.index"]:
        with pytest.raises(GalleryIndexError) as info:
            GalleryIndex.load(tmp_path / name)
        message = str(info.value)
        assert name in message and "\n" not in message, message
        assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    with pytest.raises(GalleryIndexError, match=r"lacks the arrays \['index'\]"):
        GalleryIndex.load(tmp_path / "nokey.index")
    for name in ("random.index", "bare.npy"):
        with pytest.raises(GalleryIndexError, match=r"not an \.npz archive"):
            GalleryIndex.load(tmp_path / name)
    with pytest.raises(GalleryIndexError, match="looks like a features file"):
        GalleryIndex.load(tmp_path / "features.npz")


def _rewrite(src: Path, dst: Path, **replace) -> Path:
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(replace)
    with open(dst, "wb") as fh:
        np.savez(fh, **arrays)
    return dst


def test_mismatched_files_raise_the_named_error(flat, tmp_path) -> None:
    good = _good_file(flat, tmp_path)
    header = json.loads(str(np.load(good)["header"][()]))
    version = _rewrite(good, tmp_path / "v.index", header=np.asarray(json.dumps({**header, "version": 99})))
    with pytest.raises(GalleryIndexError, match="format version 99"):
        GalleryIndex.load(version)
    short = _rewrite(good, tmp_path / "short.index", paths=np.asarray(flat.paths[:-1]))
    with pytest.raises(GalleryIndexError, match=f"paths has .* the index holds {N} rows"):
        GalleryIndex.load(short)
    kind = _rewrite(
        good, tmp_path / "kind.index", header=np.asarray(json.dumps({**header, "kind": "ivf-pq"}))
    )
    with pytest.raises(GalleryIndexError, match="the header says ivf-pq but the index is a IndexFlatIP"):
        GalleryIndex.load(kind)
    size = _rewrite(good, tmp_path / "n.index", header=np.asarray(json.dumps({**header, "ntotal": 7})))
    with pytest.raises(GalleryIndexError, match="the header says 7 x 64"):
        GalleryIndex.load(size)
    garbage = _rewrite(good, tmp_path / "g.index", index=np.arange(200, dtype=np.uint8))
    with pytest.raises(GalleryIndexError, match="corrupt gallery index"):
        GalleryIndex.load(garbage)


def test_atomic_write_keeps_the_old_file(flat, monkeypatch, tmp_path) -> None:
    path = _good_file(flat, tmp_path)
    before = path.read_bytes()
    small = GalleryIndex.build(_features(np.ones((4, F), np.float32)))

    def fail(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        small.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.index"]  # the temporary file is gone
    assert GalleryIndex.load(path).ntotal == N


def test_run_index_build_and_add(random_set, tmp_path, capsys) -> None:
    pytest.importorskip("faiss")
    gallery, queries = random_set
    _features(gallery.feats[:1500]).save(tmp_path / "a.npz")
    _features(gallery.feats[1500:], start=1500).save(tmp_path / "b.npz")
    out = tmp_path / "gallery.index"
    run_index("build", tmp_path / "a.npz", out)
    line = capsys.readouterr().out.strip()
    assert line.startswith("indexed 1500 captures of dimension 64, kind flat") and str(out) in line
    run_index("add", [tmp_path / "b.npz"], out)
    line = capsys.readouterr().out.strip()
    assert line.startswith("added 500 captures; now 2000 captures") and "\n" not in line
    gi = GalleryIndex.load(out)
    # Stored absolute (features files resolve their images from any working folder).
    assert gi.paths == [os.path.abspath(p) for p in gallery.paths]
    assert gi.identity == IDENT
    np.testing.assert_array_equal(
        gi.search(queries, 10)[1], GalleryIndex.build(gallery).search(queries, 10)[1]
    )
    _features(np.ones((3, 32), np.float32), start=9000).save(tmp_path / "narrow.npz")
    with pytest.raises(GalleryIndexError, match="narrow.npz: features have dimension 32"):
        run_index("add", tmp_path / "narrow.npz", out)
    with pytest.raises(GalleryIndexError, match="features have dimension 32 but .*a.npz has 64"):
        run_index("build", [tmp_path / "a.npz", tmp_path / "narrow.npz"], tmp_path / "x.index")
    with pytest.raises(UserError, match=r"--features .*nope.npz: no such file"):  # as the CLI says
        run_index("build", tmp_path / "nope.npz", tmp_path / "x.index")
    assert not (tmp_path / "x.index").exists()


def test_missing_faiss_names_the_extra(monkeypatch, random_set) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` fails as if not installed
    with pytest.raises(
        FaissMissingError, match=r"faiss is not installed: pip install 'mambapro\[deploy\]'"
    ) as info:
        GalleryIndex.build(random_set[0])
    assert isinstance(info.value, UserError) and isinstance(info.value, ImportError)


def test_search_with_an_index_ranks_as_with_the_features_file(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    data = tmp_path / "data"
    generate("rgbnt201", data, seed=8, ids=6, test_ids=3, cameras=2, shots=2)
    cfg = load_config("demo", ["data.synthetic=false", "data.img_size=[32,32]", "data.num_workers=0"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=3, num_cameras=2)
    state = {"model": model.state_dict(), "config": config_to_dict(cfg), "num_classes": 3, "num_cameras": 2}
    ckpt = str(save_checkpoint(state, tmp_path / "last.ckpt"))
    gallery, index = tmp_path / "gallery.npz", tmp_path / "gallery.index"
    argv = ["extract", "-q", "--checkpoint", ckpt, "--data-root", str(data), "--split", "gallery"]
    assert main([*argv, "--out", str(gallery)]) == 0
    assert main(["index", "build", "--features", str(gallery), "--out", str(index)]) == 0
    query = sorted((data / "RGBNT201/test/NI").iterdir())[0]  # any modality file names the capture
    rankings = []
    for source in (["--gallery", str(gallery)], ["--index", str(index)]):
        out = tmp_path / f"ranks_{source[0][2:]}.png"
        assert (
            main(["search", "-q", "--checkpoint", ckpt, "--query", str(query), *source, "--out", str(out)])
            == 0
        )
        ranks = json.loads(out.with_suffix(".json").read_text())["queries"]
        rankings.append({q: [(m["path"], m["distance"]) for m in ms] for q, ms in ranks.items()})
    (exact,), (approx,) = rankings[0].values(), rankings[1].values()
    assert len(exact) == len(approx) == 10
    # Same distances rank by rank; entries may swap only where their distances tie to float32
    # rounding (the index computes 2 - 2 cos, compute_distmat the squared difference).
    assert [d for _, d in exact] == pytest.approx([d for _, d in approx], abs=1e-5)
    for (pa, da), (pb, _) in zip(exact, approx):
        assert pa == pb or any(p == pb and abs(d - da) < 1e-5 for p, d in exact), (pa, pb)
    # Both a gallery and an index, or neither: one line, exit 2.
    assert (
        main(["search", "--checkpoint", ckpt, "--query", str(query), "--out", str(tmp_path / "x.png")]) == 2
    )
