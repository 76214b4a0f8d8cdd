"""mambapro export: the plain-operator scans, pt2 and ONNX round trips, the built-in check, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mambapro.cli import main
from mambapro.config import config_to_dict, load_config
from mambapro.deploy import export as export_module
from mambapro.deploy.export import (
    ExportedFile,
    ExportError,
    ExportMissingError,
    TestTimeModel,
    export_model,
    load_exported,
    run_export,
)
from mambapro.errors import UserError
from mambapro.ops import selective_scan
from mambapro.ops.scan_export import EXPORT_FORMS, selective_scan_export
from mambapro.train.checkpoint import load_model, save_checkpoint

NUM_CAMERAS = 3


def _loop_scan(u, delta, A, B, C, D, z, delta_bias):
    """The literal recurrence (mamba-ssm's selective_scan_ref), one step at a time, in float64."""
    u, delta, A, B, C, D, z, delta_bias = (x.double() for x in (u, delta, A, B, C, D, z, delta_bias))
    dt = torch.nn.functional.softplus(delta + delta_bias[:, None])
    b, d, L = u.shape
    h = torch.zeros(b, d, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(L):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, -1) + u * D[:, None]
    return y * torch.nn.functional.silu(z)


@pytest.mark.parametrize("form", EXPORT_FORMS)
@pytest.mark.parametrize("L", [1, 7, 33])
def test_export_scan_forms_equal_the_literal_recurrence(form: str, L: int) -> None:
    gen = torch.Generator().manual_seed(L)
    b, d, n = 2, 8, 4
    u, delta, z = (torch.randn(b, d, L, generator=gen) for _ in range(3))
    A = -torch.rand(d, n, generator=gen) * 4 - 0.1
    B, C = (torch.randn(b, n, L, generator=gen) for _ in range(2))
    D, bias = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
    want = _loop_scan(u, delta, A, B, C, D, z, bias)
    got = selective_scan_export(u, delta, A, B, C, D, z, bias, delta_softplus=True, form=form)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    # and through the public entry point, as the aggregator calls it
    via = selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True, backend=form)
    torch.testing.assert_close(via, got, atol=0, rtol=0)


def test_parallel_form_chunks_carry_the_state() -> None:
    gen = torch.Generator().manual_seed(5)
    u, delta = torch.randn(2, 6, 33, generator=gen), torch.randn(2, 6, 33, generator=gen)
    A = -torch.rand(6, 4, generator=gen) - 0.2
    B, C = torch.randn(2, 4, 33, generator=gen), torch.randn(2, 4, 33, generator=gen)
    whole = selective_scan_export(u, delta, A, B, C, delta_softplus=True, form="parallel", chunk=64)
    for chunk in (1, 5, 16):
        got = selective_scan_export(u, delta, A, B, C, delta_softplus=True, form="parallel", chunk=chunk)
        torch.testing.assert_close(got, whole, atol=1e-5, rtol=1e-5)


def test_parallel_form_does_not_overflow_on_large_steps() -> None:
    # Σ Δ|A| far above 88 over the sequence: a log-space cumsum form would give inf/nan here.
    u = torch.ones(1, 2, 64)
    delta = torch.full((1, 2, 64), 30.0)
    A = torch.full((2, 3), -5.0)
    B = C = torch.ones(1, 3, 64)
    got = selective_scan_export(u, delta, A, B, C, form="parallel")
    want = selective_scan(u, delta, A, B, C, backend="torch")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    # One MA block instead of two: the same operators in the exported graph, a third less to
    # export (the ONNX exporter's rewrite passes grow with the graph).
    overrides = ["data.synthetic=false", "data.img_size=[32,32]", "data.num_workers=0", "model.ma_depth=1"]
    cfg = load_config("demo", overrides)
    torch.manual_seed(0)
    from mambapro.models import build_model

    model = build_model(cfg, num_classes=4, num_cameras=NUM_CAMERAS)
    # Non-trivial BatchNorm statistics, so the neck is exercised as trained models use it.
    for bn in (model.ori_head.bn, model.fuse_head.bn):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    state = {
        "model": model.state_dict(),
        "config": config_to_dict(cfg),
        "num_classes": 4,
        "num_cameras": NUM_CAMERAS,
    }
    return save_checkpoint(state, folder / "last.ckpt")


def _triplets(batch: int, seed: int, camids: bool = True) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    images = tuple(torch.randn(batch, 3, 32, 32, generator=gen) for _ in range(3))
    if not camids:
        return images
    return (*images, torch.randint(0, NUM_CAMERAS, (batch,), generator=gen))


def _reference(checkpoint: Path, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    """The features `extract` computes: the checkpoint's model, its own (custom-op) scan."""
    model, _, _ = load_model(checkpoint, device=torch.device("cpu"))
    batch = {"RGB": inputs[0], "NI": inputs[1], "TI": inputs[2]}
    if len(inputs) == 4:
        batch["camids"] = inputs[3]
    with torch.no_grad():
        return model(batch).numpy()


@pytest.fixture(scope="module")
def pt2_file(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pt2 file `mambapro export --no-camids` writes, made once (an export takes seconds)
    for the tests that read it; none of them changes it. (The ONNX test exports with the
    camera input: the wrapper and the check are the same for both formats.)"""
    out = tmp_path_factory.mktemp("pt2") / "model.pt2"
    assert main(["export", "-q", "--checkpoint", str(checkpoint), "--out", str(out), "--no-camids"]) == 0
    return out


@pytest.fixture(scope="module")
def pt2_loaded(pt2_file: Path) -> ExportedFile:
    """``pt2_file`` as ``load_exported`` reads it, once (reading a pt2 program takes seconds)."""
    return load_exported(pt2_file)


def test_pt2_round_trip_matches_the_model_at_a_new_batch_size(
    checkpoint: Path, pt2_loaded: ExportedFile
) -> None:
    exported = pt2_loaded
    assert exported.fmt == "pt2"
    assert exported.metadata["inputs"] == ["rgb", "ni", "ti"]
    assert exported.metadata["image_size"] == [32, 32]
    inputs = _triplets(5, seed=11, camids=False)  # neither the tracing batch (2) nor the checked (3, 1)
    got = exported.run(tuple(x.numpy() for x in inputs))
    want = _reference(checkpoint, inputs)
    assert got.shape == want.shape == (5, exported.metadata["feature_dim"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_pt2_file_runs_without_the_mambapro_package(checkpoint: Path, pt2_file: Path, tmp_path: Path) -> None:
    out = pt2_file
    inputs = _triplets(2, seed=3, camids=False)
    np.savez(tmp_path / "inputs.npz", *[x.numpy() for x in inputs])
    script = (
        "import sys, numpy as np, torch\n"
        f"z = np.load({str(tmp_path / 'inputs.npz')!r})\n"
        "xs = [torch.from_numpy(z[f'arr_{i}']) for i in range(3)]\n"
        f"m = torch.export.load({str(out)!r}).module()\n"
        "y = m(*xs).detach().numpy()\n"
        "assert not [k for k in sys.modules if k.startswith('mambapro')], 'mambapro was imported'\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, y)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, cwd=tmp_path)
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npy"), _reference(checkpoint, inputs), rtol=1e-4, atol=1e-6
    )


def test_onnx_round_trip_with_onnxruntime_and_metadata(checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "model.onnx"
    assert main(["export", "-q", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    exported = load_exported(out)
    assert exported.fmt == "onnx"
    assert [i.name for i in exported.runner.get_inputs()] == ["rgb", "ni", "ti", "camids"]
    assert exported.metadata["scan"] == "parallel"
    assert exported.metadata["mean"] == 0.5 and exported.metadata["std"] == 0.5
    inputs = _triplets(5, seed=12)
    got = exported.run(tuple(x.numpy() for x in inputs))
    want = _reference(checkpoint, inputs)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_without_camids_the_file_takes_three_images_and_drops_the_camera_term(
    checkpoint: Path, pt2_loaded: ExportedFile
) -> None:
    exported = pt2_loaded
    assert exported.metadata["inputs"] == ["rgb", "ni", "ti"]
    images = _triplets(3, seed=4, camids=False)
    got = exported.run(tuple(x.numpy() for x in images))
    np.testing.assert_allclose(got, _reference(checkpoint, images), rtol=1e-4, atol=1e-6)
    with_cam = _reference(checkpoint, (*images, torch.tensor([0, 1, 2])))
    assert not np.allclose(got, with_cam, atol=1e-6)  # the camera term is real, so dropping it shows


def test_a_file_beyond_the_tolerance_is_refused_and_not_written(
    checkpoint: Path,
    pt2_file: Path,
    pt2_loaded: ExportedFile,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The exporter's output is the file the fixture exported with the same settings (the export
    # is deterministic and takes seconds), read as the fixture read it; what runs is the check
    # of that program against the PyTorch model, and the refusal.
    monkeypatch.setattr(export_module, "_export_program", lambda wrapper, example: None)
    monkeypatch.setattr(export_module, "_to_bytes_pt2", lambda program, metadata: pt2_file.read_bytes())
    monkeypatch.setattr(export_module, "_runner", lambda fmt, data: pt2_loaded.runner)
    out = tmp_path / "model.pt2"
    with pytest.raises(ExportError, match=r"differs from the PyTorch model by .* above the tolerance") as err:
        # float32 cannot meet 1e-12
        run_export(checkpoint, "pt2", out, camids=False, tolerance=1e-12, quiet=True)
    assert list(tmp_path.iterdir()) == []
    # The difference the check measured, read from the message (the export and the check are those
    # of the default tolerance; only the threshold differs) instead of exporting a second time.
    worst = float(re.search(r"differs from the PyTorch model by (\S+) \(relative\)", str(err.value))[1])
    assert 0 < worst <= 1e-4  # the default tolerance holds, and the check really compared


def test_wrapper_is_the_eval_model(checkpoint: Path) -> None:
    model, _, _ = load_model(checkpoint, device=torch.device("cpu"))
    inputs = _triplets(2, seed=5)
    with torch.no_grad():
        got = TestTimeModel(model, camids=True)(*inputs)
    np.testing.assert_array_equal(got.numpy(), _reference(checkpoint, inputs))


def test_onnx_without_its_packages_names_the_extra(checkpoint: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails: not installed
    want = r"onnxruntime is not installed \(ONNX export needs .*\): pip install 'mambapro\[deploy\]'"
    with pytest.raises(ExportMissingError, match=want):
        export_model(checkpoint, "onnx")
    assert issubclass(ExportMissingError, UserError)


def test_load_exported_names_a_file_that_is_neither_format(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(json.dumps({"not": "a model"}).encode())
    with pytest.raises(ExportError, match=r"junk.onnx"):
        load_exported(junk)
