"""``mambapro params`` counts the model of the dataset's modalities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mambapro.config import load_config
from mambapro.errors import ConfigError
from mambapro.reports.params import format_parameter_report, parameter_report

FOUR = """\
name: FourBand
folder: four_band
splits: {train: train, query: query, gallery: gallery}
structure: modality_folders
modalities:
  - {key: RGB, folder: rgb}
  - {key: NI, folder: nir}
  - {key: TI, folder: tir}
  - {key: D, folder: depth}
name_pattern: '^(?P<pid>\\d{4})_c(?P<cam>\\d)_'
name_rule: PPPP_cC_SSS.jpg
camera_base: 1
max_cameras: 6
img_size: [256, 128]
protocol: same_camera
subject: person
"""


def _report(dataset: str) -> dict:
    cfg = load_config("demo", [f"data.dataset={dataset}", "data.synthetic=false"])
    return parameter_report(cfg, num_classes=10, num_cameras=3)


def test_parameter_counts_follow_the_datasets_modalities(tmp_path: Path) -> None:
    spec = tmp_path / "four.yaml"
    spec.write_text(FOUR)
    reports = {m: _report(d) for m, d in ((2, "RGBN300"), (3, "RGBNT201"), (4, str(spec)))}
    assert [reports[m]["modalities"] for m in (2, 3, 4)] == [
        ["RGB", "NI"], ["RGB", "NI", "TI"], ["RGB", "NI", "TI", "D"],
    ]  # fmt: skip
    # The heads (ori: M·C wide, fuse: the aggregator's M·C) grow in proportion to M; the shared
    # encoder and the camera table do not depend on it.
    heads = {m: r["parts"]["heads"]["total"] for m, r in reports.items()}
    assert heads[2] * 3 == heads[3] * 2 and heads[4] * 3 == heads[3] * 4
    for part in ("backbone", "camera"):
        assert len({r["parts"][part]["total"] for r in reports.values()}) == 1, part
    assert reports[2]["total"] < reports[3]["total"] < reports[4]["total"]
    # The paper's RGB, NI, TI print as always; other sets are named.
    assert (
        format_parameter_report(reports[3]).splitlines()[0] == "parameters at 128x64, 10 classes, 3 cameras"
    )
    assert format_parameter_report(reports[2]).splitlines()[0].endswith(", 3 cameras, modalities RGB+NI")
    assert format_parameter_report(reports[4]).splitlines()[0].endswith(", modalities RGB+NI+TI+D")


@pytest.mark.parametrize("dataset", ["RGBNT201", "RGBN300"])
def test_cli_params_for_a_dataset(dataset: str, cli) -> None:
    proc = cli(["params", "--config", "demo", f"data.dataset={dataset}", "data.synthetic=false"])
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.endswith("modalities RGB+NI") == (dataset == "RGBN300")


def test_a_dataset_without_a_published_identity_count_needs_classes() -> None:
    cfg = load_config("wmveid863")
    with pytest.raises(ConfigError, match=r"^WMVEID863 publishes no training identity count.*--classes N"):
        parameter_report(cfg)
    report = parameter_report(cfg, num_classes=600)
    assert report["num_classes"] == 600 and report["num_cameras"] == 8
    # One more identity is one more row of each bias-free classifier: the per-modality ori head's
    # (C = 512 wide, the vehicle recipe) and the fuse head's (MA's 3·C).
    more = parameter_report(cfg, num_classes=601)["parts"]["heads"]["total"]
    assert cfg.model.ori_head == "per_modality"
    assert more - report["parts"]["heads"]["total"] == 512 + 3 * 512


def test_cli_params_classes_cameras_and_json_flops(cli) -> None:
    proc = cli(["params", "--config", "wmveid863"])
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "mambapro params: error: WMVEID863 publishes no training identity count, which sets the "
        "classifiers' width: give --classes N (the identities of your copy's train split, as "
        "`mambapro check-data` counts them)"
    ]
    proc = cli(["params", "--config", "demo", "--classes", "7", "--cameras", "2", "--json", "--flops"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # one JSON object, the MAC tables inside it
    assert (report["num_classes"], report["num_cameras"]) == (7, 2)
    assert report["flops"]["backbone"]["total"] == sum(
        report["flops"]["backbone"][k] for k in ("encoder", "adapters", "prompts")
    )
    rows = {(r["aggregator"], r["depth"]): r for r in report["flops"]["aggregators"]}
    # The JSON rows are the text table's: same parameters and MACs (the paper's numbers beside).
    text = cli(["params", "--config", "demo", "--classes", "7", "--flops"]).stdout
    ma2 = next(line for line in text.splitlines() if line.split()[:2] == ["ma", "2"])
    assert int(ma2.split()[2].replace(",", "")) == rows[("ma", 2)]["params"]
    assert float(ma2.split()[3]) == pytest.approx(rows[("ma", 2)]["macs"] / 1e9, abs=5e-4)
    assert rows[("ma", 1)]["paper_params_m"] == 9.47 and rows[("ma", 2)]["paper_params_m"] is None
    proc = cli(["params", "--config", "demo", "--classes", "0"])
    assert proc.returncode == 2 and "argument --classes: must be at least 1, got 0" in proc.stderr
