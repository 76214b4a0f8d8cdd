"""The shipped ablation presets (Tables 3, 4, 5, 6, 8, 9, 11) load, quote their paper row, and build
backbones whose trainable parameters are the exact integers of the paper's Table 3."""

from __future__ import annotations

import pytest
import torch

from mambapro.config import PRESETS_DIR, load_config
from mambapro.models import build_backbone

ABLATIONS = PRESETS_DIR / "ablations"

CLIP_F = 86_140_416
PFA_12 = 28_339_200
SRP_12 = 28_477_440
VIT_F = 85_798_656 - 68 * 768  # timm's vit_base_patch16_224 without its classifier, at 129 positions

#: file stem -> (aggregator, trainable parameters of backbone + adapters + prompts)
EXPECTED = {
    "table3_A_clip_l": ("none", 0),
    "table3_B_clip_f": ("none", CLIP_F),
    "table3_C_clip_l_pfa": ("none", PFA_12),
    "table3_D_clip_l_srp": ("none", SRP_12),
    "table3_E_clip_l_pfa_srp": ("none", PFA_12 + SRP_12),
    "table3_F_clip_l_pfa_srp_ma": ("ma", PFA_12 + SRP_12),
    "table3_G_clip_f_pfa_srp_ma": ("ma", CLIP_F + PFA_12 + SRP_12),
    "table4_ip": ("none", 12 * 9_216),
    "table4_sp": ("none", 12 * 1_782_144),
    "table4_srp_separation": ("none", 12 * 3_555_072),
    "table4_srp_fusion": ("none", 12 * 2_373_120),
    "table5_lora_r64": ("none", 12 * 98_304),
    "table5_lora_r256": ("none", 12 * 393_216),
    "table5_lora_r384": ("none", 12 * 589_824),
    "table5_bna": ("none", 12 * 590_976),
    "table5_pfa": ("none", 12 * 2_361_600),
    "table8_side_ffn": ("none", PFA_12),
    "table8_behind_ffn": ("none", PFA_12),
    "table8_side_mhsa": ("none", PFA_12),
    "table8_behind_mhsa": ("none", PFA_12),
    "table9_vit_l": ("ma", PFA_12 + SRP_12),
    "table9_vit_f": ("ma", VIT_F + PFA_12 + SRP_12),
    "table9_clip_l": ("ma", PFA_12 + SRP_12),
    "table9_clip_f": ("ma", CLIP_F + PFA_12 + SRP_12),
    # Tables 6 and 11 vary only the aggregator (its counts are tested in test_aggregation.py).
    "table6_sum": ("sum", PFA_12 + SRP_12),
    "table6_concat": ("concat", PFA_12 + SRP_12),
    "table6_transformer": ("transformer", PFA_12 + SRP_12),
    "table6_intra_ma": ("intra_ma", PFA_12 + SRP_12),
    "table6_inter_ma": ("inter_ma", PFA_12 + SRP_12),
    "table6_ma": ("ma", PFA_12 + SRP_12),
    "table11_ma_mamba": ("ma", PFA_12 + SRP_12),
    "table11_ma_trans": ("ma_transformer", PFA_12 + SRP_12),
}


def test_every_table_row_has_a_preset_and_nothing_else_is_shipped() -> None:
    assert sorted(p.stem for p in ABLATIONS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_preset_builds_the_papers_configuration(stem: str) -> None:
    path = ABLATIONS / f"{stem}.yaml"
    lines = path.read_text().splitlines()
    table = stem.split("_")[0].replace("table", "Table ")
    assert lines[0].startswith(f"# {table}, row "), lines[0]
    assert "_base_: ../rgbnt201.yaml" in lines

    cfg = load_config(path)
    assert cfg.data.dataset == "RGBNT201" and cfg.img_size() == (256, 128)
    aggregator, trainable = EXPECTED[stem]
    assert cfg.model.aggregator == aggregator
    with torch.device("meta"):
        backbone = build_backbone(cfg.model, cfg.img_size(), num_cameras=4)
    parts = backbone.parameter_parts()
    got = sum(p.numel() for k in ("backbone", "adapters", "prompts") for p in parts[k] if p.requires_grad)
    assert got == trainable
