"""The search service (mambapro.deploy.serve): rankings, missing modalities, limits, files, HTTP.

The expected rankings come from the path every other command takes: the dataset's test loader
(``eval_loader``: read the files, resize, normalise, zero the missing modalities), the model
and ``compute_distmat`` over the gallery features file, not from the service's own code.
"""

from __future__ import annotations

import copy
import io
import re
import socket
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mambapro.cli import main
from mambapro.config import config_to_dict, load_config
from mambapro.data import read_triplet, samples_at, triplet_paths
from mambapro.data.synth import generate
from mambapro.errors import UserError
from mambapro.evaluation import compute_distmat
from mambapro.modalities import MODALITIES
from mambapro.models import build_model
from mambapro.retrieval.features import FeatureSet, eval_loader, extract_features
from mambapro.retrieval.identity import EmbeddingMismatchError
from mambapro.retrieval.index import GalleryIndex
from mambapro.train.checkpoint import load_model, save_checkpoint

pytest.importorskip("faiss")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402  (after the optional-dependency skips)

from mambapro.deploy.serve import (  # noqa: E402
    MAX_PIXELS,
    SearchService,
    ServeMissingError,
    ServeOptions,
    create_app,
    run_serve,
)

pytestmark = pytest.mark.usefixtures("one_thread")

K = 5


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A synthetic RGBNT201 tree, a random-weight demo-model checkpoint, its gallery index."""
    tmp = tmp_path_factory.mktemp("serve")
    data = tmp / "data"
    generate("rgbnt201", data, seed=8, ids=6, test_ids=3, cameras=2, shots=2)
    cfg = load_config("demo", ["data.synthetic=false", "data.img_size=[32,32]", "data.num_workers=0"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=3, num_cameras=2)
    state = {"model": model.state_dict(), "config": config_to_dict(cfg), "num_classes": 3, "num_cameras": 2}
    ckpt = save_checkpoint(state, tmp / "last.ckpt")
    gallery, index = tmp / "gallery.npz", tmp / "gallery.index"
    argv = ["extract", "-q", "--checkpoint", str(ckpt), "--data-root", str(data), "--split", "gallery"]
    assert main([*argv, "--out", str(gallery)]) == 0
    assert main(["index", "build", "--features", str(gallery), "--out", str(index)]) == 0
    model, cfg, _ = load_model(ckpt)
    service = SearchService(
        model, cfg, GalleryIndex.load(index), gallery_root=data, options=ServeOptions(k=K)
    )
    return {
        "tmp": tmp,
        "data": data,
        "ckpt": ckpt,
        "gallery": FeatureSet.load(gallery),
        "index": index,
        "model": model,
        "cfg": cfg,
        "service": service,
        "client": TestClient(create_app(service)),
        "queries": samples_at(data / "RGBNT201" / "test", "RGBNT201"),
    }


def _files(sample, modalities=MODALITIES) -> dict:
    files = dict(zip(MODALITIES, triplet_paths(sample.paths[0], "RGBNT201")))
    return {m: (Path(files[m]).name, Path(files[m]).read_bytes(), "image/jpeg") for m in modalities}


def _expected(world: dict, sample, missing: str) -> np.ndarray:
    """``sample``'s distances to every gallery row, through the test loader and compute_distmat."""
    cfg = world["cfg"]
    feats = extract_features(
        world["model"], eval_loader(cfg, [sample], "RGBNT201", missing=missing), torch.device("cpu")
    ).feats
    return compute_distmat(feats, world["gallery"].feats, metric=cfg.test.distance)[0]


def _assert_same_ranking(matches: list[tuple[int, float]], dist: np.ndarray) -> None:
    """``matches`` ((row, distance), ...) is the start of the ranking by ``dist``."""
    rows = np.argsort(dist, kind="stable")[: len(matches)]
    got_rows = np.array([r for r, _ in matches])
    np.testing.assert_allclose([d for _, d in matches], dist[rows], atol=1e-5, rtol=0)
    np.testing.assert_allclose(dist[got_rows], dist[rows], atol=1e-5, rtol=0)
    # Rows trade places only where their distances tie to float32 rounding.
    assert (got_rows == rows).mean() >= 0.6
    assert len(set(got_rows)) == len(got_rows)


@pytest.mark.parametrize(
    ("present", "missing"), [(MODALITIES, "full"), (("TI",), "RN"), (("RGB", "NI"), "T")]
)
def test_search_ranks_as_the_test_loader_and_compute_distmat(world: dict, present, missing: str) -> None:
    sample = world["queries"][1]
    response = world["client"].post(
        "/search", files=_files(sample, present), data={"camid": str(sample.camid)}
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer["matches"]) == K and answer["k"] == K
    _assert_same_ranking(
        [(m["row"], m["distance"]) for m in answer["matches"]], _expected(world, sample, missing)
    )
    assert answer["query"]["present"] == "+".join(present)
    assert answer["query"]["camid"] == sample.camid
    gallery = world["gallery"]
    for m in answer["matches"]:
        assert m["pid"] == int(gallery.pids[m["row"]]) and m["path"] == gallery.paths[m["row"]]
        assert m["camid"] == int(gallery.camids[m["row"]])
    assert answer["identities"] == list(dict.fromkeys(m["pid"] for m in answer["matches"]))
    if missing == "full":  # RGBNT201's query folder is its gallery: the capture finds itself first
        assert answer["matches"][0]["path"] == sample.paths[0] and answer["matches"][0]["distance"] < 1e-5


def test_k_and_camid_are_honoured(world: dict) -> None:
    sample, client = world["queries"][0], world["client"]
    answer = client.post("/search", files=_files(sample), data={"k": "3"}).json()
    assert len(answer["matches"]) == 3 and answer["query"]["camid"] is None
    # Without camid there is no camera term: the feature, hence the distances, change.
    with_cam = client.post(
        "/search", files=_files(sample), data={"k": "3", "camid": str(sample.camid)}
    ).json()
    assert [m["distance"] for m in answer["matches"]] != [m["distance"] for m in with_cam["matches"]]
    big = client.post("/search", files=_files(sample), data={"k": "1000"}).json()
    assert len(big["matches"]) == world["service"].index.ntotal  # k beyond the gallery: all of it


def _png(size=(32, 32), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("files", "data", "status", "pattern"),
    [
        ({}, {"k": "3"}, 400, "no image"),
        ({"rgb": ("a.png", _png(), "image/png")}, {}, 400, "unknown file field 'rgb'"),
        ({"RGB": ("a.txt", b"hello, not an image", "text/plain")}, {}, 415, "RGB: not a decodable image"),
        ({"NI": ("a.png", _png()[:60], "image/png")}, {}, 415, "NI: not a decodable image"),
        ({"TI": ("a.png", b"", "image/png")}, {}, 400, "TI: the file is empty"),
        ({"RGB": ("a.png", _png((7000, 7000), "1"), "image/png")}, {}, 413, f"more than {MAX_PIXELS} pixels"),
        ({"RGB": ("a.png", _png(), "image/png")}, {"k": "0"}, 400, r"k=0: must be in 1\.\.1000"),
        ({"RGB": ("a.png", _png(), "image/png")}, {"k": "1001"}, 400, r"k=1001: must be in 1\.\.1000"),
        ({"RGB": ("a.png", _png(), "image/png")}, {"k": "ten"}, 400, "k='ten': must be an integer"),
        (
            {"RGB": ("a.png", _png(), "image/png")},
            {"camid": "2"},
            400,
            r"camid=2: the model knows cameras 0\.\.1",
        ),
        ({"RGB": ("a.png", _png(), "image/png")}, {"camid": "-1"}, 400, "camid=-1"),
        ({"RGB": ("a.png", _png(), "image/png")}, {"colour": "red"}, 400, "unknown field 'colour'"),
        ({}, {"RGB": "not a file"}, 400, "RGB: send the image as a file"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem(world: dict, files, data, status, pattern) -> None:
    response = world["client"].post("/search", files=files or None, data=data)
    assert response.status_code == status, response.text
    assert re.search(pattern, response.json()["detail"]), response.json()


def test_body_and_upload_limits(world: dict) -> None:
    client = world["client"]
    response = client.post("/search", json={"RGB": "x"})
    assert response.status_code == 415 and "multipart/form-data" in response.json()["detail"]
    small = SearchService(
        world["model"], world["cfg"], world["service"].index, options=ServeOptions(max_upload_mb=500 / 2**20)
    )
    tiny_client = TestClient(create_app(small))
    big = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")
    assert len(buf.getvalue()) > 500
    response = tiny_client.post("/search", files={"RGB": ("a.png", buf.getvalue(), "image/png")})
    assert response.status_code == 413 and "limit of 500" in response.json()["detail"]
    # The same image passes the default limit.
    assert client.post("/search", files={"RGB": ("a.png", buf.getvalue(), "image/png")}).status_code == 200
    # A duplicated field is refused rather than one copy silently winning.
    dup = [("RGB", ("a.png", _png(), "image/png")), ("RGB", ("b.png", _png(), "image/png"))]
    response = client.post("/search", files=dup)
    assert response.status_code == 400


def test_gallery_images_come_from_the_index_rows_only(world: dict) -> None:
    client, gallery = world["client"], world["gallery"]
    for modality_index, modality in enumerate(MODALITIES):
        response = client.get(f"/gallery/3/{modality}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        served = np.asarray(Image.open(io.BytesIO(response.content)))
        expected = read_triplet(triplet_paths(gallery.paths[3], "RGBNT201"), "RGBNT201")[modality_index]
        np.testing.assert_array_equal(served, np.asarray(expected))
    for url in (
        f"/gallery/{len(gallery.paths)}/RGB",
        "/gallery/-1/RGB",
        "/gallery/0/XX",
        "/gallery/..%2F..%2Fetc%2Fpasswd/RGB",
        "/gallery/0/..%2F..%2F..%2Fetc%2Fpasswd",
        "/gallery/../../etc/passwd",
    ):
        response = client.get(url)
        assert 400 <= response.status_code < 500, url
        assert b"root:" not in response.content


def test_the_default_gallery_root_holds_every_modality_folder(world: dict) -> None:
    service = SearchService(world["model"], world["cfg"], world["service"].index)
    assert service.gallery_root == (world["data"] / "RGBNT201" / "test").resolve()
    client = TestClient(create_app(service))
    for m in MODALITIES:  # the index lists the RGB files; NI and TI sit in sibling folders
        assert client.get(f"/gallery/0/{m}").status_code == 200, m


def test_files_outside_the_gallery_root_are_not_served(world: dict) -> None:
    index = world["service"].index
    outside = world["tmp"] / "outside"
    outside.mkdir(exist_ok=True)
    for m, src in zip(("RGB", "NI", "TI"), triplet_paths(index.paths[0], "RGBNT201")):
        (outside / m).mkdir(exist_ok=True)
        (outside / m / Path(src).name).write_bytes(Path(src).read_bytes())
    moved = GalleryIndex(
        index.index, index.kind, index.pids, index.camids, index.sceneids,
        [str(outside / "RGB" / Path(index.paths[0]).name), *index.paths[1:]],
    )  # fmt: skip
    n = len(index.paths)
    with pytest.warns(UserWarning, match=rf"holds {n - 1} of the {n} captures .*first missing: "):
        service = SearchService(world["model"], world["cfg"], moved, gallery_root=world["data"])
    client = TestClient(create_app(service))
    assert client.get("/gallery/0/RGB").status_code == 404
    assert client.get("/gallery/1/RGB").status_code == 200
    # A symlink inside the root that points outside it is resolved and refused too.
    link_root = world["tmp"] / "links"
    for m in ("RGB", "NI", "TI"):
        (link_root / m).mkdir(parents=True, exist_ok=True)
        target = outside / m / Path(index.paths[0]).name
        link = link_root / m / target.name
        if not link.exists():
            link.symlink_to(target)
    linked = GalleryIndex(
        index.index, index.kind, index.pids, index.camids, index.sceneids,
        [str(link_root / "RGB" / Path(index.paths[0]).name), *index.paths[1:]],
    )  # fmt: skip
    with pytest.warns(UserWarning, match="holds none of the"):
        service = SearchService(world["model"], world["cfg"], linked, gallery_root=link_root)
    assert TestClient(create_app(service)).get("/gallery/0/RGB").status_code == 404


def _with_paths(index: GalleryIndex, paths: list[str]) -> GalleryIndex:
    """``index`` listing ``paths`` instead (same features, same rows)."""
    moved = copy.copy(index)
    moved.paths = list(paths)
    return moved


def _link_gallery(world: dict, folder: Path) -> list[str]:
    """``folder``/{RGB,NI,TI}/NAME: a symlink to each file of each gallery capture; the RGB links."""
    links = []
    for path in world["service"].index.paths:
        for src in triplet_paths(path, "RGBNT201"):
            link = folder / Path(src).parent.name / Path(src).name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src)
        links.append(str(folder / "RGB" / Path(path).name))
    return links


def _served(client: TestClient, row: int, modality: str) -> np.ndarray:
    response = client.get(f"/gallery/{row}/{modality}")
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_a_gallery_of_symlinks_is_served_from_the_default_root(world: dict, tmp_path: Path) -> None:
    index = world["service"].index
    linked = _with_paths(index, _link_gallery(world, tmp_path / "links"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every capture is reachable: nothing to say at start-up
        service = SearchService(world["model"], world["cfg"], linked)
    # The root holds the files the links point to, not the links' folder.
    assert service.gallery_root == (world["data"] / "RGBNT201" / "test").resolve()
    client = TestClient(create_app(service))
    for row in (0, len(index.paths) - 1):
        targets = read_triplet(triplet_paths(index.paths[row], "RGBNT201"), "RGBNT201")
        for m, expected in zip(MODALITIES, targets):
            np.testing.assert_array_equal(_served(client, row, m), np.asarray(expected))
    # The check still resolves links per request: a link retargeted outside the root after
    # start-up is refused.
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(Path(index.paths[1]).read_bytes())
    link = Path(linked.paths[1])
    link.unlink()
    link.symlink_to(outside)
    assert client.get("/gallery/1/RGB").status_code == 404
    assert client.get("/gallery/0/RGB").status_code == 200


def test_an_explicit_gallery_root_must_hold_the_link_targets(world: dict, tmp_path: Path) -> None:
    index = world["service"].index
    n = len(index.paths)
    linked = _with_paths(index, _link_gallery(world, tmp_path / "links"))
    # The links' own folder: every link resolves outside it, so nothing is served, and start-up says so.
    with pytest.warns(UserWarning) as record:
        service = SearchService(world["model"], world["cfg"], linked, gallery_root=tmp_path / "links")
    assert len(record) == 1
    message = str(record[0].message)
    assert "\n" not in message
    assert message.startswith(f"gallery root {(tmp_path / 'links').resolve()} holds none of the {n} captures")
    assert f"(first: {linked.paths[0]}: it resolves to " in message and "outside the root" in message
    assert "pass a --gallery-root" in message
    client = TestClient(create_app(service))
    assert all(client.get(f"/gallery/{row}/RGB").status_code == 404 for row in range(n))
    # A root that holds the targets serves them through the links.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        service = SearchService(world["model"], world["cfg"], linked, gallery_root=world["data"])
    expected = read_triplet(triplet_paths(index.paths[2], "RGBNT201"), "RGBNT201")[1]
    np.testing.assert_array_equal(_served(TestClient(create_app(service)), 2, "NI"), np.asarray(expected))


def test_relative_index_paths_are_read_from_the_current_folder(
    world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = world["service"].index
    n = len(index.paths)
    relative = _with_paths(index, [str(Path(p).relative_to(world["data"])) for p in index.paths])
    monkeypatch.chdir(world["data"])  # where extract would have run
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        service = SearchService(world["model"], world["cfg"], relative)
    assert service.gallery_root == (world["data"] / "RGBNT201" / "test").resolve()
    expected = read_triplet(triplet_paths(index.paths[4], "RGBNT201"), "RGBNT201")[2]
    np.testing.assert_array_equal(_served(TestClient(create_app(service)), 4, "TI"), np.asarray(expected))
    # Started elsewhere: the default root does not exist and holds none of them.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.warns(UserWarning) as record:
        service = SearchService(world["model"], world["cfg"], relative)
    root = elsewhere.resolve() / "RGBNT201" / "test"
    assert service.gallery_root == root and not root.exists()
    assert [str(w.message) for w in record] == [
        f"gallery root {root} holds none of the {n} captures the index lists (first: {relative.paths[0]}: "
        f"{root / 'RGB' / Path(relative.paths[0]).name} does not exist (relative paths are read from the "
        "current folder)); the service answers searches but shows no gallery images; start it from the "
        "folder extract ran in"
    ]
    assert TestClient(create_app(service)).get("/gallery/0/RGB").status_code == 404


def test_a_root_holding_some_or_none_of_the_captures_is_said_at_start_up(world: dict, tmp_path: Path) -> None:
    index = world["service"].index
    n = len(index.paths)
    gone = str(tmp_path / "gone" / "RGB" / Path(index.paths[3]).name)
    partial = _with_paths(index, [*index.paths[:3], gone, *index.paths[4:]])
    with pytest.warns(UserWarning) as record:
        service = SearchService(world["model"], world["cfg"], partial)
    # The stale row does not widen the default root to its folder.
    root = (world["data"] / "RGBNT201" / "test").resolve()
    assert service.gallery_root == root
    assert [str(w.message) for w in record] == [
        f"gallery root {root} holds {n - 1} of the {n} captures the index lists "
        f"(first missing: {gone}: {gone} does not exist); the others show no gallery images"
    ]
    # An explicit root beside the data: none, with the advice that fits.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.warns(
        UserWarning, match=rf"^gallery root {re.escape(str(empty.resolve()))} holds none of the {n} "
    ):
        SearchService(world["model"], world["cfg"], index, gallery_root=empty)
    # Absolute paths that exist nowhere (the index came from another machine).
    away = _with_paths(index, [str(tmp_path / "away" / "RGB" / Path(p).name) for p in index.paths])
    with pytest.warns(UserWarning, match=r"holds none of the .* not where extract read them"):
        SearchService(world["model"], world["cfg"], away)


def test_validation_errors_are_one_line_naming_the_field_and_the_value(world: dict) -> None:
    client = world["client"]
    for url, value in (("/gallery/abc/RGB", "'abc'"), ("/gallery/1.5/NI", "'1.5'")):
        response = client.get(url)
        assert response.status_code == 422
        assert response.json() == {"detail": f"path parameter row={value}: must be an integer"}
    # /search reads its form itself (400 for a bad k, above); a k in the URL would be ignored,
    # so it is refused rather than silently overridden by the default.
    sample = world["queries"][0]
    response = client.post("/search?k=3", files=_files(sample))
    assert response.status_code == 400
    assert response.json()["detail"].startswith("query parameter 'k' is not read: send RGB, NI, TI, k, camid")
    # The handler belongs to the app: query parameters and form fields of any route get the same line.
    from fastapi import Form, Query

    app = create_app(world["service"])

    @app.get("/probe")
    def probe(k: int = Query(..., ge=1)) -> dict:
        return {"k": k}

    @app.post("/probe")
    def probe_form(k: int = Form(...), name: str = Form(...)) -> dict:
        return {"k": k, "name": name}

    probe_client = TestClient(app)
    cases = [
        (probe_client.get("/probe", params={"k": "ten"}), "query parameter k='ten': must be an integer"),
        (
            probe_client.get("/probe", params={"k": "0"}),
            "query parameter k='0': input should be greater than or equal to 1",
        ),
        (probe_client.get("/probe"), "query parameter k is missing"),
        (probe_client.post("/probe", data={"k": "x", "name": "a"}), "field k='x': must be an integer"),
        (probe_client.post("/probe", data={"k": "2"}), "field name is missing"),
        (
            probe_client.post("/probe", data={"k": "y" * 100, "name": "a"}),
            f"field k='{'y' * 56}...: must be an integer",
        ),
    ]
    for response, detail in cases:
        assert response.status_code == 422 and response.json() == {"detail": detail}
    assert probe_client.get("/probe", params={"k": "2"}).json() == {"k": 2}


def test_page_and_health(world: dict) -> None:
    client = world["client"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline
    for m in MODALITIES:
        assert f'name="{m}"' in page.text
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["dataset"] == "RGBNT201"
    assert health["index"]["captures"] == len(world["gallery"].paths)
    assert health["index"]["dim"] == world["gallery"].feats.shape[1]
    assert health["cameras"] == 2


def test_an_index_of_another_width_is_refused(world: dict) -> None:
    feats = FeatureSet(np.eye(4, 7, dtype=np.float32), np.arange(4), np.zeros(4), np.zeros(4), list("abcd"))
    with pytest.raises(UserError, match=r"holds 7-d features but the checkpoint gives \d+-d features"):
        SearchService(world["model"], world["cfg"], GalleryIndex.build(feats))


@pytest.mark.parametrize("package", ["fastapi", "uvicorn"])
def test_a_missing_web_stack_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture, package: str
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # `import package` fails as if not installed
    hint = f"{package} is not installed: pip install 'mambapro[deploy]'"
    # Refused before anything is loaded: these paths do not even exist.
    with pytest.raises(ServeMissingError) as err:
        run_serve(tmp_path / "nope.ckpt", tmp_path / "nope.index")
    assert str(err.value) == hint
    assert isinstance(err.value, UserError) and isinstance(err.value, ImportError)
    with pytest.raises(ServeMissingError, match=re.escape(hint)):
        create_app(None)  # type: ignore[arg-type]  (refused before the service is used)
    # The CLI prints the one line and exits 2, without a traceback.
    ckpt, index = tmp_path / "last.ckpt", tmp_path / "gallery.index"
    ckpt.write_bytes(b"x")
    index.write_bytes(b"x")
    capsys.readouterr()
    assert main(["serve", "--checkpoint", str(ckpt), "--index", str(index)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"mambapro serve: error: {hint}\n" and captured.out == ""


def test_concurrent_queries_share_model_calls_and_get_their_own_answers(world: dict) -> None:
    base = world["service"]
    service = SearchService(world["model"], world["cfg"], base.index, options=ServeOptions(max_batch=4))
    calls: list[int] = []
    forward = service._forward

    def slow_forward(items):
        calls.append(len(items))
        time.sleep(0.2)  # the model is busy: the other threads queue up behind it
        return forward(items)

    service._forward = slow_forward
    queries = world["queries"][:6]
    sequential = [base.search(_raw(q), k=4, camid=q.camid)["matches"] for q in queries]
    with ThreadPoolExecutor(max_workers=6) as pool:
        concurrent = list(pool.map(lambda q: service.search(_raw(q), k=4, camid=q.camid)["matches"], queries))
    assert sum(calls) == 6 and len(calls) < 6 and max(calls) <= 4, calls
    for seq, con in zip(sequential, concurrent):  # each request got its own query's ranking
        assert [m["row"] for m in seq] == [m["row"] for m in con]
        np.testing.assert_allclose([m["distance"] for m in seq], [m["distance"] for m in con], atol=1e-5)
    assert service.requests == 6 and service.batches == len(calls) + 1  # + the start-up check
    # A failing model call reaches every request of its batch as an error, and the next works.
    service._forward = lambda items: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        service.search(_raw(queries[0]))
    service._forward = forward
    assert len(service.search(_raw(queries[0]), k=2)["matches"]) == 2


def _raw(sample) -> dict:
    return {m: data for m, (_, data, _) in _files(sample).items()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_real_server_answers_concurrent_http_requests(world: dict) -> None:
    import httpx

    port = _free_port()
    argv = [
        sys.executable, "-m", "mambapro.cli", "serve", "-q", "--checkpoint", str(world["ckpt"]),
        "--index", str(world["index"]), "--port", str(port), "-k", "4",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    again = None
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up in 120 s"
            time.sleep(0.3)
        # A second server on the same port, started now that the first one listens: it starts up
        # while the queries below run, and is read at the end.
        again = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sample = world["queries"][2]
        files = {m: (name, data, kind) for m, (name, data, kind) in _files(sample).items()}

        def query(_: int) -> tuple[int, list]:
            r = httpx.post(f"{base}/search", files=files, data={"camid": str(sample.camid)}, timeout=60)
            return r.status_code, [(m["row"], m["distance"]) for m in r.json()["matches"]]

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(query, range(16)))
        assert all(status == 200 for status, _ in answers)
        for _, matches in answers:  # batched with other queries or not, the same answer
            assert [r for r, _ in matches] == [r for r, _ in answers[0][1]]
            np.testing.assert_allclose([d for _, d in matches], [d for _, d in answers[0][1]], atol=1e-5)
        _assert_same_ranking(answers[0][1], _expected(world, sample, "full"))
        assert httpx.get(f"{base}/health", timeout=5).json()["requests"] == 16
        # The default binding is loopback only.
        try:
            external = socket.gethostbyname(socket.gethostname())
        except OSError:
            external = "127.0.0.1"
        if not external.startswith("127."):
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://{external}:{port}/health", timeout=2)
        # The second server on the same port is refused with one line, exit 2.
        _, again_err = again.communicate(timeout=120)
        assert again.returncode == 2 and f"--port {port}: cannot listen on 127.0.0.1" in again_err
        assert proc.poll() is None  # and the first one still serves
    finally:
        for p in (proc, again):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(timeout=30)


def test_an_index_of_another_model_is_refused_at_start_up(world: dict) -> None:
    other = copy.deepcopy(world["model"])
    with torch.no_grad():
        next(other.parameters()).add_(0.01)  # the same architecture and width, other weights
    with pytest.raises(
        EmbeddingMismatchError, match=r"--index .*gallery.index and --checkpoint .* \(weights \w{16} vs"
    ):
        SearchService(other, world["cfg"], GalleryIndex.load(world["index"]), gallery_root=world["data"])


def test_a_far_too_small_upload_is_ranked_with_a_warning(world: dict) -> None:
    client = world["client"]  # the model's input is 32x32
    small = client.post("/search", files={"TI": ("t.png", _png((4, 4)), "image/png")}).json()
    assert small["warnings"] == [
        "TI is 4x4, upscaled more than 4x to the model's 32x32 input: the ranking carries little information"
    ]
    assert len(small["matches"]) == K
    fine = client.post("/search", files={"TI": ("t.png", _png((8, 8)), "image/png")}).json()
    assert fine["warnings"] == []
