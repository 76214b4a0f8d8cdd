"""Deployment follows the model's modalities: a two-modality (RGB + TI) model extracted, indexed,
searched, exported and served.

The dataset is RGBNT201's synthetic tree without its NI folders, registered for this module as a
dataset of its own whose spec names RGB and TI; the model is the demo preset's tiny one built for
those two modalities.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import io
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mambapro.cli import main
from mambapro.config import config_to_dict, load_config
from mambapro.data import DATASETS, dataset_spec, samples_at, triplet_paths
from mambapro.data.synth import generate
from mambapro.deploy.export import TestTimeModel, input_names, load_exported
from mambapro.evaluation import compute_distmat
from mambapro.modalities import RGB_NI_TI, ModalitySet
from mambapro.models import build_model
from mambapro.retrieval import search as search_module
from mambapro.retrieval.features import FeatureSet, eval_loader, extract_features
from mambapro.retrieval.identity import EmbeddingMismatchError, check_same_model, model_identity
from mambapro.retrieval.search import draw_rank_list
from mambapro.train.checkpoint import load_model, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

DUAL = ModalitySet.of(("RGB", "TI"))
NAME = "RGBTI201"
NUM_CAMERAS = 2
K = 4


@pytest.fixture(scope="module")
def dual(tmp_path_factory: pytest.TempPathFactory):
    """The RGB + TI dataset (registered while the module runs), a random-weight checkpoint of a
    model built for it, and its gallery features and index, made by the commands."""
    tmp = tmp_path_factory.mktemp("dual")
    spec = dataclasses.replace(
        dataset_spec("RGBNT201"), name=NAME, folder=NAME, modality_folders=DUAL.keys, modalities=DUAL
    )
    DATASETS.register(NAME)(spec)
    try:
        generate("rgbnt201", tmp / "three", seed=8, ids=6, test_ids=3, cameras=NUM_CAMERAS, shots=2)
        data = tmp / "data"
        for split in set(spec.splits.values()):
            for m in DUAL:
                shutil.copytree(tmp / "three" / "RGBNT201" / split / m, data / NAME / split / m)
        overrides = [
            f"data.dataset={NAME}",
            "data.synthetic=false",
            "data.img_size=[32,32]",
            "data.num_workers=0",
            "model.ma_depth=1",
        ]
        cfg = load_config("demo", overrides)
        torch.manual_seed(0)
        model = build_model(cfg, num_classes=3, num_cameras=NUM_CAMERAS, modalities=DUAL)
        # Non-trivial BatchNorm statistics, so the neck is exercised as trained models use it.
        for bn in (model.ori_head.bn, model.fuse_head.bn):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
        state = {
            "model": model.state_dict(),
            "config": config_to_dict(cfg),
            "num_classes": 3,
            "num_cameras": NUM_CAMERAS,
            "modalities": DUAL.to_dict(),
        }
        ckpt = save_checkpoint(state, tmp / "last.ckpt")
        gallery, index = tmp / "gallery.npz", tmp / "gallery.index"
        argv = ["extract", "-q", "--checkpoint", str(ckpt), "--data-root", str(data), "--split", "gallery"]
        assert main([*argv, "--out", str(gallery)]) == 0
        if importlib.util.find_spec("faiss") is not None:
            assert main(["index", "build", "--features", str(gallery), "--out", str(index)]) == 0
        model, cfg, _ = load_model(ckpt)
        yield {
            "tmp": tmp,
            "data": data,
            "ckpt": ckpt,
            "cfg": cfg,
            "model": model,
            "gallery": FeatureSet.load(gallery),
            "gallery_file": gallery,
            "index": index,
            "queries": samples_at(data / NAME / "test", NAME),
        }
    finally:
        DATASETS.unregister(NAME)


def _expected(dual: dict, sample, missing: str) -> np.ndarray:
    """``sample``'s distances to every gallery row, through the test loader and compute_distmat."""
    cfg = dual["cfg"]
    loader = eval_loader(cfg, [sample], NAME, missing=missing)
    feats = extract_features(dual["model"], loader, torch.device("cpu")).feats
    return compute_distmat(feats, dual["gallery"].feats, metric=cfg.test.distance)[0]


def test_features_record_the_model_modalities(dual: dict) -> None:
    identity = dual["gallery"].identity
    assert identity["modality_set"] == "RGB+TI" and identity["modalities"] == "RGB+TI"
    assert model_identity(dual["model"], (32, 32), "x", missing="T")["modalities"] == "RGB"
    assert len(dual["gallery"].paths) == len(dual["queries"])


def test_a_gallery_of_another_modality_set_is_one_line(dual: dict) -> None:
    dual_id = dual["gallery"].identity
    three = {**dual_id, "modality_set": "RGB+NI+TI", "modalities": "RGB+NI+TI"}
    with pytest.raises(EmbeddingMismatchError) as err:
        check_same_model(three, "--index g.index", dual_id, "--checkpoint b.ckpt")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("--index g.index and --checkpoint b.ckpt hold embeddings of models of different")
    assert "(RGB+NI+TI vs RGB+TI;" in msg
    # Identities written before the set was recorded are of RGB, NI, TI models.
    old = {k: v for k, v in three.items() if k != "modality_set"}
    with pytest.raises(EmbeddingMismatchError, match=r"different modalities \(RGB\+NI\+TI vs RGB\+TI"):
        check_same_model(old, "a", dual_id, "b")
    check_same_model(old, "a", three, "b")


def test_search_draws_one_row_per_modality(dual: dict, tmp_path: Path) -> None:
    query = sorted((dual["data"] / NAME / "test" / "TI").iterdir())[0]
    out = tmp_path / "ranks.png"
    argv = ["search", "-q", "--checkpoint", str(dual["ckpt"]), "--query", str(query), "-k", str(K)]
    assert main([*argv, "--gallery", str(dual["gallery_file"]), "--out", str(out)]) == 0
    cell = search_module._THUMB_HEIGHT + 2 * search_module._BORDER
    two_rows = 14 + len(DUAL) * (cell + 6) + 6  # the caption line, then one row per modality
    with Image.open(out) as img:
        assert img.height == two_rows
    ranks = json.loads(out.with_suffix(".json").read_text())["queries"]
    (matches,) = ranks.values()
    assert len(matches) == K
    # The analysis pages draw rank lists with the dataset's rows, without naming the model's set.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every thumbnail is read: no placeholder
        again = draw_rank_list(str(query), [], NAME, tmp_path / "again.png")
    with Image.open(again) as img:
        assert img.height == two_rows


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_export_takes_one_input_per_modality_and_equals_the_eager_model(
    dual: dict, tmp_path: Path, fmt: str
) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    out = tmp_path / f"model.{fmt}"
    assert main(["export", "-q", "--checkpoint", str(dual["ckpt"]), "--out", str(out)]) == 0
    exported = load_exported(out)
    assert exported.metadata["inputs"] == ["rgb", "ti", "camids"]
    assert exported.metadata["modalities"] == ["RGB", "TI"]
    if fmt == "onnx":
        names = [i.name for i in exported.runner.get_inputs()]
    else:
        names = list(torch.export.load(out).graph_signature.user_inputs)
    assert names == ["rgb", "ti", "camids"]
    gen = torch.Generator().manual_seed(7)
    images = [torch.randn(5, 3, 32, 32, generator=gen) for _ in DUAL]
    camids = torch.tensor([0, 1, 1, 0, 1])
    got = exported.run((*(x.numpy() for x in images), camids.numpy()))
    with torch.no_grad():
        want = dual["model"]({"RGB": images[0], "TI": images[1], "camids": camids}).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_the_export_wrapper_is_named_after_the_set(dual: dict) -> None:
    wrapper = TestTimeModel(dual["model"], camids=False)
    assert list(inspect.signature(wrapper.forward).parameters) == ["rgb", "ti", "camids"]
    assert wrapper.input_names == ("rgb", "ti")
    assert input_names(RGB_NI_TI) == ("rgb", "ni", "ti")
    assert input_names(ModalitySet.of(("RGB", "IN", "Camids"))) == ("rgb", "in_", "camids_")
    images = [torch.randn(2, 3, 32, 32) for _ in DUAL]
    with torch.no_grad():
        got = wrapper(*images)
        want = dual["model"](dict(zip(DUAL, images)))
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    with pytest.raises(TypeError, match=r"expected 2 images \(rgb, ti\)"):
        wrapper(images[0])


@pytest.fixture(scope="module")
def client(dual: dict):
    pytest.importorskip("faiss")
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from mambapro.deploy.serve import SearchService, ServeOptions, create_app
    from mambapro.retrieval.index import GalleryIndex

    service = SearchService(
        dual["model"], dual["cfg"], GalleryIndex.load(dual["index"]), options=ServeOptions(k=K)
    )
    assert service.modalities == DUAL
    return TestClient(create_app(service))


def _files(sample, modalities) -> dict:
    files = dict(zip(DUAL, triplet_paths(sample.paths[0], NAME)))
    return {m: (Path(files[m]).name, Path(files[m]).read_bytes(), "image/jpeg") for m in modalities}


@pytest.mark.parametrize(
    ("present", "missing", "label"),
    [(("RGB", "TI"), "full", "full"), (("RGB",), "T", "-T"), (("TI",), "R", "-R")],
)
def test_serve_takes_the_set_and_fills_a_missing_one_by_its_setting(
    dual: dict, client, present, missing: str, label: str
) -> None:
    sample = dual["queries"][1]
    response = client.post("/search", files=_files(sample, present), data={"camid": str(sample.camid)})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["query"] == {"present": "+".join(present), "missing": label, "camid": sample.camid}
    assert len(answer["matches"]) == K
    assert all(set(m["images"]) == {"RGB", "TI"} for m in answer["matches"])
    dist = _expected(dual, sample, missing)
    rows = np.argsort(dist, kind="stable")[:K]
    np.testing.assert_allclose([m["distance"] for m in answer["matches"]], dist[rows], atol=1e-5, rtol=0)


def test_serve_refuses_fields_of_other_modalities(client) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="PNG")
    upload = ("a.png", buf.getvalue(), "image/png")
    cases = [
        ({"NI": upload}, {}, "unknown file field 'NI': send RGB, TI"),
        ({}, {"k": "3"}, "no image: send at least one of the file fields RGB, TI"),
        ({"RGB": upload}, {"NI": "x"}, "unknown field 'NI': send RGB, TI, k, camid"),
    ]
    for files, data, detail in cases:
        response = client.post("/search", files=files or None, data=data)
        assert response.status_code == 400 and response.json()["detail"] == detail
    assert client.get("/gallery/0/TI").status_code == 200
    response = client.get("/gallery/0/NI")
    assert (
        response.status_code == 404 and response.json()["detail"] == "unknown modality 'NI': one of RGB, TI"
    )


def test_the_page_and_health_show_the_set(client) -> None:
    page = client.get("/").text
    assert 'name="RGB"' in page and 'name="TI"' in page and 'name="NI"' not in page
    assert "any non-empty subset of the two modality images" in page
    assert re.search(r'"modalities": \["RGB", "TI"\]', page)
    assert client.get("/health").json()["modalities"] == ["RGB", "TI"]


def test_a_three_modality_gallery_is_refused_by_a_two_modality_model(dual: dict) -> None:
    from mambapro.deploy.serve import SearchService
    from mambapro.retrieval.index import GalleryIndex

    pytest.importorskip("faiss")
    gallery = dual["gallery"]
    three = {**gallery.identity, "modality_set": "RGB+NI+TI", "modalities": "RGB+NI+TI"}
    other = FeatureSet(gallery.feats, gallery.pids, gallery.camids, gallery.sceneids, gallery.paths, three)
    with pytest.raises(EmbeddingMismatchError, match=r"different modalities \(RGB\+NI\+TI vs RGB\+TI;"):
        SearchService(dual["model"], dual["cfg"], GalleryIndex.build(other))
