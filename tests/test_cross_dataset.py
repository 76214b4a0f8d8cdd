"""Testing a checkpoint on another dataset with the same modalities (``test --dataset``), cameras
the model never saw, and evaluation over a two-modality model (``--missing all`` and ``cross``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TinyRun
from mambapro.cli import main
from mambapro.config import config_to_dict, load_config
from mambapro.data import build_dataset
from mambapro.data.synth import generate
from mambapro.errors import UserError
from mambapro.modalities import ModalitySet
from mambapro.models import build_model
from mambapro.options import check_test_options
from mambapro.retrieval.testing import _cross_dataset_extra
from mambapro.train.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["data.img_size=[32,32]", "data.synthetic=false"]


def _batch(modalities: ModalitySet, camids: list[int], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {m: torch.randn(len(camids), 3, 32, 32, generator=g) for m in modalities}
    batch["camids"] = torch.tensor(camids)
    return batch


# ------------------------------------------------------------------ cameras the model never saw


def test_an_unseen_camera_gets_the_mean_of_the_learned_camera_embeddings() -> None:
    cfg = load_config("demo", TINY)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=4, num_cameras=2).eval()
    table = model.backbone.camera_embedding
    assert table is not None and table.shape[0] == 2
    with torch.no_grad():
        table.copy_(torch.randn_like(table))  # rows far apart: a wrong row would show
    batch = _batch(model.modalities, [0, 5])
    # Today's rule: a camera beyond the table is refused.
    with pytest.raises(ValueError, match=r"camids range 0\.\.5 is outside the camera embedding's 0\.\.1"):
        model(batch)
    model.backbone.unseen_cameras = "mean"
    with torch.no_grad():
        got = model(batch)
    # By hand: the same model with camera 1's row replaced by the mean of the learned rows, and
    # the unseen camera fed as camera 1.
    hand = copy.deepcopy(model)
    hand.backbone.unseen_cameras = "error"
    with torch.no_grad():
        hand.backbone.camera_embedding[1] = table.mean(dim=0)
        want = hand({**batch, "camids": torch.tensor([0, 1])})
        seen = model({**batch, "camids": torch.tensor([0, 1])})
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert not torch.allclose(got[1], seen[1], atol=1e-4)  # the mean is not camera 1's own row


# ------------------------------------------------------------------ the --dataset option


def test_the_dataset_option_is_checked_before_torch(tmp_path: Path) -> None:
    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(UserError, match=r"^'--dataset' = 'NOPE' is not one of: RGBNT201, RGBNT100, MSVR310"):
        check_test_options(ckpt, tmp_path / "t", None, "NOPE")
    with pytest.raises(UserError, match=r"^--dataset .*gone\.yaml: no such file$"):
        check_test_options(ckpt, tmp_path / "t", None, tmp_path / "gone.yaml")
    # --missing is checked against the named dataset's modalities (MSVR310: RGB, NI, TI).
    with pytest.raises(UserError, match=r"unknown modality 'D'; choose from RGB, NI, TI"):
        check_test_options(ckpt, tmp_path / "t", "D:RGB", "msvr310")
    assert check_test_options(ckpt, tmp_path / "t", "TI:RGB+NI", "msvr310") == tmp_path / "t"


def test_a_cross_dataset_test_keeps_the_training_image_size(tiny_run: TinyRun, tmp_path: Path) -> None:
    state = load_checkpoint(tiny_run.checkpoint)
    extra = _cross_dataset_extra(tiny_run.checkpoint, state, "msvr310", {"data": {"root": "r"}})
    assert extra == {"data": {"root": "r", "dataset": "msvr310", "img_size": [32, 32], "synthetic": False}}
    # The size the checkpoint records is the one its images were resized to.
    assert state["img_size"] == [32, 32]
    state["img_size"] = [48, 24]
    assert _cross_dataset_extra("c.ckpt", state, "MSVR310", None)["data"]["img_size"] == [48, 24]
    # A checkpoint from before the record, trained at its dataset's default size: that size, not
    # the tested dataset's.
    del state["img_size"]
    state["config"]["data"]["img_size"] = None
    extra = _cross_dataset_extra("c.ckpt", state, "MSVR310", None)
    assert extra["data"]["img_size"] == [256, 128]  # RGBNT201's, where MSVR310's is 128 x 256


@pytest.fixture(scope="module")
def msvr310(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic MSVR310 with more cameras than the tiny RGBNT201 run trained on (2)."""
    root = tmp_path_factory.mktemp("msvr310")
    generate("msvr310", root, seed=11, ids=6, test_ids=3, cameras=3, shots=2, scenes=2)
    ds = build_dataset("MSVR310", root)
    assert max(s.camid for s in (*ds.query, *ds.gallery)) == 2  # camera 2: never seen in training
    return root


def test_cli_tests_an_rgbnt201_checkpoint_on_msvr310(
    tiny_run: TinyRun, msvr310: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cross"
    argv = ["test", "-q", "--checkpoint", str(tiny_run.checkpoint), "--dataset", "msvr310"]
    assert main([*argv, "--data-root", str(msvr310), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "trained on RGBNT201, tested on MSVR310"
    report = (out / "report.txt").read_text()
    assert report.startswith("trained on RGBNT201, tested on MSVR310\n")
    assert "dataset check: cross-dataset (trained on RGBNT201, tested on MSVR310;" in report
    saved = json.loads((out / "results.json").read_text())
    assert saved["trained_on"] == "RGBNT201" and saved["tested_on"] == "MSVR310"
    assert saved["dataset_check"] == "cross-dataset" and saved["modalities"]["keys"] == ["RGB", "NI", "TI"]
    full = saved["results"]["full"]
    assert full["protocol"] == "msvr310" and 0.0 < full["mAP"] <= 1.0  # MSVR310's scene protocol
    # The same checkpoint on its own dataset: today's report.
    own = tmp_path / "own"
    argv = ["test", "-q", "--checkpoint", str(tiny_run.checkpoint), "--data-root", str(tiny_run.tree)]
    assert main([*argv, "--output", str(own)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "RGBNT201 test set"
    saved = json.loads((own / "results.json").read_text())
    assert saved["trained_on"] == saved["tested_on"] == "RGBNT201" and saved["dataset_check"] == "match"


def test_cli_cross_dataset_missing_table_and_matrix(
    tiny_run: TinyRun, msvr310: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["test", "-q", "--checkpoint", str(tiny_run.checkpoint), "--dataset", "MSVR310"]
    argv += ["--data-root", str(msvr310)]
    assert main([*argv, "--missing", "cross", "--output", str(tmp_path / "x")]) == 0
    printed = capsys.readouterr().out
    assert "trained on RGBNT201, tested on MSVR310, any-to-any retrieval" in printed
    cells = json.loads((tmp_path / "x/results.json").read_text())["missing_cross"]
    assert np.asarray(cells["mAP"]).shape == (7, 7)


def test_a_dataset_of_other_modalities_is_one_line_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two = ModalitySet.of(("RGB", "NI"))
    cfg = load_config("demo", TINY)
    model = build_model(cfg, num_classes=4, num_cameras=2, modalities=two)
    state = {
        "model": model.state_dict(),
        "config": config_to_dict(cfg),
        "num_classes": 4,
        "num_cameras": 2,
        "dataset": "RGBNT201",
        "modalities": two.to_dict(),
    }
    ckpt = save_checkpoint(state, tmp_path / "two.ckpt")
    out = tmp_path / "never"
    assert main(["test", "-q", "--checkpoint", str(ckpt), "--dataset", "MSVR310", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"mambapro test: error: --dataset MSVR310 has the modalities RGB+NI+TI, but {ckpt} was trained on "
        "RGBNT201 with RGB+NI: a cross-dataset test needs the same modalities"
    ]
    assert not out.exists()


# ------------------------------------------------------------------ a dataset spec file

DUAL = """\
name: TwoBand
folder: two_band
splits: {train: train, query: query, gallery: gallery}
structure: modality_folders
modalities:
  - {key: RGB, folder: visible}
  - {key: NI, folder: nir}
name_pattern: '^(?P<pid>\\d{4})_c(?P<cam>\\d)_'
name_rule: PPPP_cC_SSS.jpg (camera 1-6)
camera_base: 1
max_cameras: 6
img_size: [64, 32]
protocol: same_camera
subject: person
"""


def test_cli_tests_an_rgbn300_checkpoint_on_a_spec_file_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two = ModalitySet.of(("RGB", "NI"))
    cfg = load_config("demo", [*TINY, "data.dataset=RGBN300"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=4, num_cameras=2)
    state = {
        "model": model.state_dict(),
        "config": config_to_dict(cfg),
        "num_classes": 4,
        "num_cameras": 2,
        "dataset": "RGBN300",
        "modalities": two.to_dict(),
    }
    ckpt = save_checkpoint(state, tmp_path / "run/last.ckpt")
    spec = tmp_path / "two_band.yaml"
    spec.write_text(DUAL)
    generate(str(spec), tmp_path / "data", seed=2, ids=6, test_ids=3, cameras=3, shots=2)
    out = tmp_path / "t"
    argv = [
        "test",
        "-q",
        "--checkpoint",
        str(ckpt),
        "--dataset",
        str(spec),
        "--data-root",
        str(tmp_path / "data"),
    ]
    assert main([*argv, "--missing", "all", "--output", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "trained on RGBN300, tested on TwoBand"
    assert "trained on RGBN300, tested on TwoBand, missing modalities" in lines
    rows = json.loads((out / "missing_modality.json").read_text())["results"]
    assert list(rows) == ["full", "-R", "-N"]
    saved = json.loads((out / "results.json").read_text())
    assert (saved["trained_on"], saved["tested_on"]) == ("RGBN300", "TwoBand")
