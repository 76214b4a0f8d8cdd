"""Release-fidelity options of the backbone: the camera embedding on every token
(``model.camera_tokens``), stochastic depth (``model.drop_path``), LoRA's ``alpha / r`` scaling
(``model.lora_alpha``), and the Table 5 / Table 9 presets that set them.

Each test compares against an expectation computed independently of the code under test: a hand
written embedding, timm's own ``VisionTransformer`` with ``drop_path_rate``, explicit matrix
products for LoRA, and the literal values of the authors' release."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from torch import Tensor, nn

from mambapro.config import ModelConfig, load_config
from mambapro.models import ADAPTERS, build_backbone, imagenet_vit
from mambapro.models.adapters import LoRAAdapter, MlpAdapter
from mambapro.models.backbone import MODALITIES, MultiModalBackbone
from mambapro.models.clip_vit import ResidualAttentionBlock, VisionTransformer
from mambapro.models.weights import timm_to_openai_layout, to_fp32

TINY_SIZE = (64, 32)  # a 4x2 grid


def _tiny(**overrides: object) -> MultiModalBackbone:
    return build_backbone(ModelConfig(**{"backbone": "tiny", **overrides}), TINY_SIZE, num_cameras=3)


def _randomise(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def _small_vit(drop_path: float = 0.0) -> VisionTransformer:
    return VisionTransformer(
        (32, 32), patch_size=16, width=32, layers=4, heads=2, output_dim=16, drop_path=drop_path
    )


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- camera tokens


def _embed_by_hand(enc: VisionTransformer, images: Tensor) -> Tensor:
    """Patch embedding, cls token and positions, without camera and without ``ln_pre``."""
    patches = F.conv2d(images, enc.conv1.weight, enc.conv1.bias, stride=enc.patch_size)
    patches = patches.flatten(2).transpose(1, 2)
    cls = enc.class_embedding.expand(images.shape[0], 1, -1)
    return torch.cat([cls, patches], dim=1) + enc.positional_embedding


def test_camera_tokens_all_adds_the_scaled_row_to_every_token() -> None:
    torch.manual_seed(0)
    backbone = _tiny(camera_coef=0.5, camera_tokens="all")
    assert backbone.camera_tokens == "all"
    enc = backbone.encoder
    x, camids = torch.randn(2, 3, *TINY_SIZE), torch.tensor([1, 2])
    row = backbone.camera_embedding[camids]  # (B, D)
    with torch.no_grad():
        expected = enc.ln_pre(_embed_by_hand(enc, x) + 0.5 * row[:, None, :])
        got = enc.embed(x, 0.5 * row, "all")
    assert got.shape == (2, 1 + 4 * 2, enc.width)
    torch.testing.assert_close(got, expected)

    enc.ln_pre = nn.Identity()  # what enters ln_pre: the offset itself at every position
    with torch.no_grad():
        diff = enc.embed(x, 0.5 * row, "all") - enc.embed(x)
    torch.testing.assert_close(diff, (0.5 * row)[:, None, :].expand_as(diff))


def test_camera_tokens_cls_changes_only_the_cls_token() -> None:
    torch.manual_seed(0)
    backbone = _tiny(camera_coef=0.5)
    assert backbone.camera_tokens == "cls"  # the default: the release's CLIP
    enc = backbone.encoder
    enc.ln_pre = nn.Identity()
    x, camids = torch.randn(2, 3, *TINY_SIZE), torch.tensor([1, 2])
    cam = 0.5 * backbone.camera_embedding[camids]
    with torch.no_grad():
        got = enc.embed(x, cam)
        plain = _embed_by_hand(enc, x)
    torch.testing.assert_close(got[:, 0], plain[:, 0] + cam)
    assert torch.equal(got[:, 1:], plain[:, 1:])


def test_camera_tokens_all_reaches_the_backbone_forward() -> None:
    # The whole forward (no prompts) against a loop written out here: the camera term of each
    # sample at every token of its three modalities.
    torch.manual_seed(0)
    backbone = _tiny(camera_coef=2.0, camera_tokens="all", prompt="none").eval()
    _randomise(backbone)
    enc = backbone.encoder
    images = {m: torch.randn(2, 3, *TINY_SIZE) for m in MODALITIES}
    camids = torch.tensor([2, 0])
    with torch.no_grad():
        got = backbone(images, camids)
        cam = 2.0 * backbone.camera_embedding[camids]
        for name in MODALITIES:
            x = enc.ln_pre(_embed_by_hand(enc, images[name]) + cam[:, None, :])
            for block in enc.blocks:
                x = block(x)
            torch.testing.assert_close(got[name], enc.project(x), atol=1e-5, rtol=1e-5)
        # and it differs from the cls-only placement with the same weights
        backbone.camera_tokens = "cls"
        assert not torch.allclose(backbone(images, camids)["RGB"], got["RGB"])


def test_bad_camera_tokens_are_named() -> None:
    with pytest.raises(ValueError, match="camera_tokens = 'some'"):
        MultiModalBackbone(_small_vit(), None, num_cameras=2, camera_tokens="some")
    with pytest.raises(ValueError, match="offset_tokens 'some'"):
        _small_vit().embed(torch.randn(1, 3, 32, 32), None, "some")


# --------------------------------------------------------------------------- drop path


def test_drop_path_rates_follow_linspace_and_zero_means_identity() -> None:
    enc = _small_vit(drop_path=0.3)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in enc.blocks]
    expected = [0.3 * i / 3 for i in range(4)]  # linspace(0, 0.3, 4), written out
    assert rates == pytest.approx(expected, abs=1e-6)
    assert isinstance(enc.blocks[0].drop_path, nn.Identity)  # rate 0: no DropPath module
    assert all(type(b.drop_path).__name__ == "DropPath" for b in enc.blocks[1:])
    assert all(isinstance(b.drop_path, nn.Identity) for b in _small_vit().blocks)


def test_drop_path_adds_no_parameters() -> None:
    assert _count(_small_vit(0.3)) == _count(_small_vit())
    plain, dropped = _tiny(), _tiny(drop_path=0.2)
    assert _count(plain) == _count(dropped)
    assert plain.state_dict().keys() == dropped.state_dict().keys()


def test_drop_path_is_inactive_in_eval_and_random_in_train() -> None:
    torch.manual_seed(0)
    plain, dropped = _small_vit(), _small_vit(drop_path=0.5)
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dropped.eval()(x), plain.eval()(x))
        dropped.train()
        torch.manual_seed(1)
        first = dropped(x)
        torch.manual_seed(2)
        second = dropped(x)
        torch.manual_seed(1)
        again = dropped(x)
    assert not torch.allclose(first, second)
    assert torch.equal(first, again)


def test_drop_path_train_mode_equals_timm_vit_with_drop_path_rate() -> None:
    # timm's VisionTransformer(drop_path_rate=r) is the oracle: same linear rule, same branches,
    # same random draws (attention branch, then FFN branch, block by block).
    torch.manual_seed(0)
    ref = TimmVisionTransformer(
        img_size=(32, 32),
        patch_size=16,
        embed_dim=32,
        depth=4,
        num_heads=2,
        drop_path_rate=0.3,
        num_classes=0,
    )
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = imagenet_vit((32, 32), width=32, layers=4, heads=2, drop_path=0.3)
    ours.load_state_dict(to_fp32(timm_to_openai_layout(ref.state_dict(), keep_head=False)))
    x = torch.randn(16, 3, 32, 32)
    ref.train()
    ours.train()
    with torch.no_grad():
        torch.manual_seed(5)
        expected = ref.forward_features(x)
        torch.manual_seed(5)
        got = ours(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


class _DropAll(nn.Module):
    """Stand-in for a DropPath that drops every sample: shows what the drop path covers."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


@pytest.mark.parametrize("position", ["side_ffn", "behind_ffn", "side_mhsa", "behind_mhsa"])
def test_side_adapters_stay_outside_the_drop_path(position: str) -> None:
    # The release's ViT block: x + drop_path(mlp(norm2(x))) + adapter_ffn(x) (vit_pytorch.py:225).
    torch.manual_seed(0)
    block = ResidualAttentionBlock(16, 2)
    adapter = MlpAdapter(16, 32)
    _randomise(block)
    block.set_adapter(adapter, position)
    block.drop_path = _DropAll()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        got = block(x)
        if position == "side_mhsa":  # x̄ = x + A(x), then the FFN branch is dropped
            expected = x + adapter(x)
        elif position == "side_ffn":  # x̄ = x, x̂ = x̄ + A(x̄)
            expected = x + adapter(x)
        else:  # a behind adapter is part of the dropped branch
            expected = x
    torch.testing.assert_close(got, expected)


def test_bad_drop_path_is_named() -> None:
    with pytest.raises(ValueError, match=r"model\.drop_path = 1\.0"):
        _tiny(drop_path=1.0)


# --------------------------------------------------------------------------- LoRA alpha


def test_lora_output_is_alpha_over_rank_times_up_down() -> None:
    torch.manual_seed(0)
    lora = LoRAAdapter(16, 4, alpha=3.0)
    with torch.no_grad():
        lora.up.weight.normal_()  # non-zero, else every scaling looks right
    x = torch.randn(2, 5, 16)
    expected = (3.0 / 4) * (x @ lora.down.weight.T @ lora.up.weight.T)
    with torch.no_grad():
        torch.testing.assert_close(lora(x), expected)


def test_lora_r64_alpha1_update_is_one_64th_of_the_unscaled_one() -> None:
    torch.manual_seed(0)
    lora = LoRAAdapter(32, 64)  # alpha defaults to 1, the release's default
    assert lora.alpha == 1.0
    with torch.no_grad():
        lora.up.weight.normal_()
        x = torch.randn(3, 7, 32)
        unscaled = F.linear(F.linear(x, lora.down.weight), lora.up.weight)
        torch.testing.assert_close(lora(x), unscaled / 64)


def test_every_adapter_factory_takes_lora_alpha_and_the_backbone_threads_it() -> None:
    for name in ADAPTERS.names():
        ADAPTERS.build(name, 16, act="quick_gelu", lora_rank=4, lora_alpha=2.0)
    backbone = _tiny(adapter="lora", lora_rank=8, lora_alpha=4.0, prompt="none")
    adapters = [b.adapter for b in backbone.encoder.blocks]
    assert all(isinstance(a, LoRAAdapter) and a.scaling == 0.5 for a in adapters)


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("stem", ["table9_vit_l", "table9_vit_f"])
def test_table9_vit_presets_take_the_release_settings(stem: str) -> None:
    cfg = load_config(f"ablations/{stem}")
    m = cfg.model
    assert m.backbone == "vit_b16_imagenet"
    assert (m.camera_tokens, m.drop_path, m.ma_dt_rank) == ("all", 0.1, 48)
    assert m.ma_dt_rank == math.ceil(768 / 16)  # Mamba's dt_rank "auto" at width 768
    with torch.device("meta"):
        backbone = build_backbone(m, cfg.img_size(), num_cameras=4)
        plain = build_backbone(ModelConfig(**{**vars(m), "drop_path": 0.0}), cfg.img_size(), num_cameras=4)
    assert backbone.camera_tokens == "all" and backbone.out_dim == 768
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in backbone.encoder.blocks]
    assert rates == pytest.approx([0.1 * i / 11 for i in range(12)], abs=1e-6)
    assert _count(backbone) == _count(plain)


@pytest.mark.parametrize("stem", ["table9_clip_l", "table3_F_clip_l_pfa_srp_ma"])
def test_clip_presets_keep_cls_camera_and_no_drop_path(stem: str) -> None:
    m = load_config(f"ablations/{stem}").model
    assert (m.camera_tokens, m.drop_path, m.ma_dt_rank) == ("cls", 0.0, 32)


@pytest.mark.parametrize("rank", [64, 256, 384])
def test_table5_lora_presets_scale_by_one_over_rank(rank: int) -> None:
    cfg = load_config(f"ablations/table5_lora_r{rank}")
    assert (cfg.model.adapter, cfg.model.lora_rank, cfg.model.lora_alpha) == ("lora", rank, 1.0)
    with torch.device("meta"):
        backbone = build_backbone(cfg.model, cfg.img_size(), num_cameras=4)
    adapters = [b.adapter for b in backbone.encoder.blocks]
    assert len(adapters) == 12 and all(a.scaling == pytest.approx(1 / rank) for a in adapters)
