"""Features files and indexes know the model that made them; damaged files are refused in one line."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import IDENTITY
from mambapro.errors import UserError
from mambapro.retrieval.features import FeatureSet
from mambapro.retrieval.identity import EmbeddingMismatchError, check_same_model, weights_fingerprint
from mambapro.retrieval.index import GalleryIndex
from mambapro.retrieval.search import rank_gallery

IDENT = IDENTITY


def _set(n: int = 6, identity: dict | None = IDENT, start: int = 0, dim: int = 8) -> FeatureSet:
    rng = np.random.default_rng(start)
    rows = np.arange(start, start + n)
    return FeatureSet(
        rng.normal(size=(n, dim)).astype(np.float32),
        rows % 3,
        rows % 2,
        np.zeros(n),
        [f"g/{i:04d}.jpg" for i in rows],
        None if identity is None else dict(identity),
    )


def test_weights_fingerprint_follows_the_values_not_the_objects() -> None:
    state = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4), "n": torch.tensor(3)}
    base = weights_fingerprint(state)
    assert len(base) == 16 and int(base, 16) >= 0
    assert weights_fingerprint({k: v.clone() for k, v in reversed(list(state.items()))}) == base
    assert weights_fingerprint({**state, "b": state["b"].t().contiguous().t()}) == base  # same values
    changed = {**state, "a": torch.tensor([1.0, 1.0, 1.0, 1.0 + 2**-20])}
    assert weights_fingerprint(changed) != base
    assert weights_fingerprint({**state, "a": state["a"].double()}) != base  # same numbers, other dtype
    assert weights_fingerprint({**state, "b": state["b"].reshape(3, 2)}) != base  # same bytes, other shape
    assert weights_fingerprint({**state, "c": torch.zeros(0)}) != base  # one more (empty) entry


def test_check_same_model_names_each_difference_and_both_sides() -> None:
    other = {**IDENT, "feature": "ori", "img_size": [384, 128], "checkpoint": "b/last.ckpt"}
    with pytest.raises(EmbeddingMismatchError) as err:
        check_same_model(IDENT, "--index g.index", other, "--checkpoint b/last.ckpt")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("--index g.index and --checkpoint b/last.ckpt hold embeddings of different models")
    assert "test.feature fuse vs ori; image size 256x128 vs 384x128" in msg
    assert "weights" not in msg.split("(")[1].split(";")[0]  # the weights agree: not listed
    assert "made from a/last.ckpt vs b/last.ckpt" in msg and "same test.* settings" in msg
    check_same_model(IDENT, "a", {**IDENT, "checkpoint": "elsewhere"}, "b")  # the path is not compared
    check_same_model(IDENT, "a", {**IDENT, "modalities": "TI"}, "b")  # any-to-any: allowed
    check_same_model(None, "a", IDENT, "b")  # an older file: nothing to compare


def test_features_file_keeps_identity_and_absolute_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _set().save(tmp_path / "f.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = FeatureSet.load(tmp_path / "f.npz")
    assert back.identity == IDENT
    assert back.paths == [str(tmp_path / f"g/{i:04d}.jpg") for i in range(6)]
    _set(identity=None).save(tmp_path / "old.npz")
    with pytest.warns(
        UserWarning, match=r"old.npz was written by an older mambapro and does not record the model"
    ):
        assert FeatureSet.load(tmp_path / "old.npz").identity is None


@pytest.mark.parametrize("damage", ["empty", "half", "tail", "middle"])
def test_damaged_features_file_is_one_line(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "f.npz"
    _set(n=200).save(path)
    data = bytearray(path.read_bytes())
    if damage == "empty":
        data = bytearray()
    elif damage == "half":
        data = data[: len(data) // 2]
    elif damage == "tail":
        data = data[:-10]
    else:  # the feature bytes overwritten in place: the archive's CRC no longer matches
        data[len(data) // 3 : len(data) // 3 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(UserError) as err:
        FeatureSet.load(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert ("empty: 0 bytes" in msg) if damage == "empty" else ("damaged features file" in msg)


def test_index_carries_the_identity_and_refuses_another_model(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    gi = GalleryIndex.build(_set())
    gi.save(tmp_path / "g.index")
    back = GalleryIndex.load(tmp_path / "g.index")
    assert back.identity == IDENT
    with pytest.raises(
        EmbeddingMismatchError,
        match=r"new.npz and the index .*g.index .*\(weights ffff000011112222 vs 0123456789abcdef",
    ):
        back.add(_set(start=10, identity={**IDENT, "weights": "ffff000011112222"}), what="new.npz")
    with pytest.raises(EmbeddingMismatchError, match=r"modalities NI\+TI vs RGB\+NI\+TI"):
        back.add(_set(start=10, identity={**IDENT, "modalities": "NI+TI"}), what="new.npz")
    assert back.ntotal == 6  # nothing was added
    assert list(back.add(_set(start=10), what="new.npz")) == list(range(6, 12))
    legacy = GalleryIndex.build(_set(identity=None))
    legacy.save(tmp_path / "old.index")
    with pytest.warns(UserWarning, match=r"old.index was written by an older mambapro"):
        assert GalleryIndex.load(tmp_path / "old.index").identity is None


def test_a_query_is_left_out_of_its_own_ranking_however_its_path_is_spelled(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    gallery = _set(n=4)
    gallery.paths = [os.path.abspath(p) for p in gallery.paths]  # as a features file stores them
    dist = np.array([0.0, 0.5, 0.2, 0.9])
    ranked = rank_gallery(dist, "g/0000.jpg", 0, gallery, k=3)  # the query as the user typed it
    assert [m.index for m in ranked] == [2, 1, 3]
