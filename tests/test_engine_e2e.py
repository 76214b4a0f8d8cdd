"""End to end on a small synthetic set: train, save, resume, test, extract, search, presets."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mambapro
from mambapro.cli import main
from mambapro.config import PRESETS_DIR, load_config
from mambapro.data import dataset_spec
from mambapro.retrieval.features import FeatureSet
from mambapro.train import trainer as trainer_mod
from mambapro.train.checkpoint import load_checkpoint
from mambapro.train.trainer import TrainingError, run_training

ITERS = 2  # steps per epoch: a step interrupted or poisoned in epoch 2 follows a good one there

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = [
    "data.synthetic=false",  # the module's own small tree, not the demo's synthetic settings
    "data.img_size=[32,32]",
    "data.batch_size=8",
    "data.num_instances=2",
    "data.num_workers=0",
    "train.epochs=2",
    "train.warmup_epochs=1",
    f"train.iters_per_epoch={ITERS}",
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
    assert meta["seed"] == 1  # train.seed of the demo preset (configs/demo.yaml)
    versions = meta["versions"]
    # Compared with what the running interpreter reports itself (not with importlib.metadata,
    # which the run record uses): a local "+cpu"/"+cu121" suffix may differ between the two.
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert versions["numpy"] == np.__version__
    assert versions["mambapro"] == mambapro.__version__
    assert versions["python"] == platform.python_version()
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

    def interrupting(self, outputs, labels):  # Ctrl-C in the middle of epoch 2 (its second step)
        calls["n"] += 1
        if calls["n"] == ITERS + 2:
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
    # A file added to the dataset folder meanwhile (not an image: the samples stay the same) is
    # said: the run's fingerprint no longer matches the checkpoint's.
    stray = data_root / "RGBNT201" / "notes.txt"
    stray.write_text("added between the interruption and the resume\n")
    try:
        said = r"--resume: the dataset at .* is not the one .* was trained on so far"
        with pytest.warns(UserWarning, match=said):
            run_training(small_cfg(data_root, out), resume=True, quiet=True)
    finally:
        stray.unlink()

    a, b = _records(trained_run), _records(out)
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        for k in ("loss", "acc", "test_mAP", "test_Rank-1"):
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-6, abs=1e-7), k


def test_auto_resume_starts_the_run_then_continues_it(
    data_root: Path, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One command line for a relaunched job: --auto-resume starts the run when the folder has no
    last.ckpt and continues it when it has one; the metrics are those of an uninterrupted run."""
    out = tmp_path / "auto"
    argv = ["train", "-q", "--config", "demo", "--auto-resume", "--output", str(out), *SMALL,
            f"data.root={data_root}"]  # fmt: skip
    calls = {"n": 0}
    original = trainer_mod.ReIDLoss.forward

    def interrupting(self, outputs, labels):  # the job dies in the middle of epoch 2
        calls["n"] += 1
        if calls["n"] == ITERS + 2:
            raise KeyboardInterrupt
        return original(self, outputs, labels)

    monkeypatch.setattr(trainer_mod.ReIDLoss, "forward", interrupting)
    assert main(argv) == 130  # no last.ckpt yet: a new run, interrupted (a resumable checkpoint)
    assert json.loads((out / "meta.json").read_text())["resumed_from_epoch"] is None
    monkeypatch.setattr(trainer_mod.ReIDLoss, "forward", original)
    assert main(argv) == 0  # the same command line again: continued from last.ckpt
    assert json.loads((out / "meta.json").read_text())["resumed_from_epoch"] == 1
    a, b = _records(trained_run), _records(out)
    assert [r.get("epoch") for r in a] == [r.get("epoch") for r in b]
    for ra, rb in zip(a, b):
        for k in ("loss", "acc", "test_mAP", "test_Rank-1"):
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-6, abs=1e-7), k
    with pytest.raises(SystemExit) as refused:  # one or the other
        main([*argv[:4], "--resume", *argv[4:]])
    assert refused.value.code == 2


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
        if calls["n"] == ITERS + 2:  # second epoch, after one good step of it
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


# --------------------------------------------------------------------------- parameter counts
# Trainable parameters per part, counted by hand from the layer sizes of the model (D = encoder
# width, C = projected width); test_hand_counts_reproduce_spec_numbers ties these formulas to
# the exact integers of the paper's Table 3 before the presets are checked against them.


def _vit_block(d: int) -> int:
    """Pre-norm block: 2 LayerNorms (4D), attention in/out projections with biases (4D^2 + 4D),
    MLP D -> 4D -> D with biases (8D^2 + 5D)."""
    return 12 * d * d + 13 * d


def _clip_vit(d: int, layers: int, tokens: int, c: int) -> int:
    """CLIP image encoder: conv1 16x16 without bias, cls, positional table, ln_pre, blocks,
    ln_post, proj D x C without bias."""
    return 3 * 16 * 16 * d + d + tokens * d + 2 * d + layers * _vit_block(d) + 2 * d + d * c


def _imagenet_vit(d: int, layers: int, tokens: int) -> int:
    """timm ViT without classifier: patch conv with bias, cls, positional table, blocks, norm."""
    return 3 * 16 * 16 * d + d + d + tokens * d + layers * _vit_block(d) + 2 * d


def _dino_vit(d: int, layers: int, patch: int, tokens: int, registers: int = 0, qkv_bias: bool = True) -> int:
    """DINOv2 / DINOv3 encoder: patch conv with bias, cls, register tokens, a positional table
    over ``tokens`` (cls + patches; 0 for DINOv3's rotary positions), pre-norm blocks with
    LayerScale on both branches (2D) and, for DINOv3, no bias in the attention's input projection
    (3D fewer), final norm; no projection."""
    block = _vit_block(d) + 2 * d - (0 if qkv_bias else 3 * d)
    return 3 * patch * patch * d + d + d + registers * d + tokens * d + layers * block + 2 * d


def _mlp(d: int, hidden: int) -> int:
    """Linear(d -> hidden) -> act -> Linear(hidden -> d), both with biases."""
    return d * hidden + hidden + hidden * d + d


def _adapters(kind: str, d: int, layers: int, rank: int = 0) -> int:
    per_layer = {
        "none": 0,
        "pfa": _mlp(d, 2 * d),  # 768 -> 1536 -> 768
        "bna": _mlp(d, d // 2),  # 768 -> 384 -> 768
        "lora": 2 * d * rank,  # 768 -> r -> 768, no biases
    }[kind]
    return layers * per_layer


def _prompts(kind: str, d: int, layers: int, n_pr: int = 4, m: int = 3) -> int:
    """Per layer: N_pr prompt tokens per modality (M of them), plus D -> D/2 -> D blocks: M transfer
    blocks (SP), + one residual block (SRP-Fusion) or + one per prompt group (SRP-Separation)."""
    blocks = {"none": 0, "ip": 0, "sp": m, "srp_fusion": m + 1, "srp_separation": 2 * m}[kind]
    tokens = 0 if kind == "none" else m * n_pr * d
    return layers * (tokens + blocks * _mlp(d, d // 2))


def _aggregator(kind: str, c: int, depth: int = 2, d_state: int = 16, dt_rank: int = 32, m: int = 3) -> int:
    d = 2 * c  # expand 2
    readout = m * (2 * d + d * c + c)  # per modality: LayerNorm(2C), Linear(2C -> C)
    front = c * 2 * d + (9 * d + d) + 2 * d  # in_proj (no bias), depth-wise 3x3 conv, BatchNorm2d
    ssm = d * (dt_rank + 2 * d_state) + (dt_rank * d + d) + d * d_state + d + 2 * d  # x/dt_proj, A, D, LN
    out_proj = d * c  # one Linear(2C -> C), no bias, shared by the modalities
    intra = m * (front + ssm) + out_proj  # an SSM per modality
    inter = m * front + ssm + out_proj  # one SSM over the concatenation
    return {
        "none": 0,
        "sum": readout,
        "concat": readout + m * c * c + c,  # + Linear(MC -> C)
        "transformer": readout + depth * _vit_block(c),
        "intra_ma": readout + depth * intra,
        "inter_ma": readout + depth * inter,
        "ma": readout + depth * (intra + inter),
        "ma_transformer": readout + depth * (m + 1) * _vit_block(c),  # M intra + 1 inter blocks
    }[kind]


#: The classes a preset is counted at when its dataset publishes no training identity count.
UNPUBLISHED_CLASSES = 100


def _head(width: int, classes: int) -> int:
    """BNNeck (weight only: the bias is frozen) and a bias-free classifier."""
    return width + width * classes


# The RGBNT201 presets: ViT-B/16 at 256x128 (16x8 grid + cls = 129 tokens), D = 768, C = 512,
# 171 training identities, 4 cameras.
D, C, TOKENS, IDS, CAMS = 768, 512, 129, 171, 4
CLIP_F = _clip_vit(D, 12, TOKENS, C)
PFA = _adapters("pfa", D, 12)
SRP = _prompts("srp_fusion", D, 12)
CAM = CAMS * D  # camera embedding, one row per training camera
ORI = _head(3 * C, IDS)  # model.ori_head = concat
ORI_FUSE = 2 * ORI  # + the fused head on f_ma (3C wide)
MA = _aggregator("ma", C)


def _parts(backbone=0, adapters=0, prompts=0, camera=CAM, aggregator=0, heads=ORI) -> dict[str, int]:
    return dict(
        backbone=backbone,
        adapters=adapters,
        prompts=prompts,
        camera=camera,
        aggregator=aggregator,
        heads=heads,
    )


FULL = dict(adapters=PFA, prompts=SRP, heads=ORI_FUSE)  # PFA + SRP with an aggregator
VIT = _imagenet_vit(D, 12, TOKENS)
VIT_PARTS = dict(
    adapters=PFA, prompts=SRP, aggregator=_aggregator("ma", D, dt_rank=48), heads=2 * _head(3 * D, IDS)
)
# The DINO presets: frozen ViT-B at D = C = 768 (no projection), so the aggregator and the heads
# work at 768 and MA's dt_rank is the release's ceil(768 / 16) = 48, as for Table 9's ViT.
# DINOv2 (patch 14) at 252x126 or 126x252: 18x9 patches + cls = 163 positions; DINOv3 (patch 16):
# rotary positions, four registers, no bias in the attention's input projection.
DINOV2 = _dino_vit(D, 12, 14, tokens=163)
DINOV3 = _dino_vit(D, 12, 16, tokens=0, registers=4, qkv_bias=False)
DINO_MA = _aggregator("ma", D, dt_rank=48)
DINO_ROWS = {
    "rgbnt201": _parts(adapters=PFA, prompts=SRP, aggregator=DINO_MA, heads=2 * _head(3 * D, IDS)),
    "rgbnt100": _parts(
        adapters=PFA, prompts=SRP, camera=8 * D, aggregator=DINO_MA, heads=_head(D, 50) + _head(3 * D, 50)
    ),
    "msvr310": _parts(
        adapters=PFA, prompts=SRP, camera=8 * D, aggregator=DINO_MA, heads=_head(D, 155) + _head(3 * D, 155)
    ),
}
EXPECTED_TRAINABLE = {
    "rgbnt201.yaml": _parts(**FULL, aggregator=MA),
    "rgbnt100.yaml": _parts(  # 50 ids, 8 cameras; one shared 512-wide head per modality (ori_head)
        **{**FULL, "heads": _head(C, 50) + _head(3 * C, 50)}, camera=8 * D, aggregator=MA
    ),
    "msvr310.yaml": _parts(
        **{**FULL, "heads": _head(C, 155) + _head(3 * C, 155)}, camera=8 * D, aggregator=MA
    ),
    # Beyond the paper's benchmarks. RGBN300: RGB + NI only (two prompt groups, two MA branches),
    # 150 ids, 8 cameras, RGBNT100's recipe (one shared head per modality).
    "rgbn300.yaml": _parts(
        adapters=PFA,
        prompts=_prompts("srp_fusion", D, 12, m=2),
        camera=8 * D,
        aggregator=_aggregator("ma", C, m=2),
        heads=_head(C, 150) + _head(2 * C, 150),
    ),
    # WMVEID863: MSVR310's recipe; no published training-identity count, so no classifier rows.
    # WMVEID863 publishes no identity count: counted at UNPUBLISHED_CLASSES.
    "wmveid863.yaml": _parts(
        **{**FULL, "heads": _head(C, UNPUBLISHED_CLASSES) + _head(3 * C, UNPUBLISHED_CLASSES)},
        camera=8 * D,
        aggregator=MA,
    ),
    # Market1501-MM: RGBNT201's recipe, 751 ids, 6 cameras.
    "market1501mm.yaml": _parts(**{**FULL, "heads": 2 * _head(3 * C, 751)}, camera=6 * D, aggregator=MA),
    # tiny encoder (D = 192, 4 layers, C = 128) fine-tuned at 128x64 (8x4 grid + cls = 33 tokens)
    "demo.yaml": _parts(
        backbone=_clip_vit(192, 4, 33, 128),
        adapters=_adapters("pfa", 192, 4),
        prompts=_prompts("srp_fusion", 192, 4),
        camera=CAMS * 192,
        aggregator=_aggregator("ma", 128),
        heads=2 * _head(3 * 128, IDS),
    ),
    "table3_A_clip_l.yaml": _parts(),
    "table3_B_clip_f.yaml": _parts(backbone=CLIP_F),
    "table3_C_clip_l_pfa.yaml": _parts(adapters=PFA),
    "table3_D_clip_l_srp.yaml": _parts(prompts=SRP),
    "table3_E_clip_l_pfa_srp.yaml": _parts(adapters=PFA, prompts=SRP),
    "table3_F_clip_l_pfa_srp_ma.yaml": _parts(**FULL, aggregator=MA),
    "table3_G_clip_f_pfa_srp_ma.yaml": _parts(**FULL, backbone=CLIP_F, aggregator=MA),
    "table4_ip.yaml": _parts(prompts=_prompts("ip", D, 12)),
    "table4_sp.yaml": _parts(prompts=_prompts("sp", D, 12)),
    "table4_srp_fusion.yaml": _parts(prompts=SRP),
    "table4_srp_separation.yaml": _parts(prompts=_prompts("srp_separation", D, 12)),
    "table5_bna.yaml": _parts(adapters=_adapters("bna", D, 12)),
    "table5_lora_r64.yaml": _parts(adapters=_adapters("lora", D, 12, rank=64)),
    "table5_lora_r256.yaml": _parts(adapters=_adapters("lora", D, 12, rank=256)),
    "table5_lora_r384.yaml": _parts(adapters=_adapters("lora", D, 12, rank=384)),
    "table5_pfa.yaml": _parts(adapters=PFA),
    **{
        f"table6_{kind}.yaml": _parts(**FULL, aggregator=_aggregator(kind, C, depth=depth))
        for kind, depth in [
            ("sum", 2),
            ("concat", 2),
            ("transformer", 1),
            ("intra_ma", 1),
            ("inter_ma", 1),
            ("ma", 1),
        ]
    },
    **{
        f"table8_{pos}.yaml": _parts(adapters=PFA)
        for pos in ("behind_ffn", "behind_mhsa", "side_ffn", "side_mhsa")
    },
    "table9_clip_f.yaml": _parts(**FULL, backbone=CLIP_F, aggregator=MA),
    "table9_clip_l.yaml": _parts(**FULL, aggregator=MA),
    "table9_vit_f.yaml": _parts(**VIT_PARTS, backbone=VIT),
    "table9_vit_l.yaml": _parts(**VIT_PARTS),
    "table11_ma_mamba.yaml": _parts(**FULL, aggregator=_aggregator("ma", C, depth=1)),
    "table11_ma_trans.yaml": _parts(**FULL, aggregator=_aggregator("ma_transformer", C, depth=1)),
}
# The robust presets (modality dropout) train exactly what their bases train.
EXPECTED_TRAINABLE.update(
    {
        f"{base}_robust.yaml": EXPECTED_TRAINABLE[f"{base}.yaml"]
        for base in ("demo", "rgbnt201", "rgbnt100", "msvr310")
    }
)
# Beyond the paper: the dataset presets with a DINOv2 or DINOv3 encoder (same trainable parts at
# D = C = 768 whichever of the two).
EXPECTED_TRAINABLE.update(
    {f"{base}_{dino}.yaml": row for base, row in DINO_ROWS.items() for dino in ("dinov2", "dinov3")}
)
ENCODERS = {
    "clip_vit_b16": CLIP_F,
    "vit_b16_imagenet": VIT,
    "tiny": _clip_vit(192, 4, 33, 128),
    "dinov2_vitb14": DINOV2,
    "dinov3_vitb16": DINOV3,
}


def test_hand_counts_reproduce_spec_numbers() -> None:
    """The formulas above give the paper's Table 3 exact integers (and the paper's rounded millions)."""
    assert CLIP_F == 86_140_416
    assert PFA == 28_339_200 and SRP == 28_477_440 and PFA + SRP == 56_816_640
    assert PFA + SRP + MA == 74_174_976
    assert [_prompts(k, D, 1) for k in ("ip", "sp", "srp_separation", "srp_fusion")] == [
        9_216,
        1_782_144,
        3_555_072,
        2_373_120,
    ]
    assert [_adapters("lora", D, 1, rank=r) for r in (64, 256, 384)] == [98_304, 393_216, 589_824]
    assert _adapters("bna", D, 1) == 590_976 and _adapters("pfa", D, 1) == 2_361_600
    agg = {k: _aggregator(k, C, depth=1) for k in ("sum", "transformer", "intra_ma", "inter_ma", "ma")}
    assert agg == {
        "sum": 1_580_544,
        "transformer": 4_732_928,
        "intra_ma": 5_643_776,
        "inter_ma": 5_406_208,
        "ma": 9_469_440,
    }
    assert _aggregator("ma_transformer", C, depth=1) == 14_190_080 and MA == 17_358_336
    assert round(_aggregator("concat", C, depth=1) / 1e6, 2) == 2.37  # the paper's Concat row
    # timm's vit_base_patch16_224 without classifier has 85,798,656 parameters at 197 tokens.
    assert _imagenet_vit(D, 12, 197) == 85_798_656
    # timm: vit_base_patch14_dinov2 86,579,712 at its 37x37 grid + cls (1,370 positions);
    # vit_base_patch16_dinov3 85,641,216 at any size.
    assert _dino_vit(D, 12, 14, tokens=1370) == 86_579_712
    assert DINOV3 == 85_641_216


def test_every_preset_is_listed() -> None:
    files = sorted(PRESETS_DIR.rglob("*.yaml"))
    assert len([f for f in files if f.parent.name == "ablations"]) >= 20
    assert sorted(f.name for f in files) == sorted(EXPECTED_TRAINABLE)


@pytest.mark.parametrize("name", sorted(EXPECTED_TRAINABLE))
def test_every_preset_and_ablation_builds_its_model(name: str) -> None:
    """Each preset trains exactly its parts: no adapters with model.adapter=none, no prompts with
    model.prompt=none, the encoder only under model.freeze=finetune, no aggregator for none."""
    from mambapro.reports.params import parameter_report

    path = next(PRESETS_DIR.rglob(name))
    cfg = load_config(path)
    published = dataset_spec(cfg.data.dataset).published[0]
    report = parameter_report(cfg, None if published else UNPUBLISHED_CLASSES)
    trainable = {part: c["trainable"] for part, c in report["parts"].items()}
    assert trainable == EXPECTED_TRAINABLE[name]
    assert report["trainable"] == sum(EXPECTED_TRAINABLE[name].values())
    # The encoder is built whole whether it trains or not.
    assert report["parts"]["backbone"]["total"] == ENCODERS[cfg.model.backbone]


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
        # One epoch: the ranks' weights are compared after its steps (DDP's all-reduce of each
        # step's gradients keeps them equal; the ranks' batches differ).
        "train.epochs=1",
        "train.warmup_epochs=0",
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
