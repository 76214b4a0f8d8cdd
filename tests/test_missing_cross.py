"""Any-to-any retrieval over modality subsets: names, the 7 x 7 matrix, and `test --missing`; a
two-modality model's 3 settings and 3 x 3 matrix."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from mambapro.cli import main
from mambapro.config import config_to_dict, load_config
from mambapro.data import build_dataset, build_test_transform, read_triplet
from mambapro.data.synth import generate
from mambapro.errors import ConfigError
from mambapro.evaluation import compute_distmat
from mambapro.files import OUTPUT_MARKER
from mambapro.modalities import (
    MISSING_SETTINGS,
    MODALITIES,
    ModalitySet,
    parse_missing_request,
    parse_pair,
    parse_present,
    present_label,
)
from mambapro.models import build_model
from mambapro.options import TEST_OUTPUTS
from mambapro.retrieval.testing import cross_missing_matrix, evaluate_model
from mambapro.train.checkpoint import load_model, save_checkpoint
from reference.eval import reference_evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

OVERRIDES = ["data.synthetic=false", "data.img_size=[32,32]", "test.batch_size=8", "data.num_workers=0"]


def test_subsets_are_named_by_the_modalities_present() -> None:
    assert [present_label(s) for s in MISSING_SETTINGS] == [
        "RGB+NI+TI", "NI+TI", "RGB+TI", "RGB+NI", "TI", "NI", "RGB",
    ]  # fmt: skip
    for s in MISSING_SETTINGS:  # the two namings are inverse
        assert parse_present(present_label(s)) == s
    assert parse_present("ti+rgb") == "N"  # any case, any order
    assert parse_pair("TI:RGB+NI") == ("RN", "T")
    assert parse_missing_request("cross") == "cross" and parse_missing_request("ALL") == "all"
    assert parse_missing_request("-nt") == "NT"
    assert parse_missing_request("NI+TI") == "R" and parse_missing_request("rgb") == "NT"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("RGB+", "modality subset 'RGB+' is empty or has an empty name"),
        (":RGB", "modality pair ':RGB', the query: modality subset '' is empty or has an empty name"),
        ("RGB:", "modality pair 'RGB:', the gallery: modality subset '' is empty or has an empty name"),
        ("NIR:RGB", "the query: modality subset 'NIR': unknown modality 'NIR'; choose from RGB, NI, TI"),
        ("X", "unknown missing-modality setting 'X'"),
        # A modality named twice would silently be the subset with it once.
        ("RGB+RGB:TI", "modality pair 'RGB+RGB:TI', the query: modality subset 'RGB+RGB' names RGB twice"),
        ("TI:ni+RGB+NI", "the gallery: modality subset 'ni+RGB+NI' names NI twice"),
        ("rgb+NI+TI+RGB", "modality subset 'rgb+NI+TI+RGB' names RGB twice"),
        ("RGB:TI:NI", "modality pair 'RGB:TI:NI' has 2 ':'; give one QUERY:GALLERY pair"),
    ],
)
def test_bad_subsets_are_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        parse_missing_request(text)
    assert "\n" not in str(info.value)


def test_an_unknown_request_lists_every_form() -> None:
    with pytest.raises(ConfigError) as info:
        parse_missing_request("bogus")
    message = str(info.value)
    assert (
        message.startswith("unknown missing-modality setting 'bogus'; choose one of: ")
        and "\n" not in message
    )
    for form in (", ".join(MISSING_SETTINGS), "all (", "cross (", "NI+TI", "QUERY:GALLERY", "TI:RGB+NI"):
        assert form in message, form


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cross")
    generate("rgbnt201", root / "data", seed=3, ids=6, test_ids=3, cameras=2, shots=2)
    cfg = load_config("demo", [*OVERRIDES, f"data.root={root / 'data'}"])
    ds = build_dataset("RGBNT201", root / "data")
    torch.manual_seed(0)
    model = build_model(cfg, ds.num_train_pids, ds.num_train_cams)
    state = {
        "model": model.state_dict(),
        "config": config_to_dict(cfg),
        "num_classes": ds.num_train_pids,
        "num_cameras": ds.num_train_cams,
        "dataset": ds.name,
    }
    ckpt = save_checkpoint(state, root / "run" / "last.ckpt")
    model, cfg, _ = load_model(ckpt)
    return root, ckpt, model, cfg, ds


def _hand_built_map(model, cfg, ds, q_setting: str, g_setting: str) -> float:
    """Features one sample at a time, missing modalities zeroed by hand, the loop reference."""
    transform = build_test_transform(cfg.data, cfg.img_size())

    def feats(samples: list, setting: str) -> np.ndarray:
        gone = set(MODALITIES) - set(present_label(setting).split("+"))
        out = []
        for s in samples:
            images = transform(read_triplet(s, ds.name))
            batch = {m: (torch.zeros_like(x) if m in gone else x)[None] for m, x in zip(MODALITIES, images)}
            batch["camids"] = torch.tensor([s.camid])
            with torch.no_grad():
                out.append(model(batch)[0].numpy())
        return np.stack(out)

    qf, gf = feats(ds.query, q_setting), feats(ds.gallery, g_setting)
    dist = compute_distmat(qf, gf, metric=cfg.test.distance)
    ids = lambda samples, attr: np.array([getattr(s, attr) for s in samples])  # noqa: E731
    ref = reference_evaluate(
        dist, ids(ds.query, "pid"), ids(ds.gallery, "pid"), ids(ds.query, "camid"), ids(ds.gallery, "camid")
    )
    return ref["mAP"]


def test_cross_matrix_diagonal_and_an_off_diagonal_cell(setup) -> None:
    _, _, model, cfg, ds = setup
    cpu = torch.device("cpu")
    matrix = cross_missing_matrix(model, cfg, ds.name, ds.query, ds.gallery, cpu)
    assert set(matrix) == {(q, g) for q in MISSING_SETTINGS for g in MISSING_SETTINGS}
    for s in ("full", "R", "NT"):  # the diagonal is the `--missing all` table's rows
        same = evaluate_model(model, cfg, ds.name, ds.query, ds.gallery, cpu, missing=s)
        assert matrix[(s, s)].mAP == pytest.approx(same.mAP, abs=1e-12)
    # A thermal-only query against an RGB+NIR gallery, built by hand.
    assert matrix[("RN", "T")].mAP == pytest.approx(_hand_built_map(model, cfg, ds, "RN", "T"), abs=1e-5)


def test_cli_cross_and_pair(setup, capsys: pytest.CaptureFixture[str]) -> None:
    root, ckpt, model, cfg, ds = setup
    out = root / "cross_out"
    assert main(["test", "-q", "--checkpoint", str(ckpt), "--missing", "cross", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "any-to-any retrieval" in printed and "RGB+NI+TI" in printed
    saved = json.loads((out / "results.json").read_text())["missing_cross"]
    assert saved["subsets"] == [present_label(s) for s in MISSING_SETTINGS]
    assert np.asarray(saved["mAP"]).shape == (7, 7)
    assert (out / "missing_cross.png").stat().st_size > 0 and (out / "missing_cross.txt").is_file()
    pair = root / "pair_out"
    assert (
        main(["test", "-q", "--checkpoint", str(ckpt), "--missing", "TI:RGB+NI", "--output", str(pair)]) == 0
    )
    row = json.loads((pair / "results.json").read_text())["results"]["TI:RGB+NI"]
    assert row["mAP"] == pytest.approx(saved["mAP"][4][3], abs=1e-9)  # row TI, column RGB+NI


def test_cli_refuses_a_repeated_modality_before_evaluating(setup, capsys: pytest.CaptureFixture[str]) -> None:
    root, ckpt, *_ = setup
    out = root / "twice_out"
    assert (
        main(["test", "-q", "--checkpoint", str(ckpt), "--missing", "RGB+RGB:TI", "--output", str(out)]) == 2
    )
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "mambapro test: error: modality pair 'RGB+RGB:TI', the query: modality subset 'RGB+RGB' names RGB "
        "twice; name each modality present once, joined by '+' (e.g. RGB+NI)"
    ]
    assert not captured.out and not out.exists()


# ------------------------------------------------------------------ a two-modality model

RGB_NI = ModalitySet.of(("RGB", "NI"))


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory):
    """An untrained RGB+NI model on a synthetic RGBN300 (RGB and NI side by side), as a checkpoint."""
    root = tmp_path_factory.mktemp("two")
    generate("rgbn300", root / "data", seed=3, ids=6, test_ids=3, cameras=2, shots=2)
    cfg = load_config("demo", [*OVERRIDES, "data.dataset=RGBN300", f"data.root={root / 'data'}"])
    ds = build_dataset("RGBN300", root / "data")
    torch.manual_seed(0)
    model = build_model(cfg, ds.num_train_pids, ds.num_train_cams)
    assert model.modalities == RGB_NI
    state = {
        "model": model.state_dict(),
        "config": config_to_dict(cfg),
        "num_classes": ds.num_train_pids,
        "num_cameras": ds.num_train_cams,
        "dataset": ds.name,
        "modalities": RGB_NI.to_dict(),
    }
    return root, save_checkpoint(state, root / "run" / "last.ckpt")


def test_two_modalities_missing_all_has_three_rows(two, capsys: pytest.CaptureFixture[str]) -> None:
    root, ckpt = two
    out = root / "all"
    assert main(["test", "-q", "--checkpoint", str(ckpt), "--missing", "all", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "RGBN300 test set, missing modalities" in printed
    rows = json.loads((out / "missing_modality.json").read_text())
    assert list(rows["results"]) == ["full", "-R", "-N"] and rows["modalities"]["keys"] == ["RGB", "NI"]
    table = (out / "missing_modality.txt").read_text().splitlines()
    assert [line.split()[0] for line in table[4:-1]] == ["full", "-R", "-N"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["modalities"] == RGB_NI.to_dict() and list(saved["results"]) == ["full"]
    # Zeroing a modality changes the features: the rows differ.
    assert len({r["mAP"] for r in rows["results"].values()}) > 1
    assert {p.name for p in out.iterdir()} <= {*TEST_OUTPUTS, OUTPUT_MARKER}  # what test declares


def test_two_modalities_cross_matrix_is_three_by_three(two, capsys: pytest.CaptureFixture[str]) -> None:
    root, ckpt = two
    out = root / "cross"
    assert main(["test", "-q", "--checkpoint", str(ckpt), "--missing", "cross", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "RGBN300 test set, any-to-any retrieval" in printed
    cells = json.loads((out / "results.json").read_text())["missing_cross"]
    assert cells["subsets"] == ["RGB+NI", "NI", "RGB"]
    assert np.asarray(cells["mAP"]).shape == (3, 3) and np.asarray(cells["Rank-1"]).shape == (3, 3)
    assert (out / "missing_cross.png").stat().st_size > 0
    text = (out / "missing_cross.txt").read_text()
    assert text.splitlines()[2].split()[4:] == ["RGB+NI", "NI", "RGB"]
    # test writes only what it declares (the names a folder is checked for before it writes).
    assert {p.name for p in out.iterdir()} <= {*TEST_OUTPUTS, OUTPUT_MARKER}
    # One pair, by the modalities present: the matrix's cell (row NI, column RGB).
    pair = root / "pair"
    assert main(["test", "-q", "--checkpoint", str(ckpt), "--missing", "NI:RGB", "--output", str(pair)]) == 0
    row = json.loads((pair / "results.json").read_text())["results"]["NI:RGB"]
    assert row["mAP"] == pytest.approx(cells["mAP"][1][2], abs=1e-9)


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        # TI is not one of the model's modalities: the message names the model's own.
        ("TI", "unknown missing-modality setting 'TI'; choose one of: full, R, N (letters name the missing "
         "modalities: R = RGB, N = NI; a leading '-' is allowed), all (the 3 settings), cross (the 3 x 3 "
         "any-to-any matrix)"),
        ("RN", "unknown missing-modality setting 'RN'; choose one of: full, R, N"),
        ("RGB:TI", "modality pair 'RGB:TI', the gallery: modality subset 'TI': unknown modality 'TI'; choose "
         "from RGB, NI"),
    ],
)  # fmt: skip
def test_two_modalities_refuse_settings_of_three(two, missing, message, capsys) -> None:
    root, ckpt = two
    out = root / "never"
    assert main(["test", "-q", "--checkpoint", str(ckpt), "--missing", missing, "--output", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"mambapro test: error: {message}")
    assert not out.exists()


def test_two_modalities_analyze_page(two, capsys: pytest.CaptureFixture[str]) -> None:
    root, ckpt = two
    out = root / "analysis"
    argv = ["analyze", "-q", "--checkpoint", str(ckpt), "--ids", "2", "--queries", "1", "--missing", "all"]
    assert main([*argv, "--output", str(out)]) == 0
    report = json.loads((out / "analysis.json").read_text())
    assert report["modalities"]["keys"] == ["RGB", "NI"]
    (label,) = report["missing"]
    assert list(report["missing"][label]) == ["full", "-R", "-N"]
    assert list(report["alignment"][label]) == ["RGB-NI"]
    page = (out / "report.html").read_text()
    assert "both modalities present" in page and "-R: RGB missing (zeroed)" in page
    assert (out / f"gradcam-{label}.png").stat().st_size > 0
