"""The DINO presets (beyond the paper): each is its dataset preset with the encoder swapped.

``{rgbnt201,rgbnt100,msvr310}_{dinov2,dinov3}`` must resolve the image size by the patch rule
(252x126 for DINOv2 on RGBNT201), name their encoder, differ from their base only in the keys
docs/FIDELITY.md documents under "Beyond the paper: DINO backbones" (whose table is checked
here against every preset), and report the backbone's MACs that a hand formula gives. Their
trainable parameters per part are in ``EXPECTED_TRAINABLE`` of ``test_engine_e2e.py``, with
every other preset.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mambapro.config import config_diff, config_to_dict, load_config
from mambapro.reports.params import backbone_macs, flops_report

ROOT = Path(__file__).resolve().parents[1]
BASES = ("rgbnt201", "rgbnt100", "msvr310")
ENCODERS = {"dinov2": "dinov2_vitb14", "dinov3": "dinov3_vitb16"}
PRESETS = [f"{base}_{dino}" for base in BASES for dino in ENCODERS]
#: (H, W) each preset resolves: the dataset's size, each side rounded to a multiple of the patch.
SIZES = {
    "rgbnt201_dinov2": (252, 126),
    "rgbnt100_dinov2": (126, 252),
    "msvr310_dinov2": (126, 252),
    "rgbnt201_dinov3": (256, 128),
    "rgbnt100_dinov3": (128, 256),
    "msvr310_dinov3": (128, 256),
}
#: Everything a DINO preset may change in its base; the rest is the release's recipe.
CHANGED = {"model.backbone", "model.ma_dt_rank", "data.mean", "data.std", "train.output"}


def _fidelity_rows() -> list[dict[str, str]]:
    """Rows of the table under "## Beyond the paper: DINO backbones" in docs/FIDELITY.md."""
    text = (ROOT / "docs" / "FIDELITY.md").read_text()
    section = text.split("## Beyond the paper: DINO backbones\n", 1)[1].splitlines()
    table = section[next(i for i, ln in enumerate(section) if ln.startswith("|")) :]
    table = table[: next((i for i, ln in enumerate(table) if not ln.startswith("|")), len(table))]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in table[2:]]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_names_its_encoder_and_resolves_the_patch_size(preset: str) -> None:
    cfg = load_config(preset)
    base, dino = preset.rsplit("_", 1)
    assert cfg.model.backbone == ENCODERS[dino]
    assert cfg.img_size() == SIZES[preset]
    assert cfg.data.img_size is None  # the rule decides, as it does for the base
    assert cfg.data.dataset == load_config(base).data.dataset
    assert cfg.train.output == f"runs/{preset}"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_changes_only_the_documented_keys_of_its_base(preset: str) -> None:
    base = preset.rsplit("_", 1)[0]
    text = yaml.safe_load((ROOT / "configs" / f"{preset}.yaml").read_text())
    assert text["_base_"] == f"{base}.yaml"
    changed = config_diff(config_to_dict(load_config(base)), config_to_dict(load_config(preset)))
    keys = {line.split(":", 1)[0].strip() for line in changed}
    assert keys == CHANGED, changed


def test_fidelity_table_holds_every_dino_preset() -> None:
    rows = _fidelity_rows()
    assert len(rows) >= 10
    wrong = []
    for preset in PRESETS:
        cfg = load_config(preset)
        text = yaml.safe_load((ROOT / "configs" / f"{preset}.yaml").read_text())
        for r in rows:
            key = r["key"].strip("`")
            if key == "_base_":
                actual = text["_base_"].removesuffix(".yaml")
            elif key == "img_size()":
                actual = list(cfg.img_size())
            else:
                section, name = key.split(".")
                actual = getattr(getattr(cfg, section), name)
            documented = yaml.safe_load(r[f"`{preset}`"])
            if documented != actual:
                wrong.append(
                    f"{preset} {r['choice']} ({key}): FIDELITY.md says {documented!r}, got {actual!r}"
                )
    assert not wrong, "\n".join(wrong)


def _encoder_macs(tokens: int, patches: int, patch: int, prompts: int, d: int = 768, layers: int = 12) -> int:
    """One image through a ViT-B without projection: the patch embedding, then per block the
    four D x D projections and the 4D MLP (12 D^2 per token) and attention's two L x L products
    (2 L^2 D) over the image's tokens plus the appended prompt tokens."""
    seq = tokens + prompts
    return patches * 3 * patch * patch * d + layers * (12 * d * d * seq + 2 * seq * seq * d)


@pytest.mark.parametrize(
    ("preset", "tokens", "patches", "patch", "registers"),
    [("rgbnt201_dinov2", 163, 18 * 9, 14, 0), ("msvr310_dinov3", 133, 8 * 16, 16, 4)],
)
def test_backbone_macs_match_the_hand_count(
    preset: str, tokens: int, patches: int, patch: int, registers: int
) -> None:
    macs = backbone_macs(load_config(preset))
    assert (macs["tokens"], macs["registers"], macs["prompt_tokens"], macs["prompt_layers"]) == (
        tokens,
        registers,
        12,  # SRP-Fusion: 4 prompt tokens of each of the 3 modalities in every image's sequence
        12,
    )
    # Element-wise work (norms, LayerScale, rotary embedding, activations) is not counted.
    assert macs["encoder"] == 3 * _encoder_macs(tokens, patches, patch, prompts=12)
    assert macs["adapters"] == 3 * 12 * (tokens + 12) * 2 * 768 * 1536  # PFA: D -> 2D -> D
    assert macs["total"] == macs["encoder"] + macs["adapters"] + macs["prompts"]


def test_flops_report_leads_with_the_backbone() -> None:
    lines = flops_report(load_config("rgbnt201_dinov2")).splitlines()
    assert lines[0].startswith(
        "backbone dinov2_vitb14 at 252x126: 3 modalities x 163 tokens (cls + 18x9 patches)"
    )
    assert lines[1].split() == ["part", "GMACs", "per", "image"]
    assert [ln.split()[0] for ln in lines[2:6]] == ["encoder", "adapters", "prompts", "total"]
    assert any(ln.startswith("aggregators at C = 512") for ln in lines)
