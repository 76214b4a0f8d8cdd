"""Missing modalities outside ``test``: ``extract --missing`` (a gallery without a modality) and
``search --missing`` (queries without one, against any gallery: any-to-any retrieval)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TinyRun
from mambapro.data import dataset_from_config
from mambapro.errors import ConfigError
from mambapro.modalities import RGB_NI_TI, ModalitySet
from mambapro.retrieval.features import FeatureSet, eval_loader, extract_features, run_extract
from mambapro.train.checkpoint import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("text", "setting"),
    [("full", "full"), ("t", "T"), ("-nr", "RN"), ("NI+TI", "R"), ("ti", "RN"), ("rgb+ni+ti", "full")],
)
def test_one_setting_by_missing_letters_or_present_modalities(text: str, setting: str) -> None:
    assert RGB_NI_TI.parse_setting(text) == setting


def test_a_setting_that_names_no_subset_is_refused_naming_both_forms() -> None:
    with pytest.raises(
        ConfigError, match=r"'RNT'; choose one of: full, R, N, T, RN, RT, NT .* or a subset by"
    ):
        RGB_NI_TI.parse_setting("RNT")  # every modality missing
    with pytest.raises(ConfigError, match="names RGB twice"):
        RGB_NI_TI.parse_setting("RGB+RGB")
    duo = ModalitySet.of(("RGB", "TI"))
    assert duo.parse_setting("TI") == "R" and duo.settings == ("full", "R", "T")
    with pytest.raises(ConfigError, match="unknown modality 'NI'"):
        duo.parse_setting("RGB+NI")


def test_extract_missing_gives_test_s_features_and_records_the_modalities(
    tiny_run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "night.npz"
    feats = run_extract(tiny_run.checkpoint, tiny_run.tree, "gallery", out, quiet=True, missing="NI+TI")
    assert (
        f"8 gallery features of dimension 384 from NI+TI (RGB zeroed) written to {out}"
        in capsys.readouterr().out
    )
    stored = FeatureSet.load(out)
    assert stored.identity["modalities"] == "NI+TI" and stored.identity["modality_set"] == "RGB+NI+TI"
    # The features `test --missing R` evaluates, made here the way testing.py makes them.
    model, cfg, _ = load_model(tiny_run.checkpoint, extra={"data": {"root": str(tiny_run.tree)}})
    ds = dataset_from_config(cfg.data, generate=False)
    reference = extract_features(
        model, eval_loader(cfg, ds.gallery, ds.spec, "R"), next(model.parameters()).device
    )
    np.testing.assert_array_equal(stored.feats, reference.feats)
    np.testing.assert_array_equal(feats.feats, reference.feats)
    full = FeatureSet.load(tiny_run.gallery)
    assert full.identity["modalities"] == "RGB+NI+TI" and full.paths == stored.paths
    assert np.abs(full.feats - stored.feats).max() > 1e-3  # RGB did count


def _cell(image: Path, row: int) -> np.ndarray:
    """The query thumbnail (first column) of rank-list row ``row``, as search.py lays it out."""
    a = np.asarray(Image.open(image).convert("RGB")).astype(int)
    label_h, gap, border, thumb_h = 14, 6, 4, 96
    x = 28 + gap + border
    y = label_h + gap + row * (thumb_h + 2 * border + gap) + border
    return a[y + 10 : y + thumb_h - 10, x + 10 : x + 30]


def test_search_missing_embeds_the_queries_without_them(tiny_run: TinyRun, tmp_path: Path, cli) -> None:
    query = sorted((tiny_run.tree / "RGBNT201/test/RGB").iterdir())[0]
    runs = {}
    for missing in ("full", "RN"):
        out = tmp_path / f"{missing}.png"
        done = cli(["search", "-q", "--checkpoint", str(tiny_run.checkpoint), "--query", str(query),
                    "--gallery", str(tiny_run.gallery), "-k", "4", "--out", str(out),
                    "--missing", missing])  # fmt: skip
        assert done.returncode == 0, done.stderr
        runs[missing] = json.loads(out.with_suffix(".json").read_text())
    assert runs["full"]["query_modalities"] == "RGB+NI+TI" and runs["RN"]["query_modalities"] == "TI"
    full, thermal = (next(iter(r["queries"].values())) for r in (runs["full"], runs["RN"]))
    assert len(full) == len(thermal) == 4
    # A thermal-only query against the full gallery is another embedding: other distances.
    assert [m["distance"] for m in full] != [m["distance"] for m in thermal]
    # The rank list names the query's modalities and crosses out its unused RGB and NI images,
    # not its thermal one.
    label = np.asarray(Image.open(tmp_path / "RN.png").convert("L"))[:12]
    plain = np.asarray(Image.open(tmp_path / "full.png").convert("L"))[:12]
    assert (label < 128).sum() > (plain < 128).sum()  # "query: TI" is longer than "query"
    for row, used in ((0, False), (1, False), (2, True)):
        drawn, plain = _cell(tmp_path / "RN.png", row), _cell(tmp_path / "full.png", row)
        assert np.array_equal(drawn, plain) == used, row
        if not used:  # faded towards grey: the channels nearly agree
            assert np.abs(drawn - drawn.mean(axis=-1, keepdims=True)).max() <= 16
