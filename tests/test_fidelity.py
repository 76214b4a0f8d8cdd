"""docs/FIDELITY.md against the presets, and the behaviour each recipe choice selects.

The tables of docs/FIDELITY.md name, per row, a config key and the value each preset must
have; the first tests read those tables and load the presets. The others check that a value
does what the row says, each against an independent expectation (timm's scheduler with the
release's arguments, PIL's own resize, hand-computed loss terms and parameter counts).
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from timm.scheduler import CosineLRScheduler

from mambapro.aggregation import SelectiveSSM
from mambapro.cli import main
from mambapro.config import Config, load_config
from mambapro.data import DatasetError, ReIDDataset, Sample, build_test_transform, build_train_transform
from mambapro.data.datasets import check_cameras
from mambapro.data.specs import dataset_spec
from mambapro.data.synth import generate
from mambapro.models import build_model
from mambapro.reports.params import parameter_report
from mambapro.runtime import eval_amp
from mambapro.train.distributed import DistInfo
from mambapro.train.optim import build_optimizer, build_scheduler, step_epoch
from mambapro.train.trainer import Trainer

FIDELITY = Path(__file__).resolve().parents[1] / "docs" / "FIDELITY.md"
PAPER_PRESETS = ("rgbnt201", "rgbnt100", "msvr310")


def _table(heading: str) -> list[dict[str, str]]:
    """Rows of the first Markdown table after ``## heading``, as {column: cell text}."""
    section = FIDELITY.read_text().split(f"## {heading}\n", 1)[1].splitlines()
    first = next(i for i, ln in enumerate(section) if ln.startswith("|"))
    lines = []
    for ln in section[first:]:
        if not ln.startswith("|"):
            break
        lines.append(ln)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for ln in lines[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln.strip().strip("|"))]
        assert len(cells) == len(header), (
            f"FIDELITY.md row has {len(cells)} cells, header {len(header)}: {ln}"
        )
        rows.append(dict(zip(header, cells)))
    return rows


def _value(cfg: Config, key: str):
    key = key.strip("`")
    if key == "img_size()":
        return list(cfg.img_size())
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _same(documented: str, actual) -> bool:
    want = yaml.safe_load(documented)
    if isinstance(actual, float) or isinstance(want, float):
        return isinstance(want, (int, float)) and math.isclose(float(want), float(actual), rel_tol=1e-9)
    return want == actual


DATASET_ROWS = _table("Dataset presets")
ABLATION_ROWS = _table("Ablation presets that differ from their base")


def test_fidelity_tables_are_read() -> None:
    # Guards the parser itself: a silently empty table would make the walks below vacuous.
    assert len(DATASET_ROWS) >= 40 and len(ABLATION_ROWS) >= 9
    keys = {r["key"] for r in DATASET_ROWS}
    for key in ("`model.ma_init`", "`model.ori_head`", "`data.independent_aug`", "`train.schedule_start`"):
        assert key in keys


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_dataset_presets_hold_the_documented_values(preset: str) -> None:
    cfg = load_config(preset)
    wrong = [
        f"{r['choice']} ({r['key']}): FIDELITY.md says {r[f'`{preset}`']}, the preset has "
        f"{_value(cfg, r['key'])!r}"
        for r in DATASET_ROWS
        if not _same(r[f"`{preset}`"], _value(cfg, r["key"]))
    ]
    assert not wrong, "\n".join(wrong)


def test_ablation_presets_hold_the_documented_values() -> None:
    wrong = []
    for r in ABLATION_ROWS:
        cfg = load_config(r["preset"])
        if not _same(r["value"], _value(cfg, r["key"])):
            wrong.append(f"{r['preset']} {r['key']}: documented {r['value']}, got {_value(cfg, r['key'])!r}")
    assert not wrong, "\n".join(wrong)


def test_config_shows_release_values() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["config", "--config", "rgbnt100"]) == 0
    shown = yaml.safe_load(out.getvalue())
    assert shown["model"]["ori_head"] == "per_modality"
    assert shown["data"]["independent_aug"] is True
    assert shown["train"]["seed"] == 1111 and shown["train"]["schedule_start"] == 1
    assert shown["test"]["amp"] is False and shown["test"]["neck_feat"] == "before"


# ----------------------------------------------------------------------------- behaviour


def _tiny(preset: str, *overrides: str) -> Config:
    """The preset with the tiny encoder and small inputs: everything else as the preset says."""
    return load_config(preset, ["model.backbone=tiny", "data.img_size=[32,64]", *overrides])


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_ma_release_init_zeroes_every_dt_bias(preset: str) -> None:
    torch.manual_seed(0)
    model = build_model(_tiny(preset), num_classes=5, num_cameras=2)
    ssms = [m for m in model.aggregator.modules() if isinstance(m, SelectiveSSM)]
    assert len(ssms) == 2 * 4  # 2 blocks x (3 intra + 1 inter)
    for ssm in ssms:
        assert torch.count_nonzero(ssm.dt_proj.bias) == 0
        # trunc-normal std 0.02 instead of Mamba's U(+-dt_rank^-0.5)
        assert ssm.dt_proj.weight.std().item() == pytest.approx(0.02, rel=0.15)
        assert ssm.dt_proj.weight.abs().max().item() <= 2.0  # trunc_normal_'s absolute bounds
        # A_log keeps its S4D-real init
        assert torch.allclose(ssm.A_log.exp()[0], torch.arange(1.0, ssm.d_state + 1))
    # The initial step is softplus(0) = ln 2 for every channel.
    assert F.softplus(ssms[0].dt_proj.bias).unique().tolist() == [pytest.approx(math.log(2))]


def test_ma_mamba_init_keeps_mamba_steps() -> None:
    torch.manual_seed(0)
    model = build_model(_tiny("rgbnt201", "model.ma_init=mamba"), num_classes=5, num_cameras=2)
    for ssm in (m for m in model.aggregator.modules() if isinstance(m, SelectiveSSM)):
        dt = F.softplus(ssm.dt_proj.bias)
        assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6
        assert dt.std() > 0  # log-uniform draws, not a constant


@pytest.fixture(scope="module")
def rgbnt100_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate("rgbnt100", root, seed=1, ids=8, test_ids=4, cameras=2, shots=2)
    return root


def test_rgbnt100_training_step_has_per_modality_terms(rgbnt100_root: Path, tmp_path: Path) -> None:
    cfg = _tiny(
        "rgbnt100",
        f"data.root={rgbnt100_root}",
        "data.batch_size=8",
        "data.num_instances=2",
        "data.num_workers=0",
        "train.device=cpu",
        f"train.output={tmp_path / 'run'}",
    )
    trainer = Trainer(cfg, DistInfo(), quiet=True)
    batch = next(iter(trainer.train_loader))
    model = trainer.model.train()
    outputs = model(batch)
    terms = trainer.loss_fn(outputs, batch["pids"])
    assert set(terms) == {f"{h}_{t}" for h in ("RGB", "NI", "TI", "fuse") for t in ("ce", "tri")} | {"loss"}
    # Hand-computed: NI's cls feature through the one shared BNNeck (batch statistics, as in
    # training) and classifier, label-smoothed CE at the preset's weight.
    feats = outputs["NI"][0]
    bn = model.ori_head.bn
    mean, var = feats.mean(0), feats.var(0, unbiased=False)
    normed = (feats - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
    logits = normed @ model.ori_head.classifier.weight.T
    want_ce = 0.25 * F.cross_entropy(logits, batch["pids"], label_smoothing=0.1)
    assert terms["NI_ce"].item() == pytest.approx(want_ce.item(), rel=1e-5)
    assert feats.shape == (8, model.backbone.out_dim)
    want_total = sum(v for k, v in terms.items() if k != "loss")
    assert terms["loss"].item() == pytest.approx(want_total.item(), rel=1e-6)


def test_rgbnt201_training_step_has_concat_terms() -> None:
    model = build_model(_tiny("rgbnt201"), num_classes=5, num_cameras=2).train()
    batch = {m: torch.randn(4, 3, 32, 64) for m in ("RGB", "NI", "TI")}
    batch["camids"] = torch.tensor([0, 1, 0, 1])
    outputs = model(batch)
    assert set(outputs) == {"ori", "fuse"}
    assert outputs["ori"][0].shape == (4, 3 * model.backbone.out_dim)


def test_per_modality_head_parameter_count() -> None:
    k, _ = dataset_spec("RGBNT100").published
    heads = parameter_report(load_config("rgbnt100"))["parts"]["heads"]["total"]
    assert heads == 2 * 512 + 512 * k + 2 * 1536 + 1536 * k
    concat = parameter_report(load_config("rgbnt201"))["parts"]["heads"]["total"]
    k201, _ = dataset_spec("RGBNT201").published
    assert concat == 2 * 1536 + 1536 * k201 + 2 * 1536 + 1536 * k201


def _asymmetric_triplet() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)) for _ in range(3)]


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_presets_draw_flips_per_modality(preset: str) -> None:
    cfg = load_config(preset, ["data.padding=0", "data.erase_prob=0"])
    tf = build_train_transform(cfg.data, (64, 32))
    test_tf = build_test_transform(cfg.data, (64, 32))
    images = _asymmetric_triplet()
    plain = test_tf(images)
    mirrored = test_tf([im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images])
    mixed = 0
    for seed in range(12):
        torch.manual_seed(seed)
        out = tf(images)
        # Each modality is either unflipped or flipped (up to the bicubic vs bilinear resize).
        flipped = []
        for m in range(3):
            d_plain = (out[m] - plain[m]).abs().mean()
            d_mirror = (out[m] - mirrored[m]).abs().mean()
            flipped.append(bool(d_mirror < d_plain))
        mixed += len(set(flipped)) > 1
    assert mixed >= 3  # with shared draws it would be 0; independent: 1 - 2 * 0.5**3 = 75% of seeds


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_test_resize_is_pils_own(interpolation: str) -> None:
    cfg = load_config("rgbnt201", [f"data.test_interpolation={interpolation}"])
    images = _asymmetric_triplet()
    out = build_test_transform(cfg.data, (40, 20))(images)
    pil = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[interpolation]
    for m, im in enumerate(images):
        ref = torch.from_numpy(np.array(im.resize((20, 40), pil))).permute(2, 0, 1).float() / 255
        assert torch.allclose(out[m], (ref - 0.5) / 0.5, atol=1e-6)


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_schedule_matches_the_release_every_epoch(preset: str) -> None:
    cfg = load_config(preset)
    t = cfg.train
    net = torch.nn.Linear(4, 4)  # a weight (lr) and a bias (2 x lr) group
    opt = build_optimizer(net.named_parameters(), t)
    sched = build_scheduler(opt, t)
    # The release: solver/scheduler_factory.py with its arguments, stepped with epoch = 1..E.
    ref_opt = build_optimizer(torch.nn.Linear(4, 4).named_parameters(), t)
    ref = CosineLRScheduler(
        ref_opt,
        t_initial=t.epochs,
        lr_min=0.001 * 3.5e-4,
        cycle_mul=1.0,  # the release's copy calls these t_mul and decay_rate
        cycle_decay=0.1,
        warmup_lr_init=0.01 * 3.5e-4,
        warmup_t=t.warmup_epochs,
        cycle_limit=1,
        t_in_epochs=True,
        noise_range_t=None,
    )
    for epoch in range(t.epochs):
        step_epoch(sched, epoch, t)
        ref.step(epoch + 1)
        got = [g["lr"] for g in opt.param_groups]
        want = [g["lr"] for g in ref_opt.param_groups]
        assert got == pytest.approx(want, rel=1e-12), f"{preset} epoch {epoch + 1}"
    # By hand from cosine_lr.py: the final epoch (t = E) runs at the floor, and the peak is at
    # the last warm-up epoch (t = W), already on the cosine, below the nominal rate.
    assert opt.param_groups[0]["lr"] == pytest.approx(3.5e-7)
    w, e = t.warmup_epochs, t.epochs
    step_epoch(sched, w - 1, t)
    peak = 3.5e-7 + 0.5 * (3.5e-4 - 3.5e-7) * (1 + math.cos(math.pi * w / e))
    assert opt.param_groups[0]["lr"] == pytest.approx(peak)


def test_schedule_start_zero_begins_at_the_warmup_rate() -> None:
    cfg = load_config("rgbnt201", ["train.schedule_start=0"])
    opt = build_optimizer(torch.nn.Linear(2, 2, bias=False).named_parameters(), cfg.train)
    sched = build_scheduler(opt, cfg.train)
    step_epoch(sched, 0, cfg.train)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 3.5e-4)


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_evaluation_is_fp32_by_default(preset: str) -> None:
    cfg = load_config(preset)
    cuda = torch.device("cuda")
    assert cfg.train.amp == "fp16"
    assert eval_amp(cfg, cuda) is None
    assert eval_amp(load_config(preset, ["test.amp=true"]), cuda) is torch.float16


def test_clip_f_encoder_biases_share_the_encoder_rate() -> None:
    cfg = _tiny("ablations/table3_B_clip_f")
    model = build_model(cfg, num_classes=5, num_cameras=2)
    encoder = {id(p) for p in model.parameter_parts()["backbone"]}
    opt = build_optimizer(model.named_parameters(), cfg.train, encoder)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    enc_biases = [n for n, p in names.items() if id(p) in encoder and "bias" in n.rsplit(".", 1)[-1]]
    assert "backbone.encoder.transformer.resblocks.0.attn.in_proj_bias" in enc_biases
    assert {lr_of[id(names[n])] for n in enc_biases} == {5e-6}
    head_bias = [n for n in names if n.endswith("bias") and id(names[n]) not in encoder and n in lr_of]
    assert all(lr_of[id(names[n])] == pytest.approx(7e-4) for n in head_bias)


def test_camera_table_is_sized_by_training_cameras() -> None:
    def s(cam: int, pid: int = 0) -> Sample:
        return Sample((f"/d/{pid}_{cam}.jpg",), pid, cam, -1)

    ds = ReIDDataset("RGBNT201", Path("/d"), [s(0), s(2), s(2, 1)], [s(1)], [s(3)])
    assert ds.num_train_cams == 2  # distinct training cameras, not 1 + the largest id (4)
    check_cameras(ds.train[:1], 2, "train")
    with pytest.raises(DatasetError, match=r"camera id 3 of /d/0_3\.jpg .*0\.\.1"):
        check_cameras(ds.gallery, ds.num_train_cams, "RGBNT201 gallery")


@pytest.mark.parametrize("neck", ["before", "after"])
def test_test_feature_before_or_after_the_neck(neck: str) -> None:
    for preset in ("rgbnt201", "rgbnt100"):
        torch.manual_seed(0)
        model = build_model(_tiny(preset, f"test.neck_feat={neck}"), num_classes=5, num_cameras=2)
        batch = {m: torch.randn(4, 3, 32, 64) for m in ("RGB", "NI", "TI")}
        batch["camids"] = torch.tensor([0, 1, 0, 1])
        model.train()
        model(batch)  # move the running statistics away from (0, 1)
        model.eval()
        fuse = model.features(batch)["fuse"]
        bn = model.fuse_head.bn
        after = (fuse - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        want = fuse if neck == "before" else after
        assert torch.allclose(model(batch), want, atol=1e-5)
