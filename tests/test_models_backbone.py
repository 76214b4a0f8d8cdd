"""The multi-modal backbone: registries, exact parameter counts, adapter placement,
prompt exchange against a per-modality reference, freezing and gradients, input errors."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import Tensor, nn

from mambapro import config as config_module
from mambapro.config import ModelConfig
from mambapro.models import ADAPTERS, BACKBONES, PROMPTS, build_backbone
from mambapro.models.adapters import LoRAAdapter, MlpAdapter
from mambapro.models.backbone import MODALITIES, MultiModalBackbone
from mambapro.models.clip_vit import ResidualAttentionBlock

RGBNT201 = (256, 128)
TINY_SIZE = (64, 32)  # a 4x2 grid keeps the tiny preset fast


def _count(params: list[nn.Parameter], trainable: bool | None = None) -> int:
    return sum(p.numel() for p in params if trainable is None or p.requires_grad == trainable)


def _parts(**overrides: object) -> dict[str, tuple[int, int]]:
    """(trainable, total) per part of the ViT-B/16 backbone at RGBNT201 geometry, on meta."""
    with torch.device("meta"):
        backbone = build_backbone(ModelConfig(**overrides), RGBNT201, num_cameras=4)
    return {k: (_count(v, True), _count(v)) for k, v in backbone.parameter_parts().items()}


def _tiny(**overrides: object) -> MultiModalBackbone:
    cfg = ModelConfig(**{"backbone": "tiny", **overrides})
    return build_backbone(cfg, TINY_SIZE, num_cameras=3)


def _images(batch: int = 2, size: tuple[int, int] = TINY_SIZE) -> dict[str, Tensor]:
    return {m: torch.randn(batch, 3, *size) for m in MODALITIES}


def _randomise(module: nn.Module, seed: int = 0) -> None:
    # Zero-initialised prompts and LoRA up-projections would hide wrong wiring; perturb all.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


# --------------------------------------------------------------------------- registries


def test_registry_names_equal_config_choices() -> None:
    assert config_module.choices("model.backbone") == tuple(BACKBONES.names())
    assert config_module.choices("model.adapter") == tuple(ADAPTERS.names())
    assert config_module.choices("model.prompt") == tuple(PROMPTS.names())


# ------------------------------------------------------------ the paper's parameter counts (Table 3)


def test_clip_f_whole_encoder_trains_86_140_416() -> None:
    parts = _parts(freeze="finetune", adapter="none", prompt="none")
    assert parts["backbone"] == (86_140_416, 86_140_416)
    assert parts["adapters"] == parts["prompts"] == (0, 0)
    assert parts["camera"] == (4 * 768, 4 * 768)


def test_clip_l_alone_trains_nothing_of_the_encoder() -> None:
    parts = _parts(adapter="none", prompt="none")
    assert parts["backbone"] == (0, 86_140_416)
    assert parts["adapters"] == parts["prompts"] == (0, 0)


def test_pfa_srp_and_both_over_twelve_layers() -> None:
    assert _parts(prompt="none")["adapters"] == (28_339_200, 28_339_200)
    assert _parts(adapter="none")["prompts"] == (28_477_440, 28_477_440)
    default = _parts()  # CLIP(L) + PFA + SRP-Fusion, the paper's configuration
    assert default["backbone"][0] == 0
    assert default["adapters"][0] + default["prompts"][0] == 56_816_640


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("ip", 9_216), ("sp", 1_782_144), ("srp_separation", 3_555_072), ("srp_fusion", 2_373_120)],
)
def test_one_layer_of_prompts(prompt: str, expected: int) -> None:
    assert _parts(adapter="none", prompt=prompt, prompt_layers=[5])["prompts"] == (expected, expected)


@pytest.mark.parametrize(
    ("adapter", "rank", "expected"),
    [
        ("lora", 64, 98_304),
        ("lora", 256, 393_216),
        ("lora", 384, 589_824),
        ("bna", 64, 590_976),
        ("pfa", 64, 2_361_600),
    ],
)
def test_one_layer_of_adapter(adapter: str, rank: int, expected: int) -> None:
    parts = _parts(adapter=adapter, lora_rank=rank, adapter_layers=[0], prompt="none")
    assert parts["adapters"] == (expected, expected)


def test_parts_are_disjoint_and_cover_every_parameter() -> None:
    backbone = _tiny()
    parts = backbone.parameter_parts()
    ids = [id(p) for ps in parts.values() for p in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in backbone.parameters()}
    assert all(parts[k] for k in ("backbone", "adapters", "prompts", "camera"))


# --------------------------------------------------------------------------- adapters


@pytest.mark.parametrize("position", ["side_ffn", "behind_ffn", "side_mhsa", "behind_mhsa"])
def test_adapter_positions_follow_table_8(position: str) -> None:
    torch.manual_seed(0)
    block = ResidualAttentionBlock(32, 4)
    adapter = MlpAdapter(32, 64)
    _randomise(block)
    block.set_adapter(adapter, position)
    x = torch.randn(2, 5, 32)
    a = block.attn(block.ln_1(x))
    if position == "side_mhsa":
        xbar = x + a + adapter(x)
    elif position == "behind_mhsa":
        xbar = x + a + adapter(a)
    else:
        xbar = x + a
    h = block.mlp(block.ln_2(xbar))
    if position == "side_ffn":  # PFA: x̂ = x̄ + FFN(LN₂(x̄)) + PFA(x̄)
        expected = xbar + h + adapter(xbar)
    elif position == "behind_ffn":
        expected = xbar + h + adapter(h)
    else:
        expected = xbar + h
    torch.testing.assert_close(block(x), expected)


def test_lora_starts_as_identity_and_pfa_does_not() -> None:
    torch.manual_seed(0)
    block = ResidualAttentionBlock(32, 4)
    x = torch.randn(2, 5, 32)
    plain = block(x)
    block.set_adapter(LoRAAdapter(32, 4), "side_ffn")
    torch.testing.assert_close(block(x), plain)
    block.set_adapter(MlpAdapter(32, 64), "side_ffn")
    assert not torch.allclose(block(x), plain)


def test_adapter_activation_is_configurable() -> None:
    quick = build_backbone(ModelConfig(backbone="tiny", prompt="none"), TINY_SIZE, 3)
    gelu = build_backbone(ModelConfig(backbone="tiny", prompt="none", adapter_act="gelu"), TINY_SIZE, 3)
    assert type(quick.encoder.blocks[0].adapter.act).__name__ == "QuickGELU"
    assert isinstance(gelu.encoder.blocks[0].adapter.act, nn.GELU)


# --------------------------------------------------------------------------- forward / variants


@pytest.mark.parametrize("adapter", ["none", "pfa", "bna", "lora"])
@pytest.mark.parametrize("position", ["side_ffn", "behind_ffn", "side_mhsa", "behind_mhsa"])
def test_every_adapter_and_position_runs_forward_backward(adapter: str, position: str) -> None:
    backbone = _tiny(adapter=adapter, adapter_position=position, lora_rank=8, prompt="srp_fusion")
    _check_forward_backward(backbone)


@pytest.mark.parametrize("prompt", ["none", "ip", "sp", "srp_separation", "srp_fusion"])
@pytest.mark.parametrize("layers", [None, [1, 3]])
def test_every_prompt_variant_runs_forward_backward(prompt: str, layers: list[int] | None) -> None:
    backbone = _tiny(prompt=prompt, prompt_layers=layers, adapter="pfa", adapter_layers=[0, 2])
    _check_forward_backward(backbone)


def _check_forward_backward(backbone: MultiModalBackbone) -> None:
    out = backbone(_images(), torch.tensor([0, 2]))
    assert list(out) == ["RGB", "NI", "TI"]
    for tokens in out.values():
        assert tokens.shape == (2, 1 + 4 * 2, backbone.out_dim) and torch.isfinite(tokens).all()
    sum(t.square().mean() for t in out.values()).backward()
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    assert trainable and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


def test_tiny_preset_geometry() -> None:
    backbone = build_backbone(ModelConfig(backbone="tiny"), (128, 64), 4)
    assert (backbone.out_dim, backbone.grid, backbone.num_layers) == (128, (8, 4), 4)
    assert backbone.encoder.width == 192
    block = backbone.encoder.blocks[0]
    assert block.adapter.fc1.out_features == 384  # PFA hidden 2 x width
    assert backbone.prompts.get(0).transfer[0].fc1.out_features == 96  # transfer hidden width / 2


def _reference_forward(backbone: MultiModalBackbone, images: dict[str, Tensor], camids: Tensor) -> dict:
    """The model (paper and release) written out per modality, one sequence at a time, in loops."""
    enc, prompts = backbone.encoder, backbone.prompts
    out = {}
    for k, name in enumerate(MODALITIES):
        cam = backbone.camera_coef * backbone.camera_embedding[camids]
        x = enc.embed(images[name], cam)
        previous = None  # list of the groups this modality's sequence output last prompted layer
        for index, block in enumerate(enc.blocks):
            layer = prompts.get(index) if prompts is not None else None
            if layer is None:
                x = block(x)
                continue
            b, n = x.shape[0], layer.num_tokens
            p = [layer.prompts[m].expand(b, n, -1) for m in range(3)]
            own = p[k]
            if previous is not None and layer.residual_kind == "fusion":
                hat = (previous[0] + previous[1] + previous[2]) / 3
                own = p[k] + hat + layer.residual[0](hat)
            elif previous is not None and layer.residual_kind == "separation":
                terms = [previous[g] + layer.residual[g](previous[g]) for g in range(3)]
                own = p[k] + (terms[0] + terms[1] + terms[2]) / 3
            if layer.transfer is None:
                groups = [own]
            else:
                groups = [own if m == k else p[m] + layer.transfer[m](p[m]) for m in range(3)]
            x = block(torch.cat([x, *groups], dim=1))
            previous = list(x[:, -len(groups) * n :].split(n, dim=1))
            x = x[:, : -len(groups) * n]
        out[name] = enc.project(x)
    return out


@pytest.mark.parametrize("prompt", ["none", "ip", "sp", "srp_separation", "srp_fusion"])
def test_batched_forward_equals_per_modality_reference(prompt: str) -> None:
    torch.manual_seed(0)
    backbone = _tiny(prompt=prompt, prompt_layers=[0, 1, 3], adapter="pfa").eval()
    _randomise(backbone)
    images, camids = _images(3), torch.tensor([2, 0, 1])
    with torch.no_grad():
        got = backbone(images, camids)
        expected = _reference_forward(backbone, images, camids)
    # The batched path multiplies differently shaped matrices than the reference, so float32
    # summation order differs (measured up to 1.5e-5 on randomised weights); a wiring mistake
    # moves values by O(1).
    for name in MODALITIES:
        torch.testing.assert_close(got[name], expected[name], atol=1e-4, rtol=1e-4)


def test_prompts_exchange_information_between_modalities() -> None:
    # With SRP, changing only the NI image must not change RGB's tokens (prompts carry learned
    # parameters, not activations, across modalities), while the NI prompts do change them.
    torch.manual_seed(0)
    backbone = _tiny(prompt="srp_fusion").eval()
    _randomise(backbone)
    images = _images()
    with torch.no_grad():
        base = backbone(images, None)["RGB"]
        images["NI"] = torch.randn_like(images["NI"])
        torch.testing.assert_close(backbone(images, None)["RGB"], base)
        for layer in backbone.prompts.layers.values():
            layer.prompts[1].add_(1.0)
        assert not torch.allclose(backbone(images, None)["RGB"], base)


def test_camera_embedding_is_added_to_the_cls_token_only() -> None:
    torch.manual_seed(0)
    backbone = _tiny(camera_coef=0.5)
    enc = backbone.encoder
    enc.ln_pre = nn.Identity()  # ln_pre mixes a token's channels; look at what enters it
    x, camids = torch.randn(2, 3, *TINY_SIZE), torch.tensor([1, 2])
    cam = 0.5 * backbone.camera_embedding[camids]
    with torch.no_grad():
        diff = enc.embed(x, cam) - enc.embed(x)
    torch.testing.assert_close(diff[:, 0], cam)
    assert diff[:, 1:].abs().max() == 0

    without = _tiny(camera_embedding=False)
    assert without.camera_embedding is None and without.parameter_parts()["camera"] == []


# --------------------------------------------------------------------------- freezing


@pytest.mark.parametrize("freeze", ["frozen", "finetune"])
def test_gradients_reach_exactly_the_trainable_parts(freeze: str) -> None:
    backbone = _tiny(freeze=freeze, prompt="srp_separation")
    _randomise(backbone)
    out = backbone(_images(), torch.tensor([0, 1]))
    weights = {k: torch.randn_like(v) for k, v in out.items()}
    sum((out[k] * weights[k]).sum() for k in out).backward()

    # The first prompted layer has no previous prompt outputs, so its residual blocks are unused
    # (they exist for the paper's per-layer parameter count, as in the authors' release).
    unused = {id(p) for p in backbone.prompts.get(0).residual.parameters()}
    for name, params in backbone.parameter_parts().items():
        trains = freeze == "finetune" or name != "backbone"
        for p in params:
            assert p.requires_grad == trains, name
            if not trains or id(p) in unused:
                assert p.grad is None, name
            else:
                assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_frozen_keeps_ln_post_proj_and_positions_frozen() -> None:
    backbone = _tiny()
    enc = backbone.encoder
    for p in (enc.proj, enc.positional_embedding, enc.ln_post.weight, enc.class_embedding, enc.conv1.weight):
        assert not p.requires_grad
    assert backbone.camera_embedding.requires_grad


# --------------------------------------------------------------------------- messages / errors


def test_random_init_is_announced_once_per_build(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mambapro.models"):
        _tiny()
    records = [r for r in caplog.records if "randomly initialised" in r.getMessage()]
    assert len(records) == 1 and "model.backbone=tiny" in records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mambapro.models"), torch.device("meta"):
        build_backbone(ModelConfig(), RGBNT201, 4)
    records = [r for r in caplog.records if "randomly initialised" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.WARNING


def test_tiny_weights_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = _tiny()
    torch.save(
        {f"visual.{k}": v for k, v in source.encoder.state_dict().items() if "adapter" not in k},
        tmp_path / "t.pt",
    )
    loaded = _tiny(weights=str(tmp_path / "t.pt"))
    assert torch.equal(loaded.encoder.proj, source.encoder.proj)
    assert loaded.encoder.proj.device.type == "cpu"


def test_bad_layer_indices_are_named() -> None:
    with pytest.raises(ValueError, match=r"model\.prompt_layers = \[1, 4\]: index 4 .* 4 layers"):
        _tiny(prompt_layers=[1, 4])
    with pytest.raises(ValueError, match=r"model\.adapter_layers = \[7\]"):
        _tiny(adapter_layers=[7])


def test_bad_counts_are_named() -> None:
    with pytest.raises(ValueError, match=r"model\.lora_rank = 0"):
        _tiny(adapter="lora", lora_rank=0)
    with pytest.raises(ValueError, match=r"model\.prompt_tokens = 0"):
        _tiny(prompt_tokens=0)
    with pytest.raises(ValueError, match="num_cameras >= 1"):
        build_backbone(ModelConfig(backbone="tiny"), TINY_SIZE, num_cameras=0)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        build_backbone(ModelConfig(backbone="tiny"), (100, 50), num_cameras=1)


def test_bad_inputs_are_named() -> None:
    backbone = _tiny()
    images = _images()
    with pytest.raises(KeyError, match="lacks modality TI"):
        backbone({"RGB": images["RGB"], "NI": images["NI"]}, None)
    with pytest.raises(ValueError, match=r"images\['NI'\] has shape \(2, 3, 32, 32\)"):
        backbone({**images, "NI": torch.randn(2, 3, 32, 32)}, None)
    with pytest.raises(ValueError, match=r"camids range 0\.\.3 is outside .* 0\.\.2"):
        backbone(images, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"camids has shape \(3,\)"):
        backbone(images, torch.tensor([0, 1, 2]))
