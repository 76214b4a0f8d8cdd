"""``mambapro doctor``: the report a user pastes into a bug report, run in-process."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from mambapro.cli import main
from mambapro.data import build_dataset
from mambapro.data.synth import generate
from mambapro.ops import scan_selfcheck as selfcheck
from mambapro.ops.scan_torch import selective_scan_torch

scan_module = importlib.import_module("mambapro.ops.selective_scan")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("doctor_data")
    generate("rgbnt201", root, ids=4, test_ids=2, cameras=2, shots=2)
    return root


@pytest.fixture(autouse=True)
def fresh_verdicts():
    selfcheck.clear()
    yield
    selfcheck.clear()


def _lines(text: str, start: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip().startswith(start)]


def test_the_report_names_versions_auto_pick_and_datasets(data_root: Path, capsys) -> None:
    assert main(["doctor", "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out
    (torch_line,) = _lines(out, "torch ")
    assert torch.__version__ in torch_line and "CUDA" in torch_line
    assert "cores (" in _lines(out, "cpu ")[0]  # the machine's CPU model and cores come first
    (pick,) = _lines(out, "cpu           torch")
    assert "fused backends run on CUDA only" in pick
    assert _lines(out, "python") and "not installed" not in " ".join(_lines(out, "torchvision"))
    for extra in ("core", "deploy", "dev"):
        assert _lines(out, extra), extra
    # the dataset: counts as the dataset parser gives them, per split
    ds = build_dataset("RGBNT201", data_root)
    (row,) = _lines(out, "RGBNT201")
    expected = "; ".join(
        f"{split} {len({s.pid for s in getattr(ds, split)})} ids / {len(getattr(ds, split))} captures / "
        f"{len({s.camid for s in getattr(ds, split)})} cameras"
        for split in ("train", "query", "gallery")
    )
    assert row.split(None, 1)[1] == f"ok: {expected}"
    assert "train 2 ids / 8 captures / 2 cameras" in row
    assert "not present" in _lines(out, "RGBNT100")[0] and "not present" in _lines(out, "MSVR310")[0]
    assert out.rstrip().endswith("result: everything checked is fine")


def test_json_report(data_root: Path, capsys) -> None:
    assert main(["doctor", "--data-root", str(data_root), "--dataset", "rgbnt201", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["torch"]["version"] == torch.__version__
    assert report["scan"][0]["device"] == "cpu" and report["scan"][0]["picks"] == {
        "float32": "torch",
        "bfloat16": "torch",
    }
    (ds,) = report["datasets"]
    assert ds["dataset"] == "RGBNT201" and ds["status"] == "ok"
    assert ds["splits"]["query"] == {"ids": 2, "captures": 8, "cameras": 2}
    deploy = {r["package"]: r for r in report["packages"]["deploy"]}
    assert {"faiss-cpu", "onnx", "onnxruntime", "onnxscript", "fastapi", "uvicorn"} <= set(deploy)


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("mambapro doctor: error: ")
    return err


def test_a_missing_requested_dataset_is_bad_input(data_root: Path, capsys) -> None:
    assert main(["doctor", "--data-root", str(data_root), "--dataset", "RGBNT100"]) == 2
    err = _one_error_line(capsys)
    assert "RGBNT100: RGBNT100 dataset folder not found" in err


def test_a_broken_dataset_is_bad_input(data_root: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "root"
    shutil.copytree(data_root, broken)
    shutil.rmtree(broken / "RGBNT201" / "test")  # the query/gallery split is gone
    assert main(["doctor", "--data-root", str(broken)]) == 2
    captured = capsys.readouterr()
    assert "RGBNT201      ERROR: RGBNT201 split folder not found" in captured.out  # in the report too
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mambapro doctor: error: RGBNT201: ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "RGBNT201"], "doctor --dataset needs --data-root"),
        (["--data-root", "{tmp}/nowhere"], "--data-root {tmp}/nowhere: no such folder"),
        (["--data-root", "{tmp}", "--dataset", "market"], "--dataset 'market' is not a registered dataset"),
        (["--data-root", "{tmp}"], "no registered dataset folder under {tmp}"),
    ],
)
def test_bad_arguments_are_one_line(argv, message, tmp_path: Path, capsys) -> None:
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(["doctor", *argv]) == 2
    assert message.format(tmp=tmp_path) in _one_error_line(capsys)


def test_a_failing_fused_backend_is_reported(monkeypatch, capsys) -> None:
    """With a wrong fused kernel that auto may use on CPU, the report shows the failed check,
    the warning and what auto uses instead, and the exit status is 1."""

    def wrong(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, chunk_size=None):
        out, last = selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
        return out * 1.5, last

    monkeypatch.setattr(scan_module, "FUSED_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(scan_module, "_triton_scan", lambda: wrong)
    monkeypatch.setattr(scan_module, "_mamba_ssm_scan", lambda: None)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    (pick,) = _lines(out, "cpu           picks")
    assert "float32: torch, bfloat16: torch" in pick and "triton, torch" in pick
    checks = _lines(out, "self-check triton")
    assert len(checks) == 2 and all("FAILED, largest error" in c for c in checks)
    assert any(
        "warning: selective_scan: the triton backend failed its self-check on cpu" in x
        for x in out.splitlines()
    )
    assert "result: 2 problem(s)" in out
