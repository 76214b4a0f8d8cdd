"""Command-line papercuts: option order, unreadable checkpoints, check-data, data.verify,
per-iteration TensorBoard scalars."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from conftest import TinyRun
from mambapro.cli import main
from mambapro.config import config_to_dict, load_config
from mambapro.data import DatasetError
from mambapro.data.synth import generate
from mambapro.models import build_model
from mambapro.train.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from mambapro.train.run_data import prepare_data
from mambapro.train.trainer import run_training


@pytest.fixture(scope="module")
def data_root(tiny_run: TinyRun) -> Path:
    return tiny_run.tree  # read only


def test_options_and_overrides_in_any_order(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "config",
        "data.batch_size=16",
        "--config",
        "demo",
        "train.epochs=3",
        "--quiet",
        "test.batch_size=8",
    ]
    assert main(argv) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert (shown["data"]["batch_size"], shown["train"]["epochs"], shown["test"]["batch_size"]) == (16, 3, 8)
    assert shown["model"]["backbone"] == "tiny"  # --config demo, given after an override, still applies
    # A later override of the same key wins, wherever it stands.
    assert main(["config", "train.epochs=3", "--quiet", "train.epochs=5"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["epochs"] == 5
    # Anything else unknown is still refused.
    with pytest.raises(SystemExit) as exc:
        main(["config", "--config", "demo", "--bogus"])
    assert exc.value.code == 2


def test_a_file_that_is_not_a_checkpoint_is_named_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jpeg = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(jpeg)
    assert main(["test", "--checkpoint", str(jpeg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{jpeg} is not a mambapro checkpoint" in err
    assert "weights_only=False" not in err and "Traceback" not in err


def test_checkpoint_format_version_is_checked(tmp_path: Path) -> None:
    path = save_checkpoint({"model": {}, "config": {}}, tmp_path / "ok.ckpt")
    assert load_checkpoint(path)["format_version"] == 1
    newer = tmp_path / "newer.ckpt"
    torch.save({"model": {}, "config": {}, "format_version": 7}, newer)
    with pytest.raises(CheckpointError, match=r"format 7; this mambapro reads format 1 \(written by a newer"):
        load_checkpoint(newer)
    unknown = tmp_path / "unknown.ckpt"
    torch.save({"model": {}, "config": {}}, unknown)
    with pytest.raises(CheckpointError, match="format None"):
        load_checkpoint(unknown)


def _break_two_files(root: Path) -> tuple[Path, Path]:
    rgb = sorted((root / "RGBNT201" / "train_171" / "RGB").iterdir())
    empty, garbage = rgb[0], root / "RGBNT201" / "test" / "TI" / rgb[1].name
    if not garbage.exists():
        garbage = sorted((root / "RGBNT201" / "test" / "TI").iterdir())[0]
    empty.write_bytes(b"")
    garbage.write_bytes(b"not a jpeg at all")
    return empty, garbage


def test_check_data_lists_every_broken_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "d"
    generate("rgbnt201", root, seed=5, ids=6, test_ids=2, cameras=2, shots=2)
    assert main(["check-data", "--data-root", str(root), "-q"]) == 0
    # 4 training ids + 2 test ids, 2 cameras x 2 shots each; query and gallery share test/.
    assert "all 24 triplets decode" in capsys.readouterr().out
    empty, garbage = _break_two_files(root)
    assert main(["check-data", "--data-root", str(root), "-q"]) == 2
    out, err = capsys.readouterr()
    listed = [ln for ln in out.splitlines() if ln.startswith("  broken: ")]
    assert len(listed) == 2  # both at once; the test file counts once though query and gallery share it
    assert any(str(empty) in ln for ln in listed)
    assert any(garbage.name in ln and "test" in ln for ln in listed)
    assert err.strip().endswith("2 broken triplet(s), listed above") and len(err.strip().splitlines()) == 1


def test_data_verify_refuses_or_skips_before_training(tmp_path: Path) -> None:
    root = tmp_path / "d"
    generate("rgbnt201", root, seed=5, ids=6, test_ids=2, cameras=2, shots=2)
    empty, _ = _break_two_files(root)
    cfg = load_config(None, [f"data.root={root}", "data.verify=true"])
    with pytest.raises(DatasetError, match=f"broken triplet.*{empty.name}"):
        prepare_data(cfg)
    cfg.data.skip_broken = True
    with pytest.warns(UserWarning, match="skipped"):
        bundle = prepare_data(cfg)
    assert all(s.paths[0] != str(empty) for s in bundle.dataset.train)
    # Without data.verify the headers are still read: empty and non-image files are refused
    # when the dataset is parsed, before any run folder exists.
    with pytest.raises(DatasetError, match=f"2 broken triplet.*{empty.name}"):
        prepare_data(load_config(None, [f"data.root={root}"]))


def test_log_period_writes_per_iteration_scalars(data_root: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    overrides = [
        f"data.root={data_root}",
        "data.synthetic=false",
        "data.img_size=[64,32]",
        "data.batch_size=4",
        "data.num_instances=2",
        "train.epochs=2",
        "train.warmup_epochs=1",
        "train.iters_per_epoch=3",
        "train.log_period=2",
        f"train.output={out}",
    ]
    run_training(load_config("demo", overrides), quiet=True)
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    steps = [e.step for e in events.Scalars("iter/loss")]
    assert steps == [2, 5]  # every 2nd step of each 3-step epoch, counted over the run
    assert {"iter/acc", "iter/lr", "iter/fuse_ce"} <= set(events.Tags()["scalars"])


def test_a_gpu_checkpoint_evaluates_on_a_cpu(tmp_path: Path) -> None:
    # Trained on CUDA with the Triton scan: the stored train.device and model.scan_backend name
    # things this machine lacks; test-time loading picks auto for both, and both may be overridden.
    cfg = load_config("demo", ["data.img_size=[32,32]", "train.device=cuda", "model.scan_backend=triton"])
    model = build_model(cfg, num_classes=4, num_cameras=2)
    state = {"model": model.state_dict(), "config": config_to_dict(cfg), "num_classes": 4, "num_cameras": 2}
    path = save_checkpoint(state, tmp_path / "gpu.ckpt")
    loaded, loaded_cfg, _ = load_model(path)
    assert next(loaded.parameters()).device.type == "cpu"
    assert loaded_cfg.model.scan_backend == "auto"
    batch = {m: torch.randn(2, 3, 32, 32) for m in ("RGB", "NI", "TI")}
    batch["camids"] = torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.isfinite(loaded(batch)).all()
    _, cfg_torch, _ = load_model(path, overrides=["model.scan_backend=torch", "train.device=cpu"])
    assert cfg_torch.model.scan_backend == "torch"
    with pytest.raises(CheckpointError, match="model.prompt_tokens: 4 -> 8"):
        load_model(path, overrides=["model.prompt_tokens=8"])


def _policy_seen_by_torch(env: dict[str, str]) -> list[str]:
    """(whether `import mambapro.cli` imports torch, OMP_WAIT_POLICY after `main` ran)."""
    code = (
        "import os, sys\n"
        "from mambapro.cli import main\n"
        "print('torch' in sys.modules)\n"
        "main([])\n"  # prints the help
        "print(os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    return [lines[0], lines[-1]]


def test_cli_lets_idle_openmp_threads_sleep_unless_told_otherwise() -> None:
    """libgomp reads OMP_WAIT_POLICY when torch loads: the CLI sets PASSIVE before (its module
    imports no torch), and an explicit choice in the environment wins."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy_seen_by_torch(env) == ["False", "PASSIVE"]
    assert _policy_seen_by_torch({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == ["False", "ACTIVE"]
