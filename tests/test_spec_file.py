"""Dataset spec files: a user's own dataset described in YAML (``data.dataset: mydata.yaml``).

The loader against good files (the DatasetSpec they give, the defaults, the derived synthetic
file name, the cache), against every kind of bad file (one line naming the file and the field),
the config's use of it, and one run from a spec file through ``synth``, ``train`` and
``test --missing all`` on the command line.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from conftest import FAST
from mambapro.config import load_config
from mambapro.data.spec_file import FIELDS, adopt_spec_record, load_spec_file, spec_file_record
from mambapro.data.specs import dataset_spec
from mambapro.deploy.serve import SearchService, create_app
from mambapro.errors import ConfigError
from mambapro.modalities import ModalitySet
from mambapro.retrieval.index import GalleryIndex
from mambapro.train.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "dual_spectrum.yaml"

#: A complete two-modality spec (visible + thermal), as a user writes it.
GOOD = {
    "name": "DualSpectrum",
    "folder": "dual_spectrum",
    "splits": {"train": "train", "query": "query", "gallery": "gallery"},
    "structure": "modality_folders",
    "modalities": [{"key": "RGB", "folder": "visible"}, {"key": "TI", "folder": "thermal"}],
    "name_pattern": r"^(?P<pid>\d{4})_c(?P<cam>\d)_",
    "camera_base": 1,
    "max_cameras": 6,
    "img_size": [256, 128],
}


def write(folder: Path, data: object, name: str = "mydata.yaml") -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def changed(**fields: object) -> dict:
    """GOOD with ``fields`` replaced (a value of None removes the field)."""
    out = {**GOOD, **fields}
    return {k: v for k, v in out.items() if v is not None}


# ------------------------------------------------------------------------------- good files


def test_a_good_file_gives_its_dataset_spec(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    spec = load_spec_file(path)
    assert spec.name == "DualSpectrum" and spec.folder == "dual_spectrum"
    assert spec.splits == {"train": "train", "query": "query", "gallery": "gallery"}
    assert spec.structure == "modality_folders"
    assert spec.modality_folders == ("visible", "thermal")
    assert spec.modalities == ModalitySet.of(("RGB", "TI"))
    assert spec.modalities.letters == ("R", "T")
    assert spec.modalities.settings == ("full", "R", "T")
    assert (spec.camera_base, spec.max_cameras, spec.img_size) == (1, 6, (256, 128))
    assert not spec.has_scenes and spec.subject == "person"
    assert spec.junk_pids == (-1,) and spec.published_splits is None
    assert spec.published == (0, 6)
    assert spec.source == str(path.resolve())
    # The derived synthetic name is parsed back by the pattern, and the rule shows an example.
    assert spec.synth_name == "{pid:04d}_c{cam1}_{shot:03d}.jpg"
    m = re.search(spec.name_pattern, "0042_c3_001.jpg")
    assert (m["pid"], m["cam"]) == ("0042", "3")
    assert "0001_c1_000.jpg" in spec.name_rule and "camera 1..6" in spec.name_rule
    # The path resolves through the dataset lookup the rest of the package uses.
    assert dataset_spec(str(path)) is spec


def test_every_optional_field_is_read(tmp_path: Path) -> None:
    spec = load_spec_file(
        write(
            tmp_path,
            changed(
                folder="/abs/where",
                modalities=[
                    {"key": "RGB", "letter": "v", "name": "visible", "folder": "vis"},
                    {"key": "NI", "folder": "nir"},
                    {"key": "TI", "folder": "lwir"},
                    {"key": "D", "folder": "depth"},
                ],
                name_pattern=r"^(?P<pid>\d{4})_s(?P<scene>\d{3})_c(?P<cam>\d)",
                name_rule="PPPP_sSSS_cC",
                camera_base=0,
                protocol="same_scene",
                subject="vehicle",
                junk_pids=[-1, 0],
                published_splits={"train": [100, 2000, 6], "gallery": [50, 900, 6]},
                synth_name="{pid:04d}_s{scene1:03d}_c{cam}_{shot:02d}.png",
                source="the dataset's paper, table 1",
            ),
        )
    )
    assert spec.folder == "/abs/where"
    assert spec.modalities.keys == ("RGB", "NI", "TI", "D")
    assert spec.modalities.letters == ("V", "N", "T", "D")
    assert spec.modalities.names[0] == "visible" and spec.modalities.names[1] == "near-infrared"
    assert spec.modality_folders == ("vis", "nir", "lwir", "depth")
    assert spec.has_scenes and spec.subject == "vehicle" and spec.camera_base == 0
    assert spec.junk_pids == (-1, 0)
    assert spec.published_splits == {"train": (100, 2000, 6), "gallery": (50, 900, 6)}
    assert spec.published == (100, 6)
    assert spec.synth_name == "{pid:04d}_s{scene1:03d}_c{cam}_{shot:02d}.png"
    assert spec.name_rule == "PPPP_sSSS_cC"
    assert spec.source == "the dataset's paper, table 1"


def test_short_forms_side_by_side_and_id_folders(tmp_path: Path) -> None:
    # A modality may be its key alone; its folder is then the key, the dataset's folder the name.
    spec = load_spec_file(write(tmp_path, changed(folder=None, modalities=["RGB", "TI"])))
    assert spec.folder == "DualSpectrum" and spec.modality_folders == ("RGB", "TI")
    panels = load_spec_file(
        write(tmp_path, changed(structure="side_by_side", modalities=["NI", "RGB"]), "p.yaml")
    )
    assert panels.side_by_side and panels.modality_folders == ()
    assert panels.modalities.keys == ("NI", "RGB")  # the panel order, left to right
    ids = load_spec_file(write(tmp_path, changed(structure="id_folders"), "i.yaml"))
    assert ids.structure == "id_folders" and ids.modality_folders == ("visible", "thermal")


def test_the_shipped_example_loads(tmp_path: Path) -> None:
    spec = load_spec_file(EXAMPLE)
    assert spec.name == "DualSpectrum" and str(spec.modalities) == "RGB+TI"
    assert spec.modality_folders == ("visible", "thermal")
    assert spec.synth_name  # `mambapro synth` can write it without a synth_name


def test_a_pattern_the_derivation_cannot_invert_needs_synth_name_only_for_synth(tmp_path: Path) -> None:
    # The shot number cannot follow an end-anchored extension: no template is derived...
    pattern = r"(?P<pid>\d+)-(?P<cam>\d+)\.png$"
    spec = load_spec_file(write(tmp_path, changed(name_pattern=pattern)))
    assert spec.synth_name == "" and pattern in spec.name_rule
    # ...and one given by hand is checked against the pattern.
    given = load_spec_file(
        write(tmp_path, changed(name_pattern=pattern, synth_name="s{shot}_{pid}-{cam1}.png"), "b.yaml")
    )
    assert given.synth_name == "s{shot}_{pid}-{cam1}.png"


def test_loads_are_cached_until_the_file_changes(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    first = load_spec_file(path)
    assert load_spec_file(str(path)) is first
    assert load_spec_file(tmp_path / "." / path.name) is first  # the same resolved file
    write(tmp_path, changed(max_cameras=8))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    second = load_spec_file(path)
    assert second is not first and second.max_cameras == 8
    # A bad file is not cached: once fixed it loads.
    write(tmp_path, changed(max_cameras=0))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    with pytest.raises(ConfigError, match="max_cameras"):
        load_spec_file(path)
    write(tmp_path, GOOD)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 3_000_000_000))
    assert load_spec_file(path).max_cameras == 6


def test_a_stored_copy_answers_only_while_the_file_is_absent(tmp_path: Path) -> None:
    path = write(tmp_path, changed(max_cameras=5))
    record = spec_file_record(path)
    assert record == {"path": str(path.resolve()), "text": path.read_text()}
    # The file exists: it is used as it is, whatever the copy says.
    write(tmp_path, changed(max_cameras=7))
    assert adopt_spec_record(record, "run/last.ckpt") is False
    assert load_spec_file(path).max_cameras == 7
    path.unlink()
    with pytest.raises(ConfigError, match="not found"):
        load_spec_file(path)
    assert adopt_spec_record(record, "run/last.ckpt") is True
    assert load_spec_file(path).max_cameras == 5 and load_spec_file(path).modalities.keys == ("RGB", "TI")
    # A file that appears again wins over the copy.
    write(tmp_path, changed(max_cameras=3))
    assert load_spec_file(path).max_cameras == 3


def test_a_damaged_stored_copy_names_the_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^run/last.ckpt: its stored dataset spec is damaged"):
        adopt_spec_record({"text": "name: x"}, "run/last.ckpt")
    bad = {"path": str(tmp_path / "gone.yaml"), "text": yaml.safe_dump(changed(max_cameras=0))}
    with pytest.raises(ConfigError, match=r"gone.yaml \(the copy stored in run/last.ckpt\): max_cameras"):
        adopt_spec_record(bad, "run/last.ckpt")


# -------------------------------------------------------------------------------- bad files

#: (id, the file's content: a mapping or raw text, the message after "dataset spec file PATH")
BAD = [
    ("missing-field", changed(img_size=None), r": img_size: missing \(\[H, W\].*required: name, splits"),
    (
        "unknown-field",
        changed(colour="red"),
        r": colour: unknown field; the fields are: name, folder, splits",
    ),
    (
        "unknown-modality-field",
        changed(modalities=[{"key": "RGB", "fodler": "v"}, {"key": "TI"}]),
        r": modalities\[0\]\.fodler: unknown field; the fields are: key, letter, name, folder",
    ),
    (
        "modality-without-key",
        changed(modalities=[{"folder": "v"}, {"key": "TI"}]),
        r": modalities\[0\]\.key: missing",
    ),
    (
        "bad-regex",
        changed(name_pattern=r"^(?P<pid>\d{4}_c(?P<cam>\d)"),
        r": name_pattern: .* is not a regular expression: missing \), unterminated subpattern",
    ),
    (
        "pattern-without-cam",
        changed(name_pattern=r"^(?P<pid>\d{4})_c\d"),
        r": name_pattern: .* lacks the named group\(s\) \(\?P<cam>\.\.\.\)",
    ),
    (
        "same-scene-without-scene-group",
        changed(protocol="same_scene"),
        r": name_pattern: .* lacks the named group\(s\) \(\?P<scene>\.\.\.\) \(protocol same_scene\)",
    ),
    (
        "one-modality",
        changed(modalities=[{"key": "RGB"}]),
        r": modalities: a dataset has 2 to 4 modalities, got 1",
    ),
    (
        "five-modalities",
        changed(modalities=["A", "B", "C", "D", "E"]),
        r": modalities: .*2 to 4 modalities, got 5",
    ),
    (
        "modalities-not-a-list",
        changed(modalities="RGB+TI"),
        r": modalities: must be a list of 2 to 4 entries, got str",
    ),
    (
        "same-folder",
        changed(modalities=[{"key": "RGB", "folder": "img"}, {"key": "TI", "folder": "img"}]),
        r": modalities\[1\]\.folder: RGB and TI have the same folder 'img'",
    ),
    (
        "same-key",
        changed(modalities=[{"key": "RGB", "folder": "a"}, {"key": "rgb", "folder": "b"}]),
        r": modalities\[1\]\.key: RGB and rgb have the same key 'RGB'",
    ),
    (
        "same-letter",
        changed(modalities=[{"key": "TI", "folder": "a"}, {"key": "Thermal2", "folder": "b"}]),
        r": modalities\[1\]\.letter: TI and Thermal2 have the same letter 'T'; give one of them another",
    ),
    (
        "bad-modality-key",
        changed(modalities=[{"key": "RGB"}, {"key": "thermal ir"}]),
        r": modalities: modality key 'thermal ir' must be 1-16 letters",
    ),
    (
        "folder-with-side-by-side",
        changed(structure="side_by_side"),
        r": modalities\[0\]\.folder: a side_by_side dataset has no modality folders",
    ),
    (
        "bad-structure",
        changed(structure="flat"),
        r": structure: 'flat' is not one of: modality_folders, side_by_side, id_folders",
    ),
    (
        "img-size-one-number",
        changed(img_size=[256]),
        r": img_size: \[256\] must be \[H, W\], two positive integers",
    ),
    ("img-size-negative", changed(img_size=[256, -1]), r": img_size: \[256, -1\] must be \[H, W\]"),
    ("img-size-text", changed(img_size="256x128"), r": img_size: '256x128' must be \[H, W\]"),
    (
        "bad-protocol",
        changed(protocol="market"),
        r": protocol: 'market' is not one of: same_camera, same_scene",
    ),
    ("bad-subject", changed(subject="cat"), r": subject: 'cat' is not one of: person, vehicle"),
    ("camera-base-text", changed(camera_base="one"), r": camera_base: must be an integer >= 0, got 'one'"),
    ("no-cameras", changed(max_cameras=0), r": max_cameras: must be an integer >= 1, got 0"),
    ("splits-lacks-gallery", changed(splits={"train": "a", "query": "b"}), r": splits\.gallery: missing"),
    (
        "splits-unknown",
        changed(splits={"train": "a", "query": "b", "gallery": "c", "val": "d"}),
        r": splits\.val: unknown split",
    ),
    (
        "empty-split-folder",
        changed(splits={"train": "", "query": "b", "gallery": "c"}),
        r": splits\.train: must be a non-empty text",
    ),
    ("bad-name", changed(name="my data/set"), r": name: 'my data/set' must be 1-64 letters"),
    ("registered-name", changed(name="rgbnt201"), r": name: 'rgbnt201' is the registered dataset RGBNT201"),
    ("bad-junk-pids", changed(junk_pids=-1), r": junk_pids: -1 must be a list of integers"),
    (
        "bad-published-splits",
        changed(published_splits={"train": [100, 6]}),
        r": published_splits\.train: \[100, 6\] must be \[identities, captures, cameras\]",
    ),
    (
        "synth-name-not-parsed-back",
        changed(synth_name="{pid}_{cam1}_{shot}.jpg"),
        r": synth_name: .* gives '1_1_0\.jpg' for pid 1, camera index 0, shot 0, which name_pattern does not",
    ),
    (
        "synth-name-without-shot",
        changed(synth_name="{pid:04d}_c{cam1}_.jpg"),
        r": synth_name: .* the same name as for \(1, 0, 0\) \(use \{shot\}\)",
    ),
    (
        "synth-name-unknown-field",
        changed(synth_name="{id}_{cam}.jpg"),
        r": synth_name: .* not a template of the fields pid, cam",
    ),
    ("not-yaml", "name: [DualSpectrum\nfolder: x\n", r":\d+:\d+: not valid YAML: "),
    (
        "double-quoted-regex",
        'name_pattern: "^(?P<pid>\\d{4})"\n',
        r":1:\d+: not valid YAML: found unknown escape character 'd' \(write regular expressions in single",
    ),
    ("a-list", "- name: DualSpectrum\n", r": must be a mapping of fields \(name, folder, .*\), it is a list"),
    ("empty", "", r": must be a mapping of fields .*, it is empty"),
]


@pytest.mark.parametrize("content, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_file_is_one_line_naming_the_file_and_the_field(
    tmp_path: Path, content: object, message: str
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load_spec_file(path)
    text = str(info.value)
    assert "\n" not in text
    assert re.match(re.escape(f"dataset spec file {path}") + message, text), text


def test_a_file_that_is_absent_or_a_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^dataset spec file not found: .*nothere\.yaml \(/"):
        load_spec_file(tmp_path / "nothere.yaml")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"^dataset spec file .*dir\.yaml is a folder, not a file$"):
        load_spec_file(tmp_path / "dir.yaml")


def test_the_documented_fields_are_the_example_s_and_the_guide_s() -> None:
    doc = (ROOT / "docs" / "own-dataset.md").read_text()
    for field in FIELDS:
        assert f"`{field}`" in doc, field
    assert set(yaml.safe_load(EXAMPLE.read_text())) <= set(FIELDS)


# ------------------------------------------------------------------------------- the config


def test_the_config_takes_a_spec_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    cfg = load_config(None, [f"data.dataset={path}"])
    assert cfg.data.dataset == str(path)
    assert cfg.modalities() == ModalitySet.of(("RGB", "TI"))
    assert cfg.img_size() == (256, 128)
    # test.missing speaks the file's letters.
    assert load_config(None, [f"data.dataset={path}", "test.missing=-t"]).test.missing == "T"
    with pytest.raises(
        ConfigError, match=r"'test.missing': unknown missing-modality setting 'N'; choose one of: full, R, T"
    ):
        load_config(None, [f"data.dataset={path}", "test.missing=N"])


def test_the_config_refuses_a_bad_spec_file(tmp_path: Path) -> None:
    path = write(tmp_path, changed(structure="flat"))
    with pytest.raises(ConfigError, match=rf"dataset spec file {re.escape(str(path))}: structure: 'flat'"):
        load_config(None, [f"data.dataset={path}"])
    with pytest.raises(ConfigError, match="dataset spec file not found"):
        load_config(None, [f"data.dataset={tmp_path / 'other.yml'}"])


# ------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_yaml_dataset_end_to_end(tmp_path: Path, cli) -> None:
    """A two-modality dataset described by a spec file only: synthetic captures in its layout,
    a tiny training and the missing-modality table (full, -R, -T)."""
    spec = write(tmp_path, changed(folder="dual", max_cameras=4))
    root = tmp_path / "data"
    done = cli(["synth", "-q", "--dataset", str(spec), "--output", str(root), "--ids", "6", "--test-ids", "2",
                "--cameras", "2", "--shots", "2"], cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (root / "dual/train").iterdir()) == ["thermal", "visible"]
    assert (root / "dual/train/visible/0001_c1_000.jpg").is_file()

    common = ["-q", "--data-root", str(root), f"data.dataset={spec}"]
    done = cli(["check-data", "--config", "demo", *common], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    done = cli(["train", "--config", "demo", *common, "--output", str(run), *FAST], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = cli(["test", "-q", "--checkpoint", str(run / "last.ckpt"), "--missing", "all",
                "--output", str(tmp_path / "t")], cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "t" / "missing_modality.txt").read_text()
    for label in ("full", "-R", "-T"):
        assert label in done.stdout and label in table
    assert "-N" not in table and "-RT" not in table  # two modalities: three settings
    assert json.loads((tmp_path / "t" / "results.json").read_text())

    # extract, search, index + serve and analyze read the dataset from the run's stored config.
    ckpt = str(run / "last.ckpt")
    feats = tmp_path / "gallery.npz"
    done = cli(["extract", "-q", "--checkpoint", ckpt, "--data-root", str(root), "--split", "gallery",
                "--out", str(feats)], cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    query = sorted((root / "dual/query/visible").iterdir())[0]
    ranks = tmp_path / "ranks.png"
    done = cli(["search", "-q", "--checkpoint", ckpt, "--query", str(query), "--gallery", str(feats),
                "-k", "3", "--out", str(ranks)], cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rankings = json.loads(ranks.with_suffix(".json").read_text())["queries"]  # query path -> matches
    assert ranks.is_file() and [len(m) for m in rankings.values()] == [3]
    index = tmp_path / "gallery.index"
    done = cli(["index", "build", "--features", str(feats), "--out", str(index)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    model, cfg, _ = load_model(ckpt)
    client = TestClient(create_app(SearchService(model, cfg, GalleryIndex.load(index), root)))
    answer = client.post("/search", files={"TI": query.read_bytes()}, data={"k": "2"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["query"]["missing"] == "-R" and len(answer.json()["matches"]) == 2
    assert client.post("/search", files={"NI": query.read_bytes()}).status_code == 400
    analysis = tmp_path / "an"
    done = cli(["analyze", "-q", "--checkpoint", ckpt, "--data-root", str(root), "--output", str(analysis),
                "--queries", "2"], cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (analysis / "report.html").is_file()

    # On a machine without the spec file the checkpoint's stored copy stands in for it.
    spec.rename(tmp_path / "elsewhere.yaml")
    moved = tmp_path / "ranks_moved.png"
    done = cli(["search", "-q", "--checkpoint", ckpt, "--query", str(query), "--gallery", str(feats),
                "-k", "3", "--out", str(moved)], cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{spec} is not on this machine; using the copy stored in the checkpoint" in done.stderr
    assert json.loads(moved.with_suffix(".json").read_text())["queries"] == rankings
