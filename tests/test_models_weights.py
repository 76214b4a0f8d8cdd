"""Encoder weights: equality with open_clip and timm on random checkpoints in their own layouts,
the TorchScript reader, positional-grid resizing, and errors for bad files."""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mambapro.models import (
    clip_image_encoder,
    imagenet_vit,
    load_clip_state_dict,
    load_encoder_state_dict,
    load_timm_vit_state_dict,
    read_checkpoint,
    read_torchscript_tensors,
    resize_pos_embed,
)
from mambapro.models.backbone import BACKBONES


class _TensorHolder(nn.Module):
    """A module whose parameters carry given dotted names, to write TorchScript archives that
    look like OpenAI's ``ViT-B-16.pt`` (same keys, fp16)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for name, value in tensors.items():
            *path, leaf = name.split(".")
            mod: nn.Module = self
            for part in path:
                if not hasattr(mod, part):
                    mod.add_module(part, nn.Module())
                mod = getattr(mod, part)
            mod.register_parameter(leaf, nn.Parameter(value, requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


def _save_torchscript(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, but OpenAI's files are TorchScript
        torch.jit.save(torch.jit.trace(_TensorHolder(tensors), torch.zeros(1)), str(path))


@pytest.fixture(scope="module")
def openai_clip(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """open_clip's ViT-B-16 (QuickGELU, as OpenAI's weights) with randomised weights, written in
    OpenAI's layout as fp16: a plain state dict and a TorchScript archive."""
    # A dev dependency (pyproject.toml), always installed; pretrained=None builds random weights
    # and downloads nothing.
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True).eval()
    with torch.no_grad():  # matrices are random already; make LayerNorms and biases non-trivial too
        for p in model.visual.parameters():
            if p.ndim <= 1:
                p.add_(0.1 * torch.randn_like(p))
    sd16 = {k: v.half() for k, v in model.state_dict().items() if k.startswith("visual.")}
    # A few text-tower keys, as in the real file, that the image loader must ignore.
    sd16["logit_scale"] = torch.tensor(4.6052)
    sd16["token_embedding.weight"] = torch.randn(8, 512).half()
    # The reference sees exactly the fp16-rounded weights the files hold.
    model.visual.load_state_dict({k[len("visual.") :]: v.float() for k, v in sd16.items() if "visual." in k})
    d = tmp_path_factory.mktemp("clip")
    _save_torchscript(sd16, d / "ViT-B-16.pt")
    torch.save(sd16, d / "state_dict.pt")
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = model.encode_image(images)
    return {"dir": d, "sd16": sd16, "images": images, "expected": expected}


def test_torchscript_reader_matches_torch_jit_load(openai_clip: dict) -> None:
    path = openai_clip["dir"] / "ViT-B-16.pt"
    ours = read_torchscript_tensors(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = torch.jit.load(str(path), map_location="cpu").state_dict()
    assert list(ours) == list(reference)
    for key, value in reference.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


def test_clip_encoder_equals_open_clip_from_torchscript_and_state_dict(openai_clip: dict) -> None:
    images, expected = openai_clip["images"], openai_clip["expected"]
    encoder = clip_image_encoder(openai_clip["dir"] / "ViT-B-16.pt").eval()
    assert encoder.conv1.weight.dtype == torch.float32  # fp16 file, fp32 encoder
    with torch.no_grad():
        got = encoder.encode(images)
    assert got.shape == (1, 512)
    assert (got - expected).abs().max().item() <= 1e-4

    # The plain state-dict file gives the very same fp32 tensors, hence the same embedding.
    from_state_dict = clip_image_encoder(openai_clip["dir"] / "state_dict.pt")
    for (ka, a), (kb, b) in zip(encoder.state_dict().items(), from_state_dict.state_dict().items()):
        assert ka == kb and a.dtype == b.dtype == torch.float32 and torch.equal(a, b), ka


def test_open_clip_training_checkpoint_layout(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd16 = {f"visual.{k}": v.half() for k, v in BACKBONES.build("tiny", (32, 32), None).state_dict().items()}
    sd16["logit_scale"] = torch.tensor(4.6)
    # open_clip's training checkpoints: {"epoch", "state_dict": {"module.visual...": ...}}.
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd16.items()}}, tmp_path / "epoch_3.pt"
    )
    save_file(sd16, str(tmp_path / "m.safetensors"))
    a = load_clip_state_dict(tmp_path / "epoch_3.pt")
    b = load_clip_state_dict(tmp_path / "m.safetensors")
    expected = {k[len("visual.") :]: v.float() for k, v in sd16.items() if k.startswith("visual.")}
    for got in (a, b):
        assert set(got) == set(expected)
        assert all(torch.equal(got[k], expected[k]) and got[k].dtype == torch.float32 for k in expected)


@pytest.mark.parametrize("grid", [(16, 8), (8, 16)])
def test_positional_grid_resize_matches_hand_computed_bilinear(grid: tuple[int, int]) -> None:
    # A grid whose channel 0 is the row index and channel 1 the column index: bilinear
    # resampling (align_corners=False) of a linear ramp gives the source coordinate
    # (i + 0.5) * 14 / rows - 0.5, clamped to the grid, exactly.
    rows, cols = grid
    ii, jj = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="ij")
    pos = torch.cat([torch.tensor([[7.0, -7.0]]), torch.stack([ii, jj], -1).reshape(196, 2)])
    out = resize_pos_embed({"positional_embedding": pos}, grid)
    assert out.shape == (1 + rows * cols, 2)
    assert torch.equal(out[0], pos[0])
    src_r = ((torch.arange(rows) + 0.5) * 14 / rows - 0.5).clamp(0, 13)
    src_c = ((torch.arange(cols) + 0.5) * 14 / cols - 0.5).clamp(0, 13)
    g = out[1:].reshape(rows, cols, 2)
    assert torch.allclose(g[..., 0], src_r[:, None].expand(rows, cols), atol=1e-5)
    assert torch.allclose(g[..., 1], src_c[None, :].expand(rows, cols), atol=1e-5)


@pytest.mark.parametrize("grid", [(16, 8), (8, 16)])
def test_positional_grid_resize_matches_interpolate_and_timm(grid: tuple[int, int]) -> None:
    from timm.layers import resample_abs_pos_embed

    pos = torch.randn(197, 32)
    out = resize_pos_embed({"positional_embedding": pos}, grid)
    direct = F.interpolate(
        pos[1:].reshape(1, 14, 14, 32).permute(0, 3, 1, 2), size=grid, mode="bilinear", align_corners=False
    )
    assert torch.allclose(out[1:], direct.permute(0, 2, 3, 1).reshape(-1, 32), atol=1e-6)
    timm_out = resample_abs_pos_embed(pos[None], list(grid), interpolation="bilinear", antialias=False)[0]
    assert torch.allclose(out, timm_out, atol=1e-6)
    # A table already of the input grid is left alone.
    assert resize_pos_embed({"positional_embedding": out}, grid) is out


def test_clip_weights_load_at_reid_geometry(openai_clip: dict) -> None:
    pos = openai_clip["sd16"]["visual.positional_embedding"].float()
    for size, grid in (((256, 128), (16, 8)), ((128, 256), (8, 16))):
        encoder = BACKBONES.build("clip_vit_b16", size, openai_clip["dir"] / "ViT-B-16.pt")
        assert encoder.grid == grid and encoder.positional_embedding.shape == (1 + 128, 768)
        expected = resize_pos_embed({"positional_embedding": pos}, grid)
        assert torch.equal(encoder.positional_embedding, expected)
        assert not any(p.is_meta for p in encoder.parameters())


def test_imagenet_vit_equals_timm_at_224_and_at_reid_geometry(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file
    from timm.models.vision_transformer import checkpoint_filter_fn

    torch.manual_seed(1)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    sd = ref.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))

    ours = imagenet_vit(width=192, layers=12, heads=3).eval()
    load_encoder_state_dict(
        ours, load_timm_vit_state_dict(tmp_path / "model.safetensors"), "model.safetensors"
    )
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - ref.forward_features(x)).abs().max().item() <= 1e-4

    # At 256x128, timm's own bilinear resize (as the release resizes) is the oracle.
    ref2 = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(256, 128)).eval()
    ref2.load_state_dict(checkpoint_filter_fn(sd, ref2, interpolation="bilinear", antialias=False))
    ours2 = imagenet_vit((256, 128), width=192, layers=12, heads=3).eval()
    sd2 = load_timm_vit_state_dict(tmp_path / "model.safetensors", grid=(16, 8))
    load_encoder_state_dict(ours2, sd2, "model.safetensors")
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        assert (ours2(x) - ref2.forward_features(x)).abs().max().item() <= 1e-4


def test_imagenet_vit_b16_has_no_projection() -> None:
    with torch.device("meta"):
        encoder = BACKBONES.build("vit_b16_imagenet", (256, 128), None)
    assert encoder.proj is None and encoder.out_dim == 768 and encoder.grid == (16, 8)
    # timm's vit_base_patch16_224 without the classifier: 85,798,656 at 197 tokens, here 129.
    assert sum(p.numel() for p in encoder.parameters()) == 85_798_656 - 68 * 768


# --------------------------------------------------------------------------- errors


def _tiny_sd() -> dict[str, torch.Tensor]:
    return BACKBONES.build("tiny", (32, 32), None).state_dict()


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_clip_state_dict(tmp_path / "nope.pt")


def test_shape_mismatch_names_first_key_and_file(tmp_path: Path) -> None:
    sd = _tiny_sd()
    sd["transformer.resblocks.1.mlp.c_fc.weight"] = torch.zeros(10, 192)
    sd["ln_post.weight"] = torch.zeros(5)
    torch.save(sd, tmp_path / "bad.pt")
    encoder = BACKBONES.build("tiny", (32, 32), None)
    with pytest.raises(
        ValueError, match=r"bad\.pt.*'transformer\.resblocks\.1\.mlp\.c_fc\.weight'.*\(10, 192\)"
    ):
        load_encoder_state_dict(
            encoder, load_clip_state_dict(tmp_path / "bad.pt", grid=(2, 2)), tmp_path / "bad.pt"
        )


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    encoder = BACKBONES.build("tiny", (32, 32), None)
    sd = _tiny_sd()
    del sd["ln_pre.bias"]
    with pytest.raises(ValueError, match="'ln_pre.bias' is missing"):
        load_encoder_state_dict(encoder, sd, "x.pt")
    sd = _tiny_sd()
    sd["attn_pool.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="'attn_pool.weight' is not a key"):
        load_encoder_state_dict(encoder, sd, "x.pt")


def test_grid_that_is_not_square_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="10 grid positions"):
        resize_pos_embed({"positional_embedding": torch.zeros(11, 4)}, (2, 2), "odd.pt")


def test_non_clip_checkpoint_is_refused(tmp_path: Path) -> None:
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: no CLIP image-encoder weights"):
        load_clip_state_dict(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"text\.pt"):
        read_checkpoint(tmp_path / "text.pt")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def test_code_in_a_torchscript_archive_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps(_Evil(marker), protocol=2))
        zf.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        zf.writestr("evil/code/__torch__.py", "")
    with pytest.raises(ValueError, match=r"evil\.pt.*'(io|builtins)\.open'"):
        read_checkpoint(path)
    assert not marker.exists()


def test_code_in_a_plain_pickle_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"w": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt: not a state dict readable without executing code"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists() and not os.path.exists("pwned")
