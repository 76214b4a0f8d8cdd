"""DINOv2 and DINOv3 encoders: token equality with timm on random ViT-B checkpoints in timm's
layout (safetensors and torch.save) at the pre-training size and at a ReID size; Meta's original
layouts; files of another architecture; the rotary embedding's token range; LayerScale's place
in a block; the tiny encoders in the multi-modal model, trained frozen end to end."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import apply_rot_embed_cat
from timm.models.eva import checkpoint_filter_fn as eva_filter
from timm.models.vision_transformer import checkpoint_filter_fn as vit_filter
from torch import Tensor, nn

from conftest import fast
from mambapro.config import ModelConfig, load_config
from mambapro.data.synth import generate
from mambapro.errors import WeightsError
from mambapro.models import BACKBONES, build_backbone
from mambapro.models.adapters import MlpAdapter
from mambapro.models.clip_vit import ResidualAttentionBlock, rope_table
from mambapro.models.vit_dino import dinov2_vit, dinov3_vit, load_dinov2_state_dict, load_dinov3_state_dict
from mambapro.models.weights import load_encoder_state_dict
from mambapro.train.checkpoint import load_checkpoint
from mambapro.train.distributed import DistInfo
from mambapro.train.trainer import Trainer, run_training

pytestmark = pytest.mark.usefixtures("one_thread")

#: backbone -> (timm model, pre-training size, ReID size, register tokens).
BIG = {
    "dinov2_vitb14": ("vit_base_patch14_dinov2", (518, 518), (252, 126), 0),
    "dinov2_vitb14_reg4": ("vit_base_patch14_reg4_dinov2", (518, 518), (252, 126), 4),
    "dinov3_vitb16": ("vit_base_patch16_dinov3", (256, 256), (256, 128), 4),
}
READERS: dict[str, Callable[..., dict[str, Tensor]]] = {
    "dinov2_vitb14": load_dinov2_state_dict,
    "dinov2_vitb14_reg4": load_dinov2_state_dict,
    "dinov3_vitb16": load_dinov3_state_dict,
}
#: A small timm architecture of the same family, for the key-layout tests.
SMALL = {"embed_dim": 192, "depth": 2, "num_heads": 3}


def _randomise(model: nn.Module, seed: int = 0) -> None:
    # timm starts LayerScale at 1e-5 and biases at 0: blocks would hardly touch the tokens and a
    # wrongly wired block could pass. Every 1-D parameter gets a visible random part.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _timm(name: str, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    # pretrained=False: random weights, nothing downloaded. dynamic_img_size: timm resamples the
    # DINOv2 table per input size with resample_abs_pos_embed's defaults (bicubic, antialiased),
    # as it does for pre-trained weights loaded into a model made at another img_size.
    model = timm.create_model(name, pretrained=False, dynamic_img_size=True, **kwargs).eval()
    _randomise(model)
    return model


def _tokens(ref: nn.Module, x: Tensor, registers: int) -> Tensor:
    """timm's tokens after the final norm, registers dropped: (B, 1 + H*W, D)."""
    with torch.no_grad():
        out = ref.forward_features(x)
    return torch.cat([out[:, :1], out[:, 1 + registers :]], dim=1)


def _assert_close(got: Tensor, want: Tensor) -> None:
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- equality with timm


@pytest.mark.parametrize("name", list(BIG))
def test_vit_b_equals_timm_at_pre_training_and_reid_sizes(name: str, tmp_path: Path) -> None:
    timm_name, pre, reid, registers = BIG[name]
    ref = _timm(timm_name)
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    files = [tmp_path / "model.safetensors", tmp_path / "state_dict.pt"]
    save_file(sd, str(files[0]))
    torch.save(sd, files[1])
    try:
        # Both formats read to the very same tensors.
        patch = BACKBONES.info(name).patch_size
        grid = (reid[0] // patch, reid[1] // patch)
        a, b = (READERS[name](f, grid=grid) for f in files)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

        for size in (pre, reid):
            encoder = BACKBONES.build(name, size, files[0]).eval()
            assert encoder.grid == (size[0] // patch, size[1] // patch) and encoder.out_dim == 768
            x = torch.randn(1, 3, *size)
            with torch.no_grad():
                got = encoder(x)
            _assert_close(got, _tokens(ref, x, registers))
    finally:
        for f in files:  # 350 MB each: do not leave them to pytest's kept temporary folders
            f.unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("name", "timm_name", "extra"),
    [
        ("dinov2_vitb14", "vit_base_patch14_dinov2", 0),
        # Here the cls position is a row of the table (zero for timm's files, where it is folded
        # into the cls token), one row more than timm's no_embed_class table.
        ("dinov2_vitb14_reg4", "vit_base_patch14_reg4_dinov2", 768),
        ("dinov3_vitb16", "vit_base_patch16_dinov3", 0),
    ],
)
def test_vit_b_parameter_count_is_timms(name: str, timm_name: str, extra: int) -> None:
    size = BIG[name][1]
    with torch.device("meta"):
        ref = timm.create_model(timm_name, pretrained=False, img_size=size)
        encoder = BACKBONES.build(name, size, None)
    assert sum(p.numel() for p in encoder.parameters()) == sum(p.numel() for p in ref.parameters()) + extra


def test_dinov3_qkv_bias_variant_equals_timm(tmp_path: Path) -> None:
    # timm's _qkvb models: q and v biases, the key bias a zero buffer (mask_k_bias here).
    ref = _timm("vit_base_patch16_dinov3_qkvb", **SMALL)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "m.safetensors"))
    encoder = dinov3_vit((256, 128), width=192, layers=2, heads=3, qkv_bias=True).eval()
    sd = load_dinov3_state_dict(tmp_path / "m.safetensors", qkv_bias=True)
    assert torch.count_nonzero(sd["transformer.resblocks.0.attn.in_proj_bias"][192:384]) == 0
    load_encoder_state_dict(encoder, sd, "m.safetensors")
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        _assert_close(encoder(x), _tokens(ref, x, 4))
    # A bias in the key third does nothing and learns nothing.
    with torch.no_grad():
        encoder.blocks[0].attn.in_proj_bias[192:384].normal_()
    with torch.no_grad():
        _assert_close(encoder(x), _tokens(ref, x, 4))
    # The bias-free encoder refuses a file whose q/v biases are not zero, naming the key.
    with pytest.raises(WeightsError, match=r"m\.safetensors: 'blocks\.0\.attn\.q_bias' is not zero"):
        load_dinov3_state_dict(tmp_path / "m.safetensors")


# --------------------------------------------------------------------------- Meta's layouts


def _meta_dinov2(timm_sd: dict[str, Tensor], registers: bool) -> dict[str, Tensor]:
    """timm's DINOv2 state dict written in Meta's release layout (facebookresearch/dinov2,
    ``DinoVisionTransformer`` with ``block_chunks=0``, as in ``dinov2_vitb14_pretrain.pth``).

    The block, patch-embedding and final-norm names are timm's own (``blocks.{i}.norm1``,
    ``attn.qkv``, ``attn.proj``, ``ls1.gamma``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``ls2.gamma``,
    ``patch_embed.proj``, ``norm``); Meta's file adds the pre-training ``mask_token`` ``(1, D)``.
    With registers, Meta's ``register_tokens`` ``(1, R, D)`` are timm's ``reg_token``, and Meta's
    ``pos_embed`` ``(1, 1 + N, D)`` still has the cls row, which timm folds into ``cls_token``
    (``timm.models.vision_transformer._convert_dinov2``): a random cls row is split back out.
    """
    meta = {k: v.clone() for k, v in timm_sd.items()}
    d = meta["cls_token"].shape[-1]
    meta["mask_token"] = torch.randn(1, d)
    if registers:
        cls_pos = torch.randn(1, 1, d)
        meta["register_tokens"] = meta.pop("reg_token")
        meta["cls_token"] = meta["cls_token"] - cls_pos
        meta["pos_embed"] = torch.cat([cls_pos, meta["pos_embed"]], dim=1)
    return meta


@pytest.mark.parametrize("timm_name", ["vit_base_patch14_dinov2", "vit_base_patch14_reg4_dinov2"])
def test_meta_dinov2_layout(timm_name: str, tmp_path: Path) -> None:
    registers = 4 if "reg4" in timm_name else 0
    ref = _timm(timm_name, img_size=(518, 518), **SMALL)
    timm_sd = ref.state_dict()
    meta = _meta_dinov2(timm_sd, bool(registers))
    # timm's own converter reads it back to its layout: this is the layout timm takes for Meta's.
    back = vit_filter(dict(meta), ref)
    assert back.keys() == timm_sd.keys()
    assert all(torch.allclose(back[k], timm_sd[k], atol=1e-6) for k in back)
    # The reference is timm reading Meta's file (its cls token is Meta's cls plus the cls row).
    ref.load_state_dict(back)
    torch.save(meta, tmp_path / "dinov2_pretrain.pth")

    encoder = dinov2_vit((252, 126), width=192, layers=2, heads=3, registers=registers).eval()
    sd = load_dinov2_state_dict(tmp_path / "dinov2_pretrain.pth", grid=(18, 9))
    assert "mask_token" not in sd and sd["positional_embedding"].shape == (1 + 18 * 9, 192)
    load_encoder_state_dict(encoder, sd, "dinov2_pretrain.pth")
    x = torch.randn(1, 3, 252, 126)
    with torch.no_grad():
        _assert_close(encoder(x), _tokens(ref, x, registers))


def _meta_dinov3(timm_sd: dict[str, Tensor], periods: Tensor) -> dict[str, Tensor]:
    """timm's DINOv3 (``Eva``) state dict written in Meta's release layout (facebookresearch/dinov3,
    as ``dinov3_vitb16_pretrain_lvd1689m-*.pth``), the inverse of
    ``timm.models.eva.checkpoint_filter_fn``: ``storage_tokens`` for ``reg_token``,
    ``blocks.{i}.ls1.gamma``/``ls2.gamma`` for ``gamma_1``/``gamma_2``, the pre-training
    ``mask_token``, the rope ``periods`` saved as a bf16 buffer, and an attention bias
    ``attn.qkv.bias`` (all zero in the distilled ViT-B) with its ``attn.qkv.bias_mask`` (key third 0).
    """
    meta: dict[str, Tensor] = {}
    for k, v in timm_sd.items():
        k = (
            k.replace("reg_token", "storage_tokens")
            .replace("gamma_1", "ls1.gamma")
            .replace("gamma_2", "ls2.gamma")
        )
        meta[k] = v.clone()
        if k.endswith("attn.qkv.weight"):
            d = v.shape[1]
            meta[k.replace(".weight", ".bias")] = torch.zeros(3 * d)
            meta[k.replace(".weight", ".bias_mask")] = torch.cat(
                [torch.ones(d), torch.zeros(d), torch.ones(d)]
            )
    d = meta["cls_token"].shape[-1]
    meta["mask_token"] = torch.randn(1, d)
    meta["rope_embed.periods"] = periods.to(torch.bfloat16)
    return meta


def test_meta_dinov3_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = _timm("vit_base_patch16_dinov3", **SMALL)
    timm_sd = ref.state_dict()
    meta = _meta_dinov3(timm_sd, ref.rope.periods)
    back = eva_filter(dict(meta), ref)
    capsys.readouterr()  # timm prints why it drops the bias of a bias-free model
    assert back.keys() == timm_sd.keys() and all(torch.equal(back[k], timm_sd[k]) for k in back)
    torch.save(meta, tmp_path / "dinov3_pretrain.pth")
    save_file({k: v.contiguous() for k, v in timm_sd.items()}, str(tmp_path / "model.safetensors"))
    from_meta = load_dinov3_state_dict(tmp_path / "dinov3_pretrain.pth")
    from_timm = load_dinov3_state_dict(tmp_path / "model.safetensors")
    assert from_meta.keys() == from_timm.keys()
    assert all(torch.equal(from_meta[k], from_timm[k]) for k in from_meta)
    encoder = dinov3_vit((256, 128), width=192, layers=2, heads=3).eval()
    load_encoder_state_dict(encoder, from_meta, "dinov3_pretrain.pth")
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        _assert_close(encoder(x), _tokens(ref, x, 4))

    meta["blocks.1.attn.qkv.bias"][0] = 0.5
    torch.save(meta, tmp_path / "biased.pth")
    with pytest.raises(WeightsError, match=r"biased\.pth: 'blocks\.1\.attn\.qkv\.bias' is not zero"):
        load_dinov3_state_dict(tmp_path / "biased.pth")


# --------------------------------------------------------------------------- wrong architectures


def _does_not_fit(key: str, file: tuple[int, ...], encoder: tuple[int, ...]) -> str:
    return re.escape(f"'{key}' has shape {file} in the file but the encoder expects {encoder}")


def _first_tensors(timm_name: str, count: int) -> dict[str, Tensor]:
    """The first ``count`` tensors of a timm architecture's state dict (zeros, real names and
    shapes): enough for the loader to meet the first key that does not fit."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in timm.create_model(timm_name, pretrained=False).state_dict().items()}
    return {k: torch.zeros(s) for k, s in list(shapes.items())[:count]}


@pytest.mark.parametrize(
    ("backbone", "size", "make", "expected"),
    [
        # An OpenAI CLIP file (visual.* keys) is no DINO checkpoint at all.
        ("dinov2_vitb14", (252, 126), "clip", r"no DINOv2 encoder weights found .*first keys: visual\."),
        ("dinov3_vitb16", (256, 128), "clip", r"no DINOv3 encoder weights found .*first keys: visual\."),
        # ViT-L's width: the cls token is the first key that does not fit.
        (
            "dinov2_vitb14",
            (252, 126),
            "vit_large_patch14_dinov2",
            _does_not_fit("class_embedding", (1024,), (768,)),
        ),
        # One family's file for the other: patch 14 against 16.
        (
            "dinov3_vitb16",
            (256, 128),
            "vit_base_patch14_reg4_dinov2",
            _does_not_fit("conv1.weight", (768, 3, 14, 14), (768, 3, 16, 16)),
        ),
        (
            "dinov2_vitb14",
            (252, 126),
            "vit_base_patch16_dinov3",
            _does_not_fit("conv1.weight", (768, 3, 16, 16), (768, 3, 14, 14)),
        ),
    ],
)
def test_a_file_of_another_architecture_is_named_in_one_line(
    backbone: str, size: tuple[int, int], make: str, expected: str, tmp_path: Path
) -> None:
    path = tmp_path / f"{make}.pt"
    if make == "clip":
        clip = BACKBONES.build("tiny", (32, 32), None).state_dict()
        torch.save({f"visual.{k}": v for k, v in clip.items()}, path)
    else:
        torch.save(_first_tensors(make, 6), path)
    with pytest.raises(WeightsError) as err:
        BACKBONES.build(backbone, size, path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"model.backbone={backbone}: {path}: ")
    assert re.search(expected, message), message


def test_registers_must_match(tmp_path: Path) -> None:
    with_registers = dinov2_vit((56, 28), width=192, layers=4, heads=3, registers=4)
    torch.save(with_registers.state_dict(), tmp_path / "reg4.pt")
    with pytest.raises(WeightsError, match=r"tiny_dinov2: .*reg4\.pt: 'register_tokens' is not a key"):
        BACKBONES.build("tiny_dinov2", (56, 28), tmp_path / "reg4.pt")
    torch.save(BACKBONES.build("tiny_dinov2", (56, 28), None).state_dict(), tmp_path / "plain.pt")
    with pytest.raises(WeightsError, match=r"'register_tokens' is missing"):
        load_encoder_state_dict(with_registers, load_dinov2_state_dict(tmp_path / "plain.pt"), "plain.pt")


# --------------------------------------------------------------------------- the encoder's options


def test_rotary_embedding_reaches_the_patch_tokens_only() -> None:
    encoder = BACKBONES.build("tiny_dinov3", (64, 32), None)
    attn = encoder.blocks[0].attn
    table = rope_table((4, 2), 64)
    assert attn.rope_start == 5 and torch.equal(attn.rope, table)  # after cls and 4 registers
    # cls, 4 registers, 8 patches, then 6 prompt tokens: only the patches are rotated.
    t = torch.randn(2, 3, 5 + 8 + 6, 64)
    out = attn._rotate(t)
    assert torch.equal(out[:, :, :5], t[:, :, :5]) and torch.equal(out[:, :, 13:], t[:, :, 13:])
    assert torch.equal(out[:, :, 5:13], apply_rot_embed_cat(t[:, :, 5:13], table, half=True))
    assert not torch.equal(out[:, :, 5:13], t[:, :, 5:13])


def test_layer_scale_scales_the_branch_and_not_a_side_adapter() -> None:
    torch.manual_seed(0)
    block = ResidualAttentionBlock(16, 2, act="gelu", layer_scale=0.0)
    assert block.ls_1.gamma.shape == block.ls_2.gamma.shape == (16,)
    x = torch.randn(2, 5, 16)
    assert torch.equal(block(x), x)  # both branches scaled to zero
    adapter = MlpAdapter(16, 8, "gelu")
    block.set_adapter(adapter, "side_ffn")
    torch.testing.assert_close(block(x), x + adapter(x))
    block.set_adapter(adapter, "behind_ffn")  # behind: reads the scaled (zero) branch
    torch.testing.assert_close(block(x), x + adapter(torch.zeros_like(x)))


@pytest.mark.parametrize(
    ("name", "size", "registers"), [("tiny_dinov2", (56, 28), 0), ("tiny_dinov3", (64, 32), 4)]
)
def test_tiny_weights_round_trip_through_a_meta_build(
    name: str, size: tuple[int, int], registers: int, tmp_path: Path
) -> None:
    source = BACKBONES.build(name, size, None).eval()
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded = BACKBONES.build(name, size, tmp_path / "w.pt").eval()
    # Built on the meta device, then loaded: the rotary tables are computed again, for real.
    assert not any(t.is_meta for t in (*loaded.parameters(), *loaded.buffers()))
    x = torch.randn(2, 3, *size)
    assert source.embed(x).shape == (2, 1 + registers + 8, 192)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))
    assert loaded(x).shape == (2, 1 + 8, 192)


@pytest.mark.parametrize(("name", "size"), [("tiny_dinov2", (56, 28)), ("tiny_dinov3", (64, 32))])
def test_tiny_multimodal_backbone_with_prompts(name: str, size: tuple[int, int]) -> None:
    # The paper's structure: PFA in every block, SRP-Fusion prompts, the camera embedding.
    backbone = build_backbone(ModelConfig(backbone=name, freeze="frozen"), size, num_cameras=2)
    images = {m: torch.randn(2, 3, *size) for m in ("RGB", "NI", "TI")}
    out = backbone(images, torch.tensor([0, 1]))
    assert all(v.shape == (2, 1 + 8, 192) for v in out.values())
    sum(v.square().mean() for v in out.values()).backward()
    parts = backbone.parameter_parts()
    assert all(not p.requires_grad and p.grad is None for p in parts["backbone"])
    for part in ("adapters", "prompts", "camera"):
        assert parts[part] and all(p.requires_grad for p in parts[part])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in parts["prompts"])


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dino_tree")
    generate("rgbnt201", root, seed=5, ids=6, test_ids=2, cameras=2, shots=2)
    return root


TINY = [("tiny_dinov2", "[56,28]"), ("tiny_dinov3", "[64,32]")]


def _cfg(tree: Path, out: Path, backbone: str, size: str, *extra: str):  # type: ignore[no-untyped-def]
    # The demo preset's structure (PFA + SRP-Fusion + camera + MA) on a DINO encoder, frozen.
    return load_config(
        "demo",
        fast(
            f"data.img_size={size}",
            f"data.root={tree}",
            f"train.output={out}",
            f"model.backbone={backbone}",
            "model.freeze=frozen",
            "train.iters_per_epoch=2",
            *extra,
        ),
    )


@pytest.mark.parametrize(("backbone", "size"), TINY)
def test_frozen_training_steps_change_only_adapters_prompts_and_camera(
    backbone: str, size: str, tree: Path, tmp_path: Path
) -> None:
    trainer = Trainer(_cfg(tree, tmp_path / "run", backbone, size), DistInfo(), quiet=True, hooks=[])
    parts = trainer.model.backbone.parameter_parts()
    before = {id(p): p.detach().clone() for p in trainer.model.parameters()}
    record = trainer.train_epoch(0)
    assert torch.isfinite(torch.tensor(record["loss"]))

    def changed(params: list[nn.Parameter]) -> list[bool]:
        return [not torch.equal(p, before[id(p)]) for p in params]

    assert parts["backbone"] and not any(changed(parts["backbone"]))
    for part in ("adapters", "prompts", "camera"):
        assert any(changed(parts[part])), part


@pytest.mark.parametrize(("backbone", "size"), TINY)
def test_tiny_dino_trains_end_to_end(backbone: str, size: str, tree: Path, tmp_path: Path) -> None:
    h, w = (int(s) for s in size.strip("[]").split(","))
    weights = tmp_path / "encoder.pt"
    torch.save(BACKBONES.build(backbone, (h, w), None).state_dict(), weights)
    run = tmp_path / "run"
    run_training(_cfg(tree, run, backbone, size, f"model.weights={weights}"), quiet=True)
    assert {"last.ckpt", "results.json", "metrics.jsonl"} <= {p.name for p in run.iterdir()}
    model = load_checkpoint(run / "last.ckpt")["model"]
    encoder = torch.load(weights, weights_only=True)
    # Frozen: the encoder's weights in the checkpoint are the file's, bit for bit.
    for key, value in encoder.items():
        assert torch.equal(model[f"backbone.encoder.{key}"], value), key
