"""Reproducibility a user can show: the dataset fingerprint (what it sees and what not), where a
run records it (meta.json, report, results, checkpoint) with the machine, the ``test`` command's
check of the evaluated split against the checkpoint's, and ``mambapro compare`` of two runs."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TinyRun
from mambapro.cli import main
from mambapro.data import build_dataset
from mambapro.data.fingerprint import dataset_fingerprint, same_eval_split
from mambapro.data.synth import generate
from mambapro.reports.compare import compare_runs, final_metrics, format_comparison
from mambapro.retrieval.testing import run_test

pytestmark = pytest.mark.usefixtures("one_thread")


def _fp(root: Path) -> dict:
    return dataset_fingerprint(build_dataset("RGBNT201", root))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fp") / "tree"
    generate("rgbnt201", root, seed=2, ids=4, test_ids=2, cameras=2, shots=2)
    return root


def _copy(tree: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tree elsewhere, and its dataset folder."""
    root = tmp_path / "copy"
    shutil.copytree(tree, root)
    return root, root / "RGBNT201"


def test_the_fingerprint_sees_renames_additions_removals_and_sizes_only(tree: Path, tmp_path: Path) -> None:
    ref = _fp(tree)
    assert len(ref["sha256"]) == 64 and ref["files"] > 0
    assert {k: ref["splits"]["query"][k] for k in ("ids", "captures", "cameras")} == {
        "ids": 2,
        "captures": 8,
        "cameras": 2,
    }
    root, ds = _copy(tree, tmp_path)
    # Another place, new modification times, a same-size edit, a hidden file: the same fingerprint.
    same = _fp(root)
    assert same["root"] != ref["root"]
    assert {k: v for k, v in same.items() if k != "root"} == {k: v for k, v in ref.items() if k != "root"}
    meta = ds / "synth_meta.json"
    text = meta.read_bytes()
    meta.write_bytes(text[:-2] + bytes([text[-2] ^ 1]) + text[-1:])  # one byte changed, same size
    (ds / ".DS_Store").write_text("x")
    assert _fp(root)["sha256"] == ref["sha256"]

    def changed(what) -> dict:
        r, d = _copy(tree, tmp_path / what.__name__)
        what(d)
        return _fp(r)

    def rename(d: Path) -> None:
        (d / "synth_meta.json").rename(d / "synth_meta2.json")

    def add(d: Path) -> None:
        (d / "README.txt").write_text("notes\n")

    def remove(d: Path) -> None:
        (d / "synth_meta.json").unlink()

    def resize_train(d: Path) -> None:
        with open(sorted((d / "train_171" / "NI").iterdir())[0], "ab") as fh:
            fh.write(b"\0")

    def resize_test(d: Path) -> None:
        with open(sorted((d / "test" / "TI").iterdir())[0], "ab") as fh:
            fh.write(b"\0")

    fps = {what: changed(what) for what in (rename, add, remove, resize_train, resize_test)}
    for what, fp in fps.items():
        assert fp["sha256"] != ref["sha256"], what.__name__
        # Only a change to the test files changes the part `mambapro test` compares.
        assert (fp["eval_sha256"] != ref["eval_sha256"]) == (what is resize_test), what.__name__
    assert fps[resize_train]["splits"]["train"]["files_sha256"] != ref["splits"]["train"]["files_sha256"]


def test_the_fingerprint_modules_do_not_import_torch() -> None:
    code = "import sys, mambapro.data.fingerprint, mambapro.reports.compare; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False"], proc.stderr


def test_a_run_records_the_fingerprint_and_the_machine(tiny_run: TinyRun) -> None:
    expected = _fp(tiny_run.tree)
    meta = json.loads((tiny_run.run / "meta.json").read_text())
    assert meta["dataset_fingerprint"] == expected
    assert set(meta["machine"]) >= {"cpu", "isa", "torch_cpu_capability", "torch_threads", "gpu"}
    assert isinstance(meta["machine"]["isa"], list) and meta["machine"]["cpu"]
    assert json.loads((tiny_run.run / "results.json").read_text())["dataset_fingerprint"] == expected
    assert f"file list sha256 {expected['sha256'][:16]}" in (tiny_run.run / "report.txt").read_text()
    ckpt = torch.load(tiny_run.checkpoint, weights_only=True)
    assert ckpt["dataset_fingerprint"] == expected
    # What every image was resized to, and the modalities the model was built for.
    assert ckpt["img_size"] == [32, 32]  # FAST's data.img_size
    assert ckpt["modalities"]["keys"] == ["RGB", "NI", "TI"]


def _test(checkpoint: Path, root: Path, out: Path) -> tuple[dict, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = run_test(checkpoint, extra={"data": {"root": str(root)}}, output=out, quiet=True)
    return result, buf.getvalue()


def test_the_test_command_says_whether_the_split_is_the_trained_one(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    result, stdout = _test(tiny_run.checkpoint, tiny_run.tree, tmp_path / "t1")
    assert result["dataset_check"] == "match" and "dataset check: match" in stdout
    assert json.loads((tmp_path / "t1" / "results.json").read_text())["dataset_check"] == "match"

    # Another tree: one test identity removed from the test folder.
    root, ds = _copy(tiny_run.tree, tmp_path)
    names = sorted(p.name for p in (ds / "test" / "RGB").iterdir())
    gone = names[0].split("_")[0]
    for m in ("RGB", "NI", "TI"):
        for f in (ds / "test" / m).glob(f"{gone}_*"):
            f.unlink()
    result, stdout = _test(tiny_run.checkpoint, root, tmp_path / "t2")
    assert result["dataset_check"] == "mismatch"
    assert "dataset check: MISMATCH" in stdout and "query ids 2 -> 1" in stdout
    assert "dataset check: MISMATCH" in (tmp_path / "t2" / "report.txt").read_text()

    # A checkpoint written before fingerprints existed: unknown.
    old = torch.load(tiny_run.checkpoint, weights_only=True)
    del old["dataset_fingerprint"]
    torch.save(old, tmp_path / "old.ckpt")
    result, stdout = _test(tmp_path / "old.ckpt", tiny_run.tree, tmp_path / "t3")
    assert result["dataset_check"] == "unknown" and "dataset check: unknown" in stdout
    assert same_eval_split(None, result["dataset_fingerprint"])[0] == "unknown"


def test_compare_shows_what_differs_and_summarises_what_is_the_same(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    text = format_comparison(compare_runs(tiny_run.run, tiny_run.run))
    assert "no difference in config, seed, versions, dataset, machine or metrics" in text
    assert "same: " in text and "5 metrics" in text

    other = tmp_path / "other"
    shutil.copytree(tiny_run.run, other, ignore=shutil.ignore_patterns("*.ckpt", "tb"))
    cfg = (other / "config.yaml").read_text()
    assert "  lr: " in cfg
    (other / "config.yaml").write_text(cfg.replace("  lr: ", "  lr: 0.5 #", 1))
    results = json.loads((other / "results.json").read_text())
    (row,) = results["results"].values()
    was = row["mAP"]
    row["mAP"] = was / 2
    (other / "results.json").write_text(json.dumps(results))
    meta = json.loads((other / "meta.json").read_text())
    meta["versions"]["torch"] = "0.0.1"
    (other / "meta.json").write_text(json.dumps(meta))

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["compare", str(tiny_run.run), str(other)]) == 0
    text = out.getvalue()
    lines = text.splitlines()
    assert any(line.split()[:2] == ["config", "train.lr"] and line.split()[-1] == "0.5" for line in lines), (
        text
    )
    assert any(
        line.split()[:2] == ["metrics", "mAP"]
        and line.split()[-2:] == [f"{50 * was:.2f}", f"{-50 * was:+.2f}"]
        for line in lines
    ), text
    assert any(line.split()[:2] == ["versions", "torch"] for line in lines), text
    same = next(line for line in lines if line.startswith("same: "))
    assert "dataset" in same and "machine" in same and "1 seed" in same
    assert "train.output" not in text  # differs between any two runs: not shown

    # Only the machine (and the numbers) differ: the note points at the CPU.
    (other / "config.yaml").write_text(cfg)
    meta["versions"] = json.loads((tiny_run.run / "meta.json").read_text())["versions"]
    meta["machine"]["isa"] = ["avx2"]
    (other / "meta.json").write_text(json.dumps(meta))
    text = format_comparison(compare_runs(tiny_run.run, other))
    assert "cpu isa flags" in text and "note: only the machine differs" in text


def test_compare_reads_the_last_whole_record_of_a_killed_run_and_says_so(tmp_path: Path) -> None:
    # A run killed while writing metrics.jsonl: its last line is cut. The final metrics are the
    # last whole test record, and the cut line is named in a warning, not passed over silently.
    run = tmp_path / "killed"
    run.mkdir()
    whole = {"epoch": 1, "test_mAP": 0.25, "test_Rank-1": 0.5}
    (run / "metrics.jsonl").write_text(json.dumps(whole) + "\n" + '{"epoch": 2, "test_mA')
    with pytest.warns(UserWarning, match=r"metrics.jsonl:2: not a JSON record, left out"):
        metrics, source = final_metrics(run)
    assert metrics == {"mAP": 0.25, "Rank-1": 0.5} and source == "metrics.jsonl"
