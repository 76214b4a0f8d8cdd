"""End to end on a small synthetic set: train, save, resume, test, extract, search, presets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mambapro.cli import main
from mambapro.config import PRESETS_DIR, load_config
from mambapro.engine import trainer as trainer_mod
from mambapro.engine.checkpoint import load_checkpoint
from mambapro.engine.inference import FeatureSet
from mambapro.engine.trainer import TrainingError, run_training

SMALL = [
    "data.img_size=[64,32]",
    "data.batch_size=8",
    "data.num_instances=2",
    "data.num_workers=0",
    "train.epochs=2",
    "train.warmup_epochs=1",
    "train.iters_per_epoch=3",
    "test.batch_size=16",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mambapro.data.synth import generate

    root = tmp_path_factory.mktemp("data")
    generate("rgbnt201", root, seed=3, ids=10, test_ids=4, cameras=2, shots=2)
    return root


def small_cfg(data_root: Path, out: Path, *extra: str):
    return load_config("demo", [*SMALL, f"data.root={data_root}", f"train.output={out}", *extra])


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "full"
    run_training(small_cfg(data_root, out), quiet=True)
    return out


def test_training_writes_the_run_record(trained_run: Path) -> None:
    names = {p.name for p in trained_run.iterdir()}
    assert {
        "config.yaml",
        "meta.json",
        "metrics.jsonl",
        "last.ckpt",
        "results.json",
        "cmc.png",
        "tb",
    } <= names
    meta = json.loads((trained_run / "meta.json").read_text())
    assert (
        meta["seed"] == 1 and meta["versions"]["torch"] == torch.__version__.split("+")[0] or meta["versions"]
    )
    # The recorded config reproduces the run's configuration exactly.
    assert load_config(trained_run / "config.yaml").train.output == str(trained_run)
    recs = _records(trained_run)
    epochs = [r for r in recs if "loss" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in epochs)
    final = recs[-1]
    assert final["selection"] == "final epoch" and 0.0 <= final["test_mAP"] <= 1.0
    ckpt = load_checkpoint(trained_run / "last.ckpt")
    assert ckpt["epoch"] == 2 and ckpt["iteration"] == 0
    assert {"model", "optimizer", "scheduler", "scaler", "torch_rng"} <= set(ckpt)


def test_interrupted_and_resumed_run_matches_uninterrupted(
    data_root: Path, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "resumed"
    calls = {"n": 0}
    original = trainer_mod.ReIDLoss.forward

    def interrupting(self, outputs, labels):  # Ctrl-C in the middle of epoch 2
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, outputs, labels)

    monkeypatch.setattr(trainer_mod.ReIDLoss, "forward", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run_training(small_cfg(data_root, out), quiet=True)
    ckpt = load_checkpoint(out / "last.ckpt")
    assert (ckpt["epoch"], ckpt["iteration"]) == (1, 1)  # saved mid-epoch, resumable
    monkeypatch.setattr(trainer_mod.ReIDLoss, "forward", original)

    with pytest.raises(TrainingError, match="--resume"):
        run_training(small_cfg(data_root, out), quiet=True)  # refuses to overwrite a run
    run_training(small_cfg(data_root, out), resume=True, quiet=True)

    a, b = _records(trained_run), _records(out)
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        for k in ("loss", "acc", "test_mAP", "test_Rank-1"):
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-6, abs=1e-7), k


def test_same_metrics_whatever_the_number_of_loader_workers(
    data_root: Path, trained_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "workers"
    run_training(small_cfg(data_root, out, "data.num_workers=2"), quiet=True)
    a, b = _records(trained_run), _records(out)
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        for k in ("loss", "acc", "test_mAP", "test_Rank-1"):
            if k in ra:
                assert rb[k] == ra[k], k


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "nan"
    calls = {"n": 0}
    original = trainer_mod.ReIDLoss.forward

    def poisoned(self, outputs, labels):
        calls["n"] += 1
        terms = original(self, outputs, labels)
        if calls["n"] == 5:  # second epoch
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(trainer_mod.ReIDLoss, "forward", poisoned)
    with pytest.raises(TrainingError, match="non-finite loss .* epoch 2"):
        run_training(small_cfg(data_root, out), quiet=True)
    ckpt = load_checkpoint(out / "last.ckpt")
    assert ckpt["epoch"] == 1 and ckpt["iteration"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_validation_selection_keeps_best_and_labels_report(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "val"
    cfg = small_cfg(data_root, out, "train.select_best=val", "data.val_ids=2", "train.eval_period=1")
    result = run_training(cfg, quiet=True)
    assert (out / "best.ckpt").exists()
    assert "by validation mAP" in result["label"]
    recs = [r for r in _records(out) if "val_mAP" in r]
    assert len(recs) == 2
    best = max(recs, key=lambda r: r["val_mAP"])
    assert load_checkpoint(out / "best.ckpt")["epoch"] == best["epoch"]


def test_test_command_with_missing_modalities_and_rerank(
    trained_run: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "test"
    code = main(
        [
            "test",
            "--checkpoint",
            str(trained_run / "last.ckpt"),
            "--missing",
            "all",
            "--output",
            str(out),
            "-q",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    for row in ("full", "-R", "-N", "-T", "-RN", "-RT", "-NT"):
        assert row in text
    rows = json.loads((out / "missing_modality.json").read_text())["results"]
    assert list(rows) == ["full", "-R", "-N", "-T", "-RN", "-RT", "-NT"]
    full = json.loads((trained_run / "results.json").read_text())["results"]
    # The 'full' row of the missing-modality table is the ordinary evaluation.
    full_map = next(iter(full.values()))["mAP"]
    assert rows["full"]["mAP"] == pytest.approx(full_map, abs=1e-9)

    assert (
        main(["test", "--checkpoint", str(trained_run / "last.ckpt"), "--rerank", "--output", str(out), "-q"])
        == 0
    )
    assert "re-ranked" in capsys.readouterr().out


def test_extract_and_search(trained_run: Path, data_root: Path, tmp_path: Path, capsys) -> None:
    feats_path = tmp_path / "gallery.npz"
    ckpt = str(trained_run / "last.ckpt")
    assert (
        main(
            [
                "extract",
                "--checkpoint",
                ckpt,
                "--data-root",
                str(data_root),
                "--split",
                "gallery",
                "--out",
                str(feats_path),
                "-q",
            ]
        )
        == 0
    )
    feats = FeatureSet.load(feats_path)
    assert feats.feats.shape[0] == len(feats.paths) == len(feats.pids) > 0
    query_file = sorted((data_root / "RGBNT201" / "test" / "RGB").iterdir())[0]
    png = tmp_path / "ranks.png"
    assert (
        main(
            [
                "search",
                "--checkpoint",
                ckpt,
                "--query",
                str(query_file),
                "--gallery",
                str(feats_path),
                "-k",
                "5",
                "--out",
                str(png),
                "-q",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("rank ") >= 5
    assert png.exists() and png.stat().st_size > 1000


def test_bad_checkpoint_is_a_clear_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"garbage")
    assert main(["test", "--checkpoint", str(bad)]) == 2
    assert "x.ckpt" in capsys.readouterr().err


def test_every_preset_and_ablation_builds_its_model() -> None:
    from mambapro.engine.report import parameter_report

    files = sorted(PRESETS_DIR.rglob("*.yaml"))
    ablations = [f for f in files if f.parent.name == "ablations"]
    assert len(ablations) >= 20
    for f in files:
        report = parameter_report(load_config(f))
        assert report["trainable"] > 0, f


@pytest.mark.slow
def test_two_process_distributed_run(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "mambapro.cli",
        "train",
        "--config",
        "demo",
        "--output",
        str(out),
        "--quiet",
        *SMALL,
        f"data.root={data_root}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = _records(out)
    assert any(r.get("ranks_in_sync") is True and r.get("world_size") == 2 for r in recs)
    assert (out / "results.json").exists() and (out / "last.ckpt").exists()
    assert not list(out.glob("*.tmp"))


def test_a_refused_run_leaves_no_output_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "never"
    code = main(
        ["train", "--config", "rgbnt201", "--data-root", str(tmp_path / "nodata"), "--output", str(out)]
    )
    assert code == 2
    assert "RGBNT201 dataset folder not found" in capsys.readouterr().err
    assert not out.exists()
