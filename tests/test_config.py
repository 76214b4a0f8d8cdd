"""The typed configuration tree: files with bases, overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mambapro.cli import main
from mambapro.config import PRESETS_DIR, ConfigError, load_config, nearest_multiple

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_paper_rgbnt201_configuration() -> None:
    cfg = load_config()
    assert cfg.data.dataset == "RGBNT201"
    assert cfg.img_size() == (256, 128)
    assert (cfg.model.backbone, cfg.model.freeze, cfg.model.adapter, cfg.model.prompt) == (
        "clip_vit_b16",
        "frozen",
        "pfa",
        "srp_fusion",
    )
    assert cfg.model.prompt_tokens == 4 and cfg.model.aggregator == "ma" and cfg.model.ma_depth == 2
    assert cfg.train.lr == pytest.approx(3.5e-4) and cfg.train.triplet_margin is None


def test_dataset_sets_geometry_and_case_is_ignored() -> None:
    cfg = load_config(overrides=["data.dataset=rgbnt100"])
    assert cfg.data.dataset == "RGBNT100"
    assert cfg.img_size() == (128, 256)
    cfg = load_config(overrides=["data.dataset=MSVR310", "data.img_size=[64,128]"])
    assert cfg.img_size() == (64, 128)


def test_file_with_base_overrides_only_what_differs(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("train:\n  lr: 1e-3\n  epochs: 7\nmodel:\n  prompt: sp\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain:\n  epochs: 3\n")
    cfg = load_config(tmp_path / "child.yaml", ["model.prompt_tokens=8"])
    assert cfg.train.lr == pytest.approx(1e-3)  # '1e-3' is a string to PyYAML; still a float here
    assert cfg.train.epochs == 3
    assert cfg.model.prompt == "sp"
    assert cfg.model.prompt_tokens == 8


def test_overrides_parse_yaml_values() -> None:
    cfg = load_config(
        overrides=[
            "model.weights=null",
            "train.grad_clip=5",
            "model.adapter_layers=[0, 3]",
            "data.skip_broken=true",
        ]
    )
    assert cfg.model.weights is None
    assert cfg.train.grad_clip == 5.0 and isinstance(cfg.train.grad_clip, float)
    assert cfg.model.adapter_layers == [0, 3]
    assert cfg.data.skip_broken is True


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.adaptr=pfa", "unknown key 'model.adaptr'"),
        ("modle.adapter=pfa", "unknown key 'modle'"),
        ("train.epochs=ten", "'train.epochs' = 'ten' must be an integer"),
        ("train.epochs=1.5", "'train.epochs' = 1.5 must be an integer"),
        ("data.skip_broken=3", "'data.skip_broken' = 3 must be true or false"),
        ("model.adapter=lorax", "'model.adapter' = 'lorax' is not one of"),
        ("train.lr=fast", "'train.lr' = 'fast' must be a number"),
        ("data.batch_size=30", "multiple of 'data.num_instances'"),
        ("noequals", "must look like key.sub=value"),
        ("model.adapter_layers=[a]", "'model.adapter_layers[0]'"),
    ],
)
def test_bad_overrides_name_the_key(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert needle in str(err.value)


def test_bad_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  promt: sp\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'model\.promt'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    # a file that names a missing base names the base
    (tmp_path / "orphan.yaml").write_text("_base_: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_every_shipped_config_loads() -> None:
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert (REPO / "configs").resolve() == PRESETS_DIR
    assert len(files) >= 4
    for f in files:
        load_config(f)


def test_config_command_prints_the_resolved_tree(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "model.prompt=ip", "train.epochs=5"]) == 0
    out = capsys.readouterr().out
    assert "prompt: ip" in out and "epochs: 5" in out and "dataset: RGBNT201" in out
    assert main(["config", "model.nope=1"]) == 2
    assert "unknown key 'model.nope'" in capsys.readouterr().err


def test_presets_resolve_by_name() -> None:
    cfg = load_config("demo")
    assert cfg.model.backbone == "tiny" and cfg.data.synthetic
    assert load_config("rgbnt100").img_size() == (128, 256)
    with pytest.raises(ConfigError, match="presets: .*demo"):
        load_config("no_such_preset")


@pytest.mark.parametrize(
    ("size", "patch", "expected"),
    [(256, 14, 252), (128, 14, 126), (256, 16, 256), (7, 14, 14), (21, 14, 28), (20, 14, 14)],
)
def test_nearest_multiple_of_the_patch(size: int, patch: int, expected: int) -> None:
    # 256 / 14 = 18.3 -> 18 patches; 21 / 14 = 1.5 -> ties go up; never below one patch.
    assert nearest_multiple(size, patch) == expected


def test_the_image_size_follows_the_backbones_patch() -> None:
    assert load_config(None, ["model.backbone=tiny"]).img_size() == (256, 128)
    assert load_config(None, ["model.backbone=tiny_dinov2"]).img_size() == (252, 126)
    assert load_config(None, ["model.backbone=tiny_dinov2", "data.dataset=RGBNT100"]).img_size() == (126, 252)
    # An explicit size is used as given, and must fit the patch.
    assert load_config(None, ["model.backbone=tiny_dinov2", "data.img_size=[140,70]"]).img_size() == (140, 70)
    with pytest.raises(ConfigError, match=r"positive multiples of the patch size 14"):
        load_config(None, ["model.backbone=tiny_dinov2", "data.img_size=[256,128]"])


def test_normalisation_takes_one_value_or_three() -> None:
    cfg = load_config(None, ["data.mean=[0.485,0.456,0.406]", "data.std=0.25"])
    assert cfg.data.mean == [0.485, 0.456, 0.406] and cfg.data.std == 0.25
    with pytest.raises(ConfigError, match=r"'data.mean' = \[0.1, 0.2\] must be one number or three"):
        load_config(None, ["data.mean=[0.1,0.2]"])
    with pytest.raises(ConfigError, match=r"'data.std' = \[0.2, 0.0, 0.2\] \(item 0.0\) must be > 0"):
        load_config(None, ["data.std=[0.2,0.0,0.2]"])
