"""One source per name: the registries of ``mambapro.parts`` are torch-free and lazy, the config's
choices are their names (a part registered later is a valid value with no second edit), and the
MA settings travel as one ``MASettings`` built from the config."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import mambapro.aggregation as aggregation
import mambapro.models as models
from mambapro import config, parts
from mambapro.aggregation import SumAggregator, build_aggregator
from mambapro.config import ConfigError, ModelConfig, load_config
from mambapro.modalities import MISSING_SETTINGS
from mambapro.models import adapters, backbone, build_model, prompts
from mambapro.models.clip_vit import QuickGELU, make_act
from mambapro.parts import BackboneInfo, MASettings
from mambapro.registry import Registry

#: Every lazy entry and the constructor it stood for when the torch modules registered it.
EXPECTED = {
    ("backbones", "clip_vit_b16"): backbone.clip_vit_b16,
    ("backbones", "vit_b16_imagenet"): backbone.vit_b16_imagenet,
    ("backbones", "tiny"): backbone.tiny,
    ("backbones", "dinov2_vitb14"): backbone.dinov2_vitb14,
    ("backbones", "dinov2_vitb14_reg4"): backbone.dinov2_vitb14_reg4,
    ("backbones", "dinov3_vitb16"): backbone.dinov3_vitb16,
    ("backbones", "tiny_dinov2"): backbone.tiny_dinov2,
    ("backbones", "tiny_dinov3"): backbone.tiny_dinov3,
    ("adapters", "none"): adapters.no_adapter,
    ("adapters", "pfa"): adapters.pfa,
    ("adapters", "bna"): adapters.bna,
    ("adapters", "lora"): adapters.lora,
    ("prompts", "none"): prompts.no_prompts,
    ("prompts", "ip"): prompts.ip,
    ("prompts", "sp"): prompts.sp,
    ("prompts", "srp_separation"): prompts.srp_separation,
    ("prompts", "srp_fusion"): prompts.srp_fusion,
    ("aggregators", "none"): aggregation.no_aggregator,
    ("aggregators", "sum"): aggregation.sum_aggregator,
    ("aggregators", "concat"): aggregation.concat_aggregator,
    ("aggregators", "transformer"): aggregation.transformer_aggregator,
    ("aggregators", "intra_ma"): aggregation.intra_ma_aggregator,
    ("aggregators", "inter_ma"): aggregation.inter_ma_aggregator,
    ("aggregators", "ma"): aggregation.ma_aggregator,
    ("aggregators", "ma_transformer"): aggregation.ma_transformer_aggregator,
    ("activations", "quick_gelu"): QuickGELU,
    ("activations", "gelu"): nn.GELU,
}
REGISTRIES = {
    r.family: r
    for r in (parts.BACKBONES, parts.ADAPTERS, parts.PROMPTS, parts.AGGREGATORS, parts.ACTIVATIONS)
}

#: Config key -> the registry (read when checked) or the vocabulary its choices come from.
SOURCES = {
    "model.backbone": parts.BACKBONES,
    "model.adapter": parts.ADAPTERS,
    "model.prompt": parts.PROMPTS,
    "model.aggregator": parts.AGGREGATORS,
    "model.adapter_act": parts.ACTIVATIONS,
    "model.prompt_act": parts.ACTIVATIONS,
    "model.adapter_position": parts.ADAPTER_POSITIONS,
    "model.freeze": parts.FREEZE_MODES,
    "model.camera_tokens": parts.CAMERA_TOKENS,
    "model.ori_head": parts.ORI_HEADS,
    "model.ma_init": parts.MA_INITS,
    "model.scan_backend": parts.SCAN_BACKENDS,
    "test.neck_feat": parts.NECK_FEATS,
    "test.feature": parts.TEST_FEATURES,
}


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


# --------------------------------------------------------------------------- lazy entries


def test_every_registered_name_is_expected() -> None:
    assert {(f, n) for f, r in REGISTRIES.items() for n in r.names()} == set(EXPECTED)


@pytest.mark.parametrize(("family", "name"), list(EXPECTED), ids="/".join)
def test_lazy_entries_resolve_to_the_constructors(family: str, name: str) -> None:
    registry = REGISTRIES[family]
    target = registry.target(name)
    assert target is not None and ":" in target  # every model part is a lazy entry
    assert registry.get(name) is EXPECTED[(family, name)]
    assert registry.is_loaded(name) and registry.get(name.upper()) is EXPECTED[(family, name)]


def test_the_torch_packages_re_export_the_same_registries() -> None:
    assert models.BACKBONES is backbone.BACKBONES is parts.BACKBONES
    assert models.ADAPTERS is parts.ADAPTERS and models.PROMPTS is parts.PROMPTS
    assert aggregation.AGGREGATORS is aggregation.base.AGGREGATORS is parts.AGGREGATORS
    assert isinstance(make_act("quick_gelu"), QuickGELU) and type(make_act("gelu")) is nn.GELU
    with pytest.raises(ValueError, match="unknown activation 'relu'; choose one of: quick_gelu, gelu"):
        make_act("relu")


@pytest.mark.parametrize("name", parts.BACKBONES.names())
def test_backbone_info_is_what_the_constructor_builds(name: str) -> None:
    info = parts.BACKBONES.info(name)
    with torch.device("meta"):  # a 4 x 2 grid of the backbone's patches
        encoder = parts.BACKBONES.build(name, (4 * info.patch_size, 2 * info.patch_size), None)
    assert (encoder.num_layers, encoder.patch_size) == (info.layers, info.patch_size)


def test_names_import_nothing_and_get_imports_on_first_use() -> None:
    out = _run(
        "import sys\n"
        "from mambapro import config, parts\n"
        "regs = (parts.BACKBONES, parts.ADAPTERS, parts.PROMPTS, parts.AGGREGATORS, parts.ACTIVATIONS)\n"
        "names = [n for r in regs for n in r.names()]\n"
        "infos = [parts.BACKBONES.info(n) for n in parts.BACKBONES.names()]\n"
        "assert 'ma' in parts.AGGREGATORS and not parts.AGGREGATORS.is_loaded('ma')\n"
        "config.load_config('demo', ['model.aggregator=inter_ma', 'model.adapter=lora'])\n"
        "keys = [k for k in config.choices('model.scan_backend')]\n"
        "heavy = ('torch', 'timm', 'mambapro.models', 'mambapro.aggregation', 'mambapro.ops')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy)))\n"
        "parts.AGGREGATORS.get('sum')\n"
        "print(parts.AGGREGATORS.is_loaded('sum'), parts.AGGREGATORS.is_loaded('ma'),\n"
        "      'torch' in sys.modules, 'mambapro.aggregation' in sys.modules)\n"
    )
    before, after = out.splitlines()
    assert before == "[]"
    assert after == "True False True True"


def test_get_imports_once_and_names_a_broken_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "plugin_part.py").write_text(
        "IMPORTS = []\nIMPORTS.append(1)\ndef make():\n    return 'built'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "plugin_part", raising=False)
    reg: Registry = Registry("widgets")
    reg.register_lazy("Thing", "plugin_part:make", info={"size": 3})
    reg.register_lazy("broken", "plugin_part:missing")
    assert reg.names() == ["thing", "broken"] and reg.info("THING") == {"size": 3}
    assert "plugin_part" not in sys.modules
    assert reg.build("thing") == reg.build("thing") == "built"
    assert sys.modules["plugin_part"].IMPORTS == [1]
    with pytest.raises(ImportError, match=r"widgets 'broken': cannot load plugin_part:missing"):
        reg.get("broken")
    with pytest.raises(KeyError, match="unknown widgets 'nope'; choose one of: thing, broken"):
        reg.get("nope")
    with pytest.raises(KeyError, match="widgets: 'THING' is registered twice"):
        reg.register("THING")(len)
    with pytest.raises(ValueError, match="must look like 'package.module:attribute'"):
        reg.register_lazy("dotted", "plugin_part.make")
    reg.unregister("broken")
    assert reg.names() == ["thing"] and "broken" not in reg


# --------------------------------------------------------------------------- the config's choices


@pytest.mark.parametrize("key", list(SOURCES))
def test_config_choices_are_the_sources_names(key: str) -> None:
    source = SOURCES[key]
    assert config.choices(key) == (tuple(source.names()) if isinstance(source, Registry) else source)


def test_missing_settings_follow_the_datasets_modalities() -> None:
    # No fixed list: the settings are those of the dataset's modalities (7 for RGB, NI, TI).
    assert config.choices("test.missing") is None
    assert config.load_config(None, ["test.missing=-tn"]).test.missing == "NT"
    assert MISSING_SETTINGS == ("full", "R", "N", "T", "RN", "RT", "NT")
    assert config.load_config(None, ["data.dataset=rgbn300", "test.missing=n"]).test.missing == "N"
    with pytest.raises(config.ConfigError, match=r"'test.missing'.*'T'; choose one of: full, R, N \("):
        config.load_config(None, ["data.dataset=RGBN300", "test.missing=T"])


def test_no_name_list_is_left_in_the_config() -> None:
    for name in ("ADAPTERS", "ADAPTER_POSITIONS", "PROMPTS", "AGGREGATORS", "BACKBONES", "BACKBONE_LAYERS"):
        assert not hasattr(config, name), name
    assert config.choices("model.lora_rank") is None
    with pytest.raises(KeyError, match="unknown config key 'model.nope'"):
        config.choices("model.nope")


def test_unknown_names_are_refused_as_before() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^command line: 'model.aggregator' = 'mamba' is not one of: none, sum, concat, "
        r"transformer, intra_ma, inter_ma, ma, ma_transformer$",
    ):
        load_config(overrides=["model.aggregator=mamba"])
    with pytest.raises(ConfigError, match=r"^command line: 'model.backbone' = 'vit_l' is not one of: "):
        load_config(overrides=["model.backbone=vit_l"])
    with pytest.raises(
        ConfigError, match=r"^'model.prompt_layers' = \[4\]: the tiny backbone has layers 0..3$"
    ):
        load_config(overrides=["model.backbone=tiny", "model.prompt_layers=[4]"])
    with pytest.raises(ConfigError, match="positive multiples of the patch size 16"):
        load_config(overrides=["data.img_size=[100,64]"])


def test_a_part_registered_later_is_a_config_value_with_no_second_edit() -> None:
    parts.AGGREGATORS.register_lazy("sum_again", "mambapro.aggregation:sum_aggregator")
    parts.BACKBONES.register_lazy("tiny2", "mambapro.models.backbone:tiny", info=BackboneInfo(layers=2))
    try:
        cfg = load_config("demo", ["model.aggregator=Sum_Again", "model.backbone=tiny2"])
        assert (cfg.model.aggregator, cfg.model.backbone) == ("sum_again", "tiny2")
        assert isinstance(build_aggregator("sum_again", dim=8, grid=(2, 2)), SumAggregator)
        with pytest.raises(ConfigError, match="the tiny2 backbone has layers 0..1"):
            load_config("demo", ["model.backbone=tiny2", "model.adapter_layers=[2]"])
    finally:
        parts.AGGREGATORS.unregister("sum_again")
        parts.BACKBONES.unregister("tiny2")
    with pytest.raises(ConfigError, match="'model.aggregator' = 'sum_again' is not one of"):
        load_config(overrides=["model.aggregator=sum_again"])


# --------------------------------------------------------------------------- MASettings


def test_ma_settings_cover_the_ma_keys_and_agree_with_the_config_defaults() -> None:
    ma_keys = {f.name for f in dataclasses.fields(ModelConfig) if f.name.startswith("ma_")}
    assert set(MASettings.CONFIG_KEYS.values()) == ma_keys | {"scan_backend"}
    assert list(MASettings.CONFIG_KEYS) == [f.name for f in dataclasses.fields(MASettings)]
    # The only difference: outside a config the reference scan; a config picks it (auto).
    assert MASettings.from_config(ModelConfig()) == MASettings(scan_backend="auto")


def test_ma_settings_round_trip_through_a_config() -> None:
    settings = MASettings(
        depth=1, d_state=4, dt_rank=8, expand=3, bidirectional=True, init="mamba", scan_backend="hop"
    )
    overrides = [f"model.{key}={json.dumps(value)}" for key, value in settings.config_items().items()]
    cfg = load_config("demo", overrides)
    assert MASettings.from_config(cfg.model) == settings
    assert MASettings.from_config(cfg.model).config_items() == settings.config_items()


def test_ma_settings_check_their_values() -> None:
    with pytest.raises(ValueError, match="^depth = 0 must be a positive integer$"):
        MASettings(depth=0)
    with pytest.raises(ValueError, match="^MA init = 'xavier' is not one of: release, mamba$"):
        MASettings(init="xavier")
    with pytest.raises(
        ValueError, match=r"^build_aggregator\('ma'\): expand = 0 must be a positive integer$"
    ):
        build_aggregator("ma", expand=0)
    with pytest.raises(TypeError):
        build_aggregator("ma", ma_depth=1)  # attributes, not config keys
    assert MASettings().replace() == MASettings() and MASettings().replace(depth=1).depth == 1


def test_the_model_gets_the_configs_settings_whole() -> None:
    cfg = load_config(
        "demo", ["data.img_size=[32,32]", "model.ma_depth=1", "model.ma_d_state=4", "model.ma_init=mamba"]
    )
    model = build_model(cfg, num_classes=3, num_cameras=2)
    assert model.aggregator.settings == MASettings.from_config(cfg.model)
    assert len(model.aggregator.blocks) == 1 and model.aggregator.init == "mamba"
    assert model.aggregator.blocks[0].parts[1].ssm.forward_ssm.d_state == 4


@pytest.mark.parametrize("name", ["ma", "intra_ma", "transformer"])
def test_settings_object_and_keyword_changes_build_the_same_module(name: str) -> None:
    settings = MASettings(depth=1, d_state=4, dt_rank=4, expand=2)
    torch.manual_seed(0)
    whole = build_aggregator(name, dim=16, grid=(2, 2), ma=settings)
    torch.manual_seed(0)
    changed = build_aggregator(name, dim=16, grid=(2, 2), depth=1, d_state=4, dt_rank=4, expand=2)
    a, b = whole.state_dict(), changed.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
