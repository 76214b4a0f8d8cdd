"""``mambapro analyze`` on a tiny trained model: the t-SNE input, the modality cosines, Grad-CAM,
the report page (links, no network, rendered in headless Chromium) and bad input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import fast
from mambapro.aggregation.base import split_tokens
from mambapro.cli import main
from mambapro.config import load_config
from mambapro.data import build_dataset
from mambapro.data.synth import generate
from mambapro.evaluation import compute_distmat, evaluate
from mambapro.files import OUTPUT_MARKER
from mambapro.modalities import MODALITIES, ModalitySet
from mambapro.options import ANALYSIS_OUTPUTS, RUN_OUTPUTS
from mambapro.reports.analysis import (
    PAIRS,
    AnalysisFeatures,
    alignment_stats,
    extract_analysis_features,
    grad_cam_maps,
    histogram_intersection,
    joint_bins,
    modality_pairs,
    pair_cosines,
    per_query_ap,
    select_identities,
)
from mambapro.reports.analysis.alignment import plot_alignment
from mambapro.retrieval.features import eval_loader, extract_features
from mambapro.retrieval.testing import evaluate_model
from mambapro.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from mambapro.train.trainer import run_training

# conftest's FAST with a 4 x 2 token grid, two steps and larger test batches.
FAST = fast("data.img_size=[64,32]", "train.iters_per_epoch=2", "test.batch_size=16")
TEST_IDS = 4
IDS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    s = tmp_path_factory.mktemp("analyze")
    generate("rgbnt201", s / "tree", seed=7, ids=8, test_ids=TEST_IDS, cameras=2, shots=2)
    # train.analyze=true: the run ends with the analysis page of its own checkpoint.
    paths = [f"data.root={s / 'tree'}", f"train.output={s / 'ma'}"]
    cfg = load_config("demo", [*FAST, *paths, "train.analyze=true"])
    run_training(cfg, quiet=True)
    # The same weights without the aggregator and its head: a model.aggregator=none checkpoint.
    state = load_checkpoint(s / "ma/last.ckpt")
    state["config"]["model"]["aggregator"] = "none"
    state["model"] = {
        k: v for k, v in state["model"].items() if not k.startswith(("aggregator.", "fuse_head."))
    }
    (s / "none").mkdir()
    save_checkpoint(state, s / "none/last.ckpt")
    # The MA weights, stored as a checkpoint of another dataset.
    state = load_checkpoint(s / "ma/last.ckpt")
    state["config"]["data"]["dataset"] = "RGBNT100"
    save_checkpoint(state, s / "other_dataset.ckpt")
    rc = main(
        [
            "analyze",
            "-q",
            "--checkpoint",
            str(s / "ma/last.ckpt"),
            "--compare",
            str(s / "none/last.ckpt"),
            "--ids",
            str(IDS),
            "--queries",
            "4",
            "--output",
            str(s / "out"),
        ]
    )
    assert rc == 0
    return s


@pytest.fixture(scope="module")
def report(shared: Path) -> dict:
    return json.loads((shared / "out/analysis.json").read_text())


@pytest.fixture(scope="module")
def ma_model(shared: Path):
    model, cfg, _ = load_model(shared / "ma/last.ckpt", extra={"data": {"root": str(shared / "tree")}})
    ds = build_dataset("RGBNT201", shared / "tree")
    return model, cfg, ds


def _label(report: dict, aggregator: str) -> str:
    return next(c["label"] for c in report["checkpoints"] if c["aggregator"] == aggregator)


# ----------------------------------------------------------------------------- t-SNE


def test_tsne_rows_are_the_extracted_features_of_the_chosen_identities(shared, report, ma_model) -> None:
    model, cfg, ds = ma_model
    ids = report["tsne"]["identities"]
    assert len(ids) == IDS and len(set(ids)) == IDS
    assert set(ids) <= {s.pid for s in ds.gallery}
    label = _label(report, "ma")
    z = np.load(shared / "out" / report["tsne"]["inputs"][label])
    # Independently: the test features of `extract` (fuse, after its BatchNorm: test.neck_feat=after),
    # and the ori feature the same way, of every test capture of those identities.
    gallery = [s for s in ds.gallery if s.pid in ids]
    fuse = extract_features(model, eval_loader(cfg, gallery, "RGBNT201"), torch.device("cpu"))
    assert model.test_feature == "fuse" and model.neck_feat == "after"
    model.test_feature = "ori"
    try:
        ori = extract_features(model, eval_loader(cfg, gallery, "RGBNT201"), torch.device("cpu"))
    finally:
        model.test_feature = "fuse"
    assert sorted(z["paths"].tolist()) == sorted(fuse.paths)
    order = [fuse.paths.index(p) for p in z["paths"]]
    np.testing.assert_allclose(z["fuse"], fuse.feats[order], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z["ori"], ori.feats[order], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(z["pids"], fuse.pids[order])
    assert z["fuse_embedding"].shape == (len(gallery), 2) and np.isfinite(z["fuse_embedding"]).all()
    # The compared checkpoint gets the same captures, and only an ori panel (no aggregator).
    other = np.load(shared / "out" / report["tsne"]["inputs"][_label(report, "none")])
    assert other["paths"].tolist() == z["paths"].tolist()
    assert "ori" in other and "fuse" not in other


def test_identity_choice_is_seeded_and_refuses_too_many() -> None:
    pids = np.array([5, 5, 9, 1, 1, 7, 3])
    a, b = select_identities(pids, 3, seed=4), select_identities(pids, 3, seed=4)
    np.testing.assert_array_equal(a, b)
    assert len(set(a)) == 3 and set(a) <= {1, 3, 5, 7, 9}
    with pytest.raises(Exception, match=r"--ids 6: the test set .* has only 5 identities"):
        select_identities(pids, 6)
    with pytest.raises(Exception, match="at least 2"):
        select_identities(np.array([4, 4]), 2)


# ----------------------------------------------------------------------------- alignment


def test_cosines_before_and_after_ma_match_a_hand_computation(shared, report, ma_model) -> None:
    model, cfg, ds = ma_model
    samples = ds.gallery
    batch = next(iter(eval_loader(cfg, samples, "RGBNT201")))
    with torch.no_grad():
        tokens = model.backbone({m: batch[m] for m in MODALITIES}, batch["camids"])
        cls, patches = split_tokens(
            tuple(tokens[m] for m in MODALITIES), model.aggregator.dim, model.aggregator.grid
        )
        mixed = model.aggregator.mix(patches, model.aggregator.grid)
    feats = extract_analysis_features(model, eval_loader(cfg, samples, "RGBNT201"), torch.device("cpu"))
    n = len(batch["pids"])
    for i, j in PAIRS:
        hand_before = F.cosine_similarity(cls[i], cls[j], dim=1).numpy()
        hand_after = F.cosine_similarity(mixed[i].mean(1), mixed[j].mean(1), dim=1).numpy()
        np.testing.assert_allclose(pair_cosines(feats.before[i], feats.before[j])[:n], hand_before, atol=1e-5)
        np.testing.assert_allclose(pair_cosines(feats.after[i], feats.after[j])[:n], hand_after, atol=1e-5)
    # analysis.json's means are over every test capture (RGBNT201: the gallery folder).
    assert len(feats.paths) == report["config"]["num_captures"]
    stats = report["alignment"][_label(report, "ma")]
    for i, j in PAIRS:
        pair = f"{MODALITIES[i]}-{MODALITIES[j]}"
        before = pair_cosines(feats.before[i], feats.before[j])
        after = pair_cosines(feats.after[i], feats.after[j])
        assert stats[pair]["before"]["mean"] == pytest.approx(before.mean(), abs=1e-5)
        assert stats[pair]["after"]["mean"] == pytest.approx(after.mean(), abs=1e-5)
        assert 0.0 <= stats[pair]["before_after_overlap"] <= 1.0
    # Without an aggregator there is no after-MA stage.
    assert "after" not in report["alignment"][_label(report, "none")]["RGB-NI"]


def test_histogram_intersection_by_hand() -> None:
    x = np.array([0.51, 0.52, 0.53, 0.54])
    y = np.array([0.51, 0.52, -0.9, -0.91])  # half of x's values, half far away
    assert histogram_intersection(x, x) == pytest.approx(1.0)
    # Each bin holding y's 0.51 or 0.52 holds at least as much of x: min(p, q) = q there.
    assert histogram_intersection(x, y) == pytest.approx(0.5)
    assert histogram_intersection(x, -x) == pytest.approx(0.0)
    # The bins span both samples: shifting one by a tenth of the joint range separates them.
    assert histogram_intersection(x, x + 0.1) == pytest.approx(0.0)
    bins = joint_bins(x, y)
    assert len(bins) == 51 and bins[0] == pytest.approx(-0.91) and bins[-1] == pytest.approx(0.54)
    # On coarse bins both samples share one bin: the intersection is the shared mass.
    assert histogram_intersection(x, y, bins=np.array([-1.0, 0.0, 1.0])) == pytest.approx(0.5)
    assert histogram_intersection(x, x + 0.1, bins=np.array([-1.0, 1.0])) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- Grad-CAM


def _brute_force_cam(model, batch, k: int) -> torch.Tensor:
    """Grad-CAM by hand, without hooks: activations A = modality k's mixed patch tokens, score =
    the norm of their mean, weights = the gradient averaged over the token grid,
    ReLU(sum_c w_c A_c), min-max scaled, bilinear upsampling (half-pixel centres) to the image,
    min-max scaled again (pytorch-grad-cam's convention: an interior maximum of the token grid is
    not a pixel centre of the upsampled map)."""
    agg = model.aggregator
    h, w = agg.grid
    tokens = model.backbone({m: batch[m] for m in MODALITIES}, batch["camids"])
    _, patches = split_tokens(tuple(tokens[m] for m in MODALITIES), agg.dim, agg.grid)
    a = agg.mix(patches, agg.grid)[k].detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(a.mean(dim=1).norm(dim=1).sum(), a)
    weights = grad.mean(dim=1, keepdim=True)  # (B, 1, C)
    raw = (weights * a).sum(-1).detach()
    # The closed form: the gradient of |mean A| is mean(A) / (|mean A| L) at every token.
    m = a.detach().mean(dim=1, keepdim=True)
    closed = (a.detach() * m).sum(-1) / (m.norm(dim=-1) * a.shape[1])
    torch.testing.assert_close(raw, closed, rtol=1e-4, atol=1e-6)
    cam = torch.relu(raw).reshape(-1, 1, h, w)
    cam = cam - cam.amin(dim=(2, 3), keepdim=True)
    cam = cam / (1e-7 + cam.amax(dim=(2, 3), keepdim=True))
    size = batch[MODALITIES[0]].shape[-2:]
    up = F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    up = up - up.amin(dim=(1, 2), keepdim=True)
    return up / (1e-7 + up.amax(dim=(1, 2), keepdim=True))


def test_grad_cam_maps_match_a_brute_force_computation(ma_model) -> None:
    model, cfg, ds = ma_model
    batch = next(iter(eval_loader(cfg, ds.query[:3], "RGBNT201")))
    h, w = cfg.img_size()
    for k, m in enumerate(MODALITIES):
        maps = grad_cam_maps(model, batch, m)
        assert maps.shape == (3, h, w)
        assert (maps >= 0).all() and maps.max() <= 1 + 1e-6
        assert (maps.reshape(3, -1).max(1) > 0.99).all()  # not all zero: a map to compare
        expected = _brute_force_cam(model, batch, k).numpy()
        np.testing.assert_allclose(maps, expected, atol=2e-3)
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_grad_cam_maps_change_with_the_input(ma_model) -> None:
    model, cfg, ds = ma_model
    batch = next(iter(eval_loader(cfg, ds.query[:2], "RGBNT201")))
    before = grad_cam_maps(model, batch, "NI")
    changed = {**batch, "NI": batch["NI"].flip(-2)}  # the NIR image upside down
    after = grad_cam_maps(model, changed, "NI")
    assert np.abs(before - after).max() > 0.05


# ----------------------------------------------------------------------------- outputs


def test_metrics_and_query_choice(shared, report) -> None:
    label = _label(report, "ma")
    trained = json.loads((shared / "ma/results.json").read_text())["results"]
    final = next(iter(trained.values()))  # the trainer's own evaluation of the same weights
    assert report["metrics"][label]["mAP"] == pytest.approx(final["mAP"], abs=1e-6)
    queries = report["queries"]
    assert len(queries["best"]) == 2 and len(queries["worst"]) == 2
    assert min(q[f"AP {label}"] for q in queries["best"]) >= max(q[f"AP {label}"] for q in queries["worst"])
    assert "missing" not in report and not (shared / "out/missing_modality.txt").exists()


def test_train_analyze_links_the_page_from_the_run_folder(shared) -> None:
    run = shared / "ma"
    link = (run / "report.txt").read_text().splitlines()[-1]
    assert link == "analysis report (last.ckpt): analysis/report.html"
    assert (run / "analysis/report.html").is_file()
    report = json.loads((run / "analysis/analysis.json").read_text())
    assert [c["checkpoint"] for c in report["checkpoints"]] == [str(run / "last.ckpt")]
    # Default options: every test identity when there are fewer than 20, 8 Grad-CAM queries.
    assert report["config"]["ids"] == TEST_IDS and len(report["tsne"]["identities"]) == TEST_IDS
    assert len(report["queries"]["best"]) == 4 and len(report["queries"]["worst"]) == 4
    final = next(iter(json.loads((run / "results.json").read_text())["results"].values()))
    assert report["metrics"][report["checkpoints"][0]["label"]]["mAP"] == pytest.approx(
        final["mAP"], abs=1e-6
    )
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["analysis_report"] == "analysis/report.html"


def test_a_test_set_of_one_identity_is_refused_by_train_analyze_and_analyze(capsys, shared, tmp_path) -> None:
    generate("rgbnt201", tmp_path / "tree", seed=3, ids=3, test_ids=1, cameras=2, shots=2)
    argv = ["train", "-q", "--config", "demo", *FAST, f"data.root={tmp_path / 'tree'}", "train.analyze=true"]
    line = _error(capsys, [*argv, "--output", str(tmp_path / "run")])
    assert "train.analyze=true: the t-SNE needs at least 2 test identities" in line and "has 1" in line
    assert not (tmp_path / "run").exists()
    # Without --ids the default (20, or all if fewer) is refused naming the test set, not an --ids.
    argv = [
        "analyze",
        "-q",
        "--checkpoint",
        str(shared / "ma/last.ckpt"),
        "--data-root",
        str(tmp_path / "tree"),
    ]
    line = _error(capsys, [*argv, "--output", str(tmp_path / "a")])
    assert "test set (query + gallery) has 1 identity; t-SNE needs at least 2" in line and "--ids" not in line
    assert not (tmp_path / "a").exists()


def test_per_query_ap_averages_to_the_map(ma_model) -> None:
    model, cfg, ds = ma_model
    feats = extract_analysis_features(model, eval_loader(cfg, ds.gallery, "RGBNT201"), torch.device("cpu"))
    fs = feats.feature_set()
    dist = compute_distmat(fs.feats, fs.feats)
    ap = per_query_ap(dist, fs, fs, use_scenes=False)
    res = evaluate(dist, fs.pids, fs.pids, fs.camids, fs.camids)
    assert np.nanmean(ap) == pytest.approx(res.mAP, abs=1e-9) and np.isfinite(ap).sum() == res.num_valid


def test_analyze_and_train_write_only_what_they_declare(shared) -> None:
    """The names a folder is checked for before a command writes there cover what it writes."""
    declared = [*ANALYSIS_OUTPUTS, OUTPUT_MARKER]
    for folder in (shared / "out", shared / "ma/analysis"):
        written = [p.name for p in folder.iterdir()]
        assert "report.html" in written
        assert all(any(fnmatch(name, d) for d in declared) for name in written), (folder, written)
    assert {p.name for p in (shared / "ma").iterdir()} <= {*RUN_OUTPUTS, OUTPUT_MARKER}


def test_missing_modality_table(shared, tmp_path) -> None:
    # Without an aggregator (cheap): the table of the seven settings, full = the metrics row.
    out = tmp_path / "missing"
    argv = ["analyze", "-q", "--checkpoint", str(shared / "none/last.ckpt"), "--ids", "2", "--queries", "1"]
    assert main([*argv, "--missing", "all", "--output", str(out)]) == 0
    report = json.loads((out / "analysis.json").read_text())
    (label,) = report["missing"]
    rows = report["missing"][label]
    assert list(rows) == ["full", "-R", "-N", "-T", "-RN", "-RT", "-NT"]
    assert rows["full"] == report["metrics"][label]
    assert len({r["mAP"] for r in rows.values()}) > 1  # zeroing modalities changes the features
    text = (out / "missing_modality.txt").read_text()
    assert f"{100 * rows['-RT']['mAP']:.1f}" in text
    page = (out / "report.html").read_text()
    assert "Missing modalities" in page and "Grad-CAM" not in page


def test_any_to_any_heat_map(shared, tmp_path) -> None:
    out = tmp_path / "cross"
    ckpt = shared / "none/last.ckpt"
    argv = ["analyze", "-q", "--checkpoint", str(ckpt), "--ids", "2", "--queries", "1", "--missing", "cross"]
    assert main([*argv, "--output", str(out)]) == 0
    report = json.loads((out / "analysis.json").read_text())
    (label,) = report["missing_cross"]
    cells = report["missing_cross"][label]
    assert cells["subsets"] == ["RGB+NI+TI", "NI+TI", "RGB+TI", "RGB+NI", "TI", "NI", "RGB"]
    m = np.asarray(cells["mAP"])
    assert m.shape == (7, 7) and m[0, 0] == pytest.approx(report["metrics"][label]["mAP"], abs=1e-12)
    # A diagonal cell is the missing-modality evaluation of that setting (query and gallery alike).
    model, cfg, _ = load_model(ckpt, extra={"data": {"root": str(shared / "tree")}})
    ds = build_dataset("RGBNT201", shared / "tree")
    rt = evaluate_model(model, cfg, ds.spec, ds.query, ds.gallery, torch.device("cpu"), None, True, "RT")
    assert m[5, 5] == pytest.approx(rt.mAP, abs=1e-9)  # NI only: RGB and TI missing
    assert len({round(v, 9) for v in m.flatten()}) > 7  # the subsets give different rankings
    figure = f"missing_cross-{label}.png"
    assert (out / figure).stat().st_size > 0 and figure in (out / "report.html").read_text()
    assert "NI+TI" in (out / "missing_cross.txt").read_text()


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        for key, value in attrs:
            if key in ("src", "href") and value is not None:
                self.links.append(value)
                if tag == "img":
                    self.images.append(value)


def test_report_links_only_existing_local_files(shared, report) -> None:
    out = shared / "out"
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "@import" not in page and "url(" not in page
    parser = _Links()
    parser.feed(page)
    assert len(parser.images) == len(report["figures"]) >= 5
    for link in parser.links:
        assert not re.match(r"^[a-z]+:", link) and not link.startswith("/"), link
        assert (out / link).is_file(), link
    for src in parser.images:  # every figure decodes
        with Image.open(out / src) as img:
            img.load()
            assert img.width > 10 and img.height > 10
    expected = {"cmc.png", "tsne.png", "alignment.png", f"gradcam-{_label(report, 'ma')}.png"}
    assert expected <= set(parser.images)
    assert not any(src.startswith("gradcam-" + _label(report, "none")) for src in parser.images)
    assert sum(src.startswith("ranklist-") for src in parser.images) == 2 * len(report["queries"]["worst"])
    assert f"{100 * report['metrics'][_label(report, 'ma')]['mAP']:.1f}" in page


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary")
def test_report_renders_in_headless_chromium(shared, tmp_path) -> None:
    # A copy of the page with a probe script that writes each image's decoded width into the DOM.
    site = tmp_path / "site"
    shutil.copytree(shared / "out", site)
    probe = (
        "<script>window.addEventListener('load', () => { document.body.setAttribute('data-decoded', "
        "Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1).join(',')); });</script>"
    )
    page = (site / "report.html").read_text()
    (site / "probe.html").write_text(page.replace("</body>", probe + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    proc = subprocess.run(
        [_chromium(), *flags, "--dump-dom", (site / "probe.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'data-decoded="([^"]*)"', proc.stdout)
    assert found, proc.stderr[-2000:]
    widths = [int(v) for v in found.group(1).split(",")]
    assert len(widths) == page.count("<img ") and all(v > 0 for v in widths), widths
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            _chromium(),
            *flags,
            "--window-size=1200,1600",
            f"--screenshot={shot}",
            (site / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    with Image.open(shot) as img:
        assert img.size == (1200, 1600)
        assert len(img.convert("L").getcolors(1 << 16) or []) > 50  # not a blank page


# ----------------------------------------------------------------------------- bad input


def _error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0]


def test_bad_input_is_one_line_exit_2(shared, capsys, tmp_path) -> None:
    ckpt = str(shared / "ma/last.ckpt")
    out = tmp_path / "never"
    line = _error(
        capsys,
        [
            "analyze",
            "-q",
            "--checkpoint",
            ckpt,
            "--compare",
            str(shared / "other_dataset.ckpt"),
            "-o",
            str(out),
        ],
    )
    assert "is a RGBNT100 checkpoint but --checkpoint" in line and "RGBNT201" in line
    line = _error(capsys, ["analyze", "-q", "--checkpoint", ckpt, "--ids", "9", "-o", str(out)])
    assert f"--ids 9: the test set (query + gallery) has only {TEST_IDS} identities" in line
    line = _error(capsys, ["analyze", "-q", "--checkpoint", ckpt, "--ids", "1", "-o", str(out)])
    assert "--ids 1: t-SNE needs at least 2 identities" in line
    line = _error(capsys, ["analyze", "-q", "--checkpoint", str(shared / "nope.ckpt")])
    assert f"--checkpoint {shared / 'nope.ckpt'}: no such file" in line
    line = _error(capsys, ["analyze", "-q", "--checkpoint", ckpt, "--compare", str(shared / "gone.ckpt")])
    assert "--compare" in line and "gone.ckpt: no such file" in line
    # An override after the --compare list is an override, not a checkpoint path.
    none = str(shared / "none/last.ckpt")
    line = _error(
        capsys, ["analyze", "-q", "--checkpoint", ckpt, "--compare", none, "test.nope=1", "-o", str(out)]
    )
    assert "unknown key 'test.nope'" in line
    assert not out.exists()


# ------------------------------------------------------------------ other modality sets


def _features(modalities: ModalitySet, n: int = 12, c: int = 4, seed: int = 0) -> AnalysisFeatures:
    """Random features of ``n`` captures for a model over ``modalities`` (C = ``c``)."""
    rng = np.random.default_rng(seed)
    m = len(modalities)
    ori = rng.normal(size=(n, m * c)).astype(np.float32)
    after = rng.normal(size=(m, n, c)).astype(np.float32)
    before = np.stack([ori[:, k * c : (k + 1) * c] for k in range(m)])
    ids = np.arange(n) % 3
    return AnalysisFeatures(
        ori,
        ori,
        None,
        ori,
        None,
        before,
        after,
        None,
        ids,
        ids,
        ids,
        [f"{i}.jpg" for i in range(n)],
        modalities,
    )


@pytest.mark.parametrize(
    ("keys", "pairs"),
    [
        (("RGB", "NI"), ["RGB-NI"]),
        (("RGB", "NI", "TI"), ["RGB-NI", "RGB-TI", "NI-TI"]),
        (("RGB", "NI", "TI", "D"), ["RGB-NI", "RGB-TI", "RGB-D", "NI-TI", "NI-D", "TI-D"]),
    ],
)
def test_alignment_has_every_pair_of_the_models_modalities(keys, pairs, tmp_path) -> None:
    from matplotlib.image import imread

    modalities = ModalitySet.of(keys)
    feats = _features(modalities)
    stats = alignment_stats(feats)
    assert list(stats) == pairs and modality_pairs(len(keys)) == tuple(
        (keys.index(p.split("-")[0]), keys.index(p.split("-")[1])) for p in pairs
    )
    for name, (i, j) in zip(pairs, modality_pairs(len(keys))):
        assert stats[name]["before"]["mean"] == pytest.approx(
            pair_cosines(feats.before[i], feats.before[j]).mean()
        )
        assert stats[name]["after"]["mean"] == pytest.approx(
            pair_cosines(feats.after[i], feats.after[j]).mean()
        )
    # A subset keeps the modalities; the figure has one panel per pair.
    assert feats.subset([0, 2]).modalities == modalities
    path = plot_alignment(tmp_path / "a.png", {"x": feats, "y": feats.subset(range(6))})
    assert imread(path).shape[0] > 0
    if len(keys) == 3:
        assert PAIRS == modality_pairs(3)


def test_report_page_names_the_models_modalities() -> None:
    from mambapro.reports.page import render_report_page

    report = {
        "config": {"dataset": "X"},
        "checkpoints": [{"label": "a"}],
        "metrics": {"a": {"mAP": 0.5}},
        "missing": {"a": {"full": {"mAP": 0.5}, "-R": {"mAP": 0.25}, "-N": {"mAP": 0.125}}},
    }
    # An analysis.json without the record: RGB, NI and TI, as the page always said.
    page = render_report_page(report)
    assert "all three modalities present" in page and "-R: RGB missing (zeroed)" in page
    report["modalities"] = ModalitySet.of(("NI", "TI")).to_dict()
    page = render_report_page(report)
    assert "both modalities present" in page and "-N: NI missing (zeroed)" in page
    report["modalities"] = ModalitySet.of(("RGB", "NI", "TI", "D")).to_dict()
    assert "all four modalities present" in render_report_page(report)
    missing = page.split("<h2>Missing modalities</h2>")[1].split("</table>")[0]
    assert missing.count("<tr>") == 1 + 3  # the header, the three settings of two modalities


@pytest.mark.parametrize("keys", [("RGB", "NI"), ("RGB", "NI", "TI", "D")])
def test_features_and_grad_cam_of_a_model_over_other_modalities(keys, tmp_path) -> None:
    from mambapro.models import build_model
    from mambapro.reports.analysis.gradcam import plot_grad_cam

    modalities = ModalitySet.of(keys)
    cfg = load_config("demo", ["data.img_size=[64,32]", "data.synthetic=false"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=3, num_cameras=2, modalities=modalities).eval()
    g = torch.Generator().manual_seed(1)
    batch = {m: torch.randn(3, 3, 64, 32, generator=g) for m in keys}
    labels = torch.tensor([0, 1, 1])
    batch.update(pids=labels, camids=labels, sceneids=labels, paths=["a", "b", "c"])
    feats = extract_analysis_features(model, [batch], torch.device("cpu"))
    c = model.backbone.out_dim
    assert feats.modalities == modalities and feats.before.shape == (len(keys), 3, c)
    assert feats.after.shape == (len(keys), 3, c) and feats.readout.shape == (len(keys), 3, c)
    with torch.no_grad():
        ori = model.features(batch)["ori"].numpy()
    np.testing.assert_allclose(feats.before[-1], ori[:, -c:], atol=1e-6)  # the last modality's cls
    maps = {m: grad_cam_maps(model, batch, m) for m in keys}
    assert all(maps[m].shape == (3, 64, 32) for m in keys)
    assert len({maps[m].tobytes() for m in keys}) == len(keys)  # each modality its own map
    path = plot_grad_cam(tmp_path / "g.png", {m: batch[m] for m in keys}, maps, ["q1", "q2", "q3"], cfg)
    assert path.stat().st_size > 0
