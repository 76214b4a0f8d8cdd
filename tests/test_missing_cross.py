"""Any-to-any retrieval over modality subsets: names, the 7 x 7 matrix, and `test --missing`."""

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
from mambapro.modalities import (
    MISSING_SETTINGS,
    MODALITIES,
    parse_missing_request,
    parse_pair,
    parse_present,
    present_label,
)
from mambapro.models import build_model
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
