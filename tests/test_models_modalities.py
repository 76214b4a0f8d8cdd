"""The model for 2 to 4 modalities: shapes, hand-counted parameters, checkpoints that record
their modalities, and the camera rule for cameras a model never saw."""

from __future__ import annotations

import pytest
import torch

from mambapro.aggregation import build_aggregator
from mambapro.config import config_to_dict, load_config
from mambapro.errors import CheckpointError
from mambapro.modalities import RGB_NI_TI, ModalitySet
from mambapro.models import build_model
from mambapro.models.prompts import srp_fusion, srp_separation
from mambapro.train.checkpoint import checkpoint_modalities, load_model, save_checkpoint

TWO = ModalitySet.of(("RGB", "TI"))
FOUR = ModalitySet.of(("RGB", "NI", "TI", "D"))

# One D -> D/2 -> D bottleneck at D = 768: 768·384 + 384 + 384·768 + 768.
BOTTLENECK = 590_976
PROMPTS = 4 * 768  # N_pr = 4 prompts of width 768, per modality


def _tiny(*extra: str):
    return load_config("demo", ["model.ma_depth=1", "model.ma_d_state=4", "model.ma_dt_rank=4", *extra])


@pytest.mark.parametrize(
    ("factory", "m", "expected"),
    [
        # SRP-Fusion: M prompt sets, M transfer blocks, one shared residual block.
        (srp_fusion, 2, 2 * PROMPTS + 3 * BOTTLENECK),
        (srp_fusion, 3, 2_373_120),  # the paper's count
        (srp_fusion, 4, 4 * PROMPTS + 5 * BOTTLENECK),
        # SRP-Separation: M transfer blocks and M residual blocks.
        (srp_separation, 2, 2 * PROMPTS + 4 * BOTTLENECK),
        (srp_separation, 3, 3_555_072),
        (srp_separation, 4, 4 * PROMPTS + 8 * BOTTLENECK),
    ],
)
def test_prompt_parameters_per_layer_follow_the_modality_count(factory, m, expected) -> None:
    prompts = factory(768, layers=[0], num_tokens=4, act="quick_gelu", num_modalities=m)
    assert sum(p.numel() for p in prompts.parameters()) == expected
    groups = prompts.get(0)(batch=2)
    assert tuple(groups.shape) == (m, 2, m, 4, 768)


# MA at C = 512, E = 1024, N = 16, R = 32 (one block): per modality in_proj 1,048,576 and the
# conv 12,288; one SSM 118,784; out_proj 524,288; the readout 526,848 per modality.
IN_CONV, SSM, OUT, READOUT = 1_048_576 + 12_288, 118_784, 524_288, 526_848


@pytest.mark.parametrize("m", [2, 3, 4])
def test_ma_parameters_follow_the_modality_count(m: int) -> None:
    intra = m * (IN_CONV + SSM) + OUT
    inter = m * IN_CONV + SSM + OUT
    module = build_aggregator("ma", dim=512, grid=(16, 8), depth=1, num_modalities=m)
    assert sum(p.numel() for p in module.parameters()) == intra + inter + m * READOUT
    if m == 3:
        assert intra + inter + m * READOUT == 9_469_440  # the paper's Table 3 MA row


@pytest.mark.parametrize(
    "name", ["none", "sum", "concat", "transformer", "intra_ma", "inter_ma", "ma", "ma_transformer"]
)
def test_every_aggregator_takes_two_modalities(name: str) -> None:
    torch.manual_seed(0)
    module = build_aggregator(
        name, dim=8, grid=(2, 2), depth=1, d_state=4, dt_rank=2, num_modalities=2
    ).eval()
    tokens = [torch.randn(3, 5, 8) for _ in range(2)]
    assert tuple(module(*tokens).shape) == (3, 16) == (3, module.out_dim)
    with pytest.raises(ValueError, match="takes 2 token tensors"):
        module(*tokens, tokens[0])


def test_aggregator_refuses_one_or_five_modalities() -> None:
    for m in (1, 5):
        with pytest.raises(ValueError, match="2 to 4 modalities"):
            build_aggregator("ma", dim=8, grid=(2, 2), num_modalities=m)


@pytest.mark.parametrize("modalities", [TWO, FOUR], ids=["two", "four"])
def test_model_trains_and_tests_on_its_modalities(modalities: ModalitySet, one_thread) -> None:
    cfg = _tiny("model.ori_head=per_modality")
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=5, num_cameras=3, modalities=modalities)
    assert model.modalities == modalities == model.backbone.modalities
    h, w = cfg.img_size()
    batch = {k: torch.randn(4, 3, h, w) for k in modalities}
    batch["camids"] = torch.tensor([0, 1, 2, 0])
    out = model.train()(batch)
    assert set(out) == {*modalities.keys, "fuse"}
    c = model.backbone.out_dim
    assert tuple(out["fuse"][0].shape) == (4, len(modalities) * c)
    feat = model.eval()(batch)
    assert tuple(feat.shape) == (4, len(modalities) * c)
    gone = dict(batch)
    del gone[modalities.keys[-1]]
    with pytest.raises(KeyError, match=f"lacks modality {modalities.keys[-1]}"):
        model(gone)


def test_three_modalities_build_the_same_model_as_before() -> None:
    cfg = _tiny()
    torch.manual_seed(0)
    default = build_model(cfg, 5, 3)
    torch.manual_seed(0)
    named = build_model(cfg, 5, 3, RGB_NI_TI)
    assert default.modalities == RGB_NI_TI
    a, b = default.state_dict(), named.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_unseen_cameras_take_the_mean_embedding(one_thread) -> None:
    cfg = _tiny()
    torch.manual_seed(0)
    model = build_model(cfg, 5, 3).eval()
    h, w = cfg.img_size()
    images = {k: torch.randn(2, 3, h, w) for k in RGB_NI_TI}
    with pytest.raises(ValueError, match="outside the camera embedding's 0..2"):
        model({**images, "camids": torch.tensor([0, 7])})
    model.backbone.unseen_cameras = "mean"
    got = model({**images, "camids": torch.tensor([0, 7])})
    # By hand: a model whose table has a fourth row equal to the mean of the three learned ones.
    wider = build_model(cfg, 5, 4).eval()
    state = model.state_dict()
    table = state["backbone.camera_embedding"]
    state["backbone.camera_embedding"] = torch.cat([table, table.mean(dim=0, keepdim=True)])
    wider.load_state_dict(state)
    want = wider({**images, "camids": torch.tensor([0, 3])})
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def _save(tmp_path, cfg, modalities: ModalitySet | None):
    torch.manual_seed(0)
    model = build_model(cfg, 5, 3, modalities)
    state = {"model": model.state_dict(), "config": config_to_dict(cfg), "num_classes": 5, "num_cameras": 3}
    if modalities is not None:
        state["modalities"] = modalities.to_dict()
    return save_checkpoint(state, tmp_path / "m.ckpt"), model


def test_checkpoint_records_and_rebuilds_its_modalities(tmp_path) -> None:
    cfg = _tiny("data.dataset=RGBNT201")
    path, _ = _save(tmp_path, cfg, None)  # written before checkpoints recorded modalities
    model, _, ckpt = load_model(path)
    assert checkpoint_modalities(ckpt) == RGB_NI_TI == model.modalities
    # A two-modality model trained on a three-modality dataset's config cannot come back.
    path, _ = _save(tmp_path, cfg, TWO)
    with pytest.raises(
        CheckpointError, match=r"trained on the modalities RGB\+TI; dataset RGBNT201 has RGB\+NI\+TI"
    ):
        load_model(path)
