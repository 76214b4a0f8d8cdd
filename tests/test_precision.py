"""Test-time precision (mambapro.models.precision): bf16 and int8 features of the tiny model
against fp32, the precision that features files, indexes, exported files and test reports record,
and the refusals (a CPU without bf16, a gallery of another precision, int8 off the CPU)."""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import mambapro.options as options_module
from conftest import TinyRun
from mambapro.data import build_dataset
from mambapro.errors import UserError
from mambapro.models.clip_vit import Attention, Mlp, rope_table
from mambapro.models.precision import (
    Int8Linear,
    ProjectedAttention,
    apply_precision,
    autocast_dtype,
    check_precision_supported,
    model_precision,
)
from mambapro.models.prompts import PromptLayer
from mambapro.options import check_export_options, precision_support_error
from mambapro.retrieval.features import FeatureSet, eval_loader, extract_features, run_extract
from mambapro.retrieval.identity import PrecisionMismatchError, check_same_model, model_identity
from mambapro.retrieval.testing import run_test
from mambapro.train.checkpoint import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

NO_BF16 = precision_support_error("bf16") is not None
OLD_CPU = ("Old CPU 3000", {"sse4_2", "avx", "avx2", "fma"})


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _gallery_features(run: TinyRun, precision: str, kernel: str = "auto") -> np.ndarray:
    model, cfg, _ = load_model(run.checkpoint, extra={"data": {"root": str(run.tree)}})
    apply_precision(model, precision, kernel)
    ds = build_dataset("RGBNT201", run.tree)
    loader = eval_loader(cfg, ds.gallery, ds.spec)
    return extract_features(model, loader, torch.device("cpu"), autocast_dtype(model)).feats


@pytest.mark.parametrize(
    ("precision", "kernel"),
    [
        ("int8", "onednn"),
        ("int8", "int_mm"),
        pytest.param("bf16", "auto", marks=pytest.mark.skipif(NO_BF16, reason="no native bf16 here")),
    ],
)
def test_reduced_precision_features_agree_with_fp32(tiny_run: TinyRun, precision: str, kernel: str) -> None:
    if kernel == "onednn" and not torch.backends.mkldnn.is_available():
        pytest.skip("torch without oneDNN")
    want = _gallery_features(tiny_run, "fp32")
    got = _gallery_features(tiny_run, precision, kernel)
    assert got.shape == want.shape and got.dtype == np.float32
    cos = _cosines(got, want)
    assert cos.min() >= 0.99, cos
    assert not np.array_equal(got, want)  # it did compute at another precision


def test_int8_conversion_replaces_the_linear_layers_that_hold_the_flops(tiny_run: TinyRun) -> None:
    model, _, _ = load_model(tiny_run.checkpoint)
    apply_precision(model, "int8", "int_mm")
    assert model_precision(model) == "int8" and autocast_dtype(model, torch.bfloat16) is None
    block = model.backbone.encoder.transformer.resblocks[0]
    assert isinstance(block.attn, ProjectedAttention) and isinstance(block.attn.in_proj, Int8Linear)
    assert isinstance(block.attn.out_proj, Int8Linear)
    # QuickGELU folded into the MLP's first projection (SiLU of 1.702x), 1/1.702 into the second.
    assert block.mlp.c_fc.activation == "silu" and isinstance(block.mlp.gelu, nn.Identity)
    mixer = model.aggregator.blocks[0].parts[0]
    assert isinstance(mixer.in_proj[0], Int8Linear) and isinstance(mixer.out_proj, Int8Linear)
    # The SSM's own projections feed the recurrence, the prompt projections see a few tokens:
    # they stay fp32, as the norms do.
    ssm = mixer.ssm[0].forward_ssm
    assert type(ssm.x_proj) is nn.Linear and ssm.x_proj.weight.dtype == torch.float32
    layers = [m for p in model.modules() if isinstance(p, PromptLayer) for m in p.modules()]
    assert any(type(m) is nn.Linear for m in layers) and not any(isinstance(m, Int8Linear) for m in layers)
    with pytest.raises(ValueError, match="needs the fp32 model"):
        model_identity(model, (32, 32), "c.ckpt")
    with pytest.raises(ValueError, match="already converted to int8"):
        apply_precision(model, "fp32")


def test_projected_attention_computes_what_attention_computes() -> None:
    torch.manual_seed(0)
    for mask_k_bias, rope in ((False, False), (True, True)):
        attn = Attention(32, 4, mask_k_bias=mask_k_bias)
        nn.init.normal_(attn.in_proj_bias)
        if rope:
            attn.set_rope(rope_table((2, 3), 8), start=1)
        x = torch.randn(2, 1 + 6 + 2, 32)
        with torch.no_grad():
            want = attn(x)
            got = ProjectedAttention.convert(copy.deepcopy(attn))(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel", ["onednn", "int_mm"])
def test_int8_mlp_with_folded_quick_gelu_matches_fp32(kernel: str) -> None:
    if kernel == "onednn" and not torch.backends.mkldnn.is_available():
        pytest.skip("torch without oneDNN")
    torch.manual_seed(0)
    mlp = nn.Sequential(Mlp(64, 256, "quick_gelu"), Mlp(64, 256, "gelu")).eval()
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        want = mlp(x)
        got = apply_precision(mlp, "int8", kernel)(x)
    assert [m.c_fc.activation for m in mlp] == ["silu", "gelu"]
    # Relative, not only a cosine: a factor left out of the fold would scale the output.
    assert float((got - want).norm() / want.norm()) < 0.05
    # An all-zero input (a missing modality's stand-in) stays finite.
    layer = Int8Linear(torch.randn(8, 4), torch.randn(8), kernel=kernel)
    assert torch.equal(layer(torch.zeros(2, 4)), layer.bias.expand(2, 8))


def test_features_index_and_search_record_and_check_the_precision(tiny_run: TinyRun, tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    from mambapro.retrieval.index import GalleryIndex, run_index
    from mambapro.retrieval.search import run_search

    feats = tmp_path / "g8.npz"
    run_extract(tiny_run.checkpoint, tiny_run.tree, "gallery", feats, quiet=True, precision="int8")
    assert FeatureSet.load(feats).identity["precision"] == "int8"
    assert FeatureSet.load(tiny_run.gallery).identity["precision"] == "fp32"
    index8 = tmp_path / "g8.index"
    run_index("build", feats, index8)
    assert GalleryIndex.load(index8).identity["precision"] == "int8"
    # Mixing the precisions in one index is refused as well.
    mixed = "made at fp32 and .* at int8 .* with the same --precision"
    with pytest.raises(PrecisionMismatchError, match=mixed):
        run_index("build", [feats, tiny_run.gallery], tmp_path / "mixed.index")

    query = sorted((tiny_run.tree / "RGBNT201/test/RGB").iterdir())[0]
    out = tmp_path / "r.png"
    pattern = (
        rf"--index {re.escape(str(tiny_run.index))} holds embeddings made at fp32 and --checkpoint "
        r".* at int8 \(--precision\): .*give --precision fp32, extract the gallery again with "
        r"--precision int8, or pass --allow-precision-mismatch"
    )
    with pytest.raises(PrecisionMismatchError, match=pattern):
        run_search(tiny_run.checkpoint, query, index=tiny_run.index, out=out, quiet=True, precision="int8")
    with pytest.raises(PrecisionMismatchError, match="--gallery .* made at int8 and .* at fp32"):
        run_search(tiny_run.checkpoint, query, gallery=feats, out=out, quiet=True)
    assert not out.exists() and not out.with_suffix(".json").exists()
    ranked = run_search(
        tiny_run.checkpoint,
        query,
        index=tiny_run.index,
        out=out,
        quiet=True,
        precision="int8",
        allow_precision_mismatch=True,
    )
    assert out.exists() and len(next(iter(ranked.values()))) > 0
    same = run_search(tiny_run.checkpoint, query, index=index8, out=out, k=3, quiet=True, precision="int8")
    assert len(next(iter(same.values()))) == 3
    # Identities written before the precision was recorded are fp32.
    old = {k: v for k, v in FeatureSet.load(tiny_run.gallery).identity.items() if k != "precision"}
    check_same_model(old, "old.npz", FeatureSet.load(tiny_run.gallery).identity, "new.npz")


def test_test_reports_the_difference_against_fp32(tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    out = tmp_path / "t"
    result = run_test(
        tiny_run.checkpoint,
        extra={"data": {"root": str(tiny_run.tree)}},
        output=out,
        quiet=True,
        precision="int8",
    )
    reference = result["fp32_reference"]
    assert result["precision"] == "int8" and reference["row"] == "full"
    assert result["mAP_vs_fp32"] == pytest.approx(100 * (result["result"].mAP - reference["mAP"]))
    recorded = json.loads((out / "results.json").read_text())
    assert recorded["precision"] == "int8" and recorded["fp32_reference"] == reference
    line = f"precision int8 (full): mAP {100 * result['result'].mAP:.2f} against {100 * reference['mAP']:.2f}"
    assert line in (out / "report.txt").read_text() and line in capsys.readouterr().out


def test_export_records_the_precision_and_refuses_below_the_cosine_bound(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    from mambapro.deploy.export import ExportError, load_exported, run_export

    out = tmp_path / "m.pt2"
    with pytest.raises(
        ExportError, match=r"cosine of 0\.\d+ with the fp32 model's .* below --min-cosine 1\.0"
    ):
        run_export(tiny_run.checkpoint, "pt2", out, precision="int8", min_cosine=1.0, quiet=True)
    assert not out.exists()
    run_export(tiny_run.checkpoint, "pt2", out, precision="int8", quiet=True)
    exported = load_exported(out)
    meta = exported.metadata
    assert meta["precision"] == "int8" and 0.99 <= meta["feature_cosine_vs_fp32"] < 1.0
    assert meta["min_cosine"] == 0.99
    # The file runs with bare torch and gives the model's int8 features.
    model, cfg, _ = load_model(tiny_run.checkpoint)
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(2, 3, *cfg.img_size(), generator=gen) for _ in range(3)]
    inputs.append(torch.tensor([0, 1]))
    with torch.no_grad():
        want = model(dict(zip(("RGB", "NI", "TI", "camids"), inputs))).numpy()
    got = exported.run(tuple(x.numpy() for x in inputs))
    assert _cosines(got, want).min() >= 0.99


def test_bf16_is_refused_on_a_cpu_without_it(tiny_run: TinyRun, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(options_module, "cpu_info", lambda: OLD_CPU)
    line = (
        "--precision bf16: this CPU (Old CPU 3000) has no native bf16 (none of the flags avx512_bf16, "
        "amx_bf16); torch would emulate it, slower than fp32: use --precision int8 or fp32"
    )
    with pytest.raises(UserError) as err:
        check_precision_supported("bf16")
    assert str(err.value) == line
    out = tmp_path / "f.npz"
    with pytest.raises(UserError, match=re.escape(line)):
        run_extract(tiny_run.checkpoint, tiny_run.tree, "query", out, quiet=True, precision="bf16")
    assert not out.exists()
    with pytest.raises(UserError, match=re.escape(line)):
        check_export_options(tiny_run.checkpoint, tmp_path / "m.pt2", None, 1e-4, "bf16")
    assert check_precision_supported("int8") == "int8"  # int8 needs no CPU feature
    monkeypatch.setattr(options_module, "cpu_info", lambda: ("Sapphire", {"avx512_bf16", "amx_bf16"}))
    assert precision_support_error("bf16") is None
    monkeypatch.setattr(options_module, "cpu_info", lambda: (None, set()))  # flags unknown
    assert precision_support_error("bf16") is None


def test_other_refusals_are_one_line() -> None:
    with pytest.raises(
        UserError, match="^--precision int8 runs on the CPU .* device is cuda: add train.device=cpu$"
    ):
        check_precision_supported("int8", "cuda")
    with pytest.raises(UserError, match=r"^--precision int4: must be one of fp32, bf16, int8$"):
        check_precision_supported("int4")
    with pytest.raises(UserError, match=r"^--precision bf16 --format onnx: onnxruntime's CPU provider"):
        check_export_options(__file__, "m.onnx", None, 1e-4, "bf16")
    with pytest.raises(UserError, match=r"^--min-cosine 1\.5: must be in \(0, 1\]$"):
        check_export_options(__file__, "m.pt2", None, 1e-4, "int8", 1.5)


def test_serve_int8_answers_and_refuses_an_index_of_another_precision(tiny_run: TinyRun) -> None:
    pytest.importorskip("faiss")
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from mambapro.deploy.serve import SearchService, create_app
    from mambapro.retrieval.index import GalleryIndex

    index = GalleryIndex.load(tiny_run.index)
    model, cfg, _ = load_model(tiny_run.checkpoint)
    with pytest.raises(PrecisionMismatchError, match="made at fp32 and --checkpoint .* at int8"):
        SearchService(model, cfg, index, tiny_run.tree, checkpoint=tiny_run.checkpoint, precision="int8")
    model, cfg, _ = load_model(tiny_run.checkpoint)
    service = SearchService(model, cfg, index, tiny_run.tree, precision="int8", allow_precision_mismatch=True)
    client = TestClient(create_app(service))
    assert client.get("/health").json()["precision"] == "int8"
    assert client.get("/").status_code == 200
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (120, 60, 30)).save(buf, format="PNG")
    answer = client.post("/search", files={"RGB": ("q.png", buf.getvalue(), "image/png")}, data={"k": "3"})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["matches"]) == 3


def test_int8_layers_export_to_onnx_as_matmul_integer() -> None:
    pytest.importorskip("onnxruntime")
    from mambapro.deploy.export import _onnx_session, _to_bytes_onnx

    class Layer(nn.Module):
        input_names = ("x",)

        def __init__(self) -> None:
            super().__init__()
            self.fc = Int8Linear(torch.randn(16, 24), torch.randn(16), "silu", kernel="int_mm")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    layer = Layer().eval()
    x = torch.randn(5, 24)
    data = _to_bytes_onnx(layer, (x,), {"precision": "int8"})
    assert b"MatMulInteger" in data
    got = _onnx_session(data, "test").run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = layer(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
