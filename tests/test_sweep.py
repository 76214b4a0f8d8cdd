"""``mambapro sweep``: one tiny training per grid point, the table read back from the runs, the
skip and resume of a repeated sweep, and bad input refused before anything trains."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mambapro.train.sweep_plan as sweep_plan
import mambapro.train.trainer as trainer_mod
from conftest import FAST
from mambapro.cli import main
from mambapro.config import load_config
from mambapro.data.synth import generate
from mambapro.models import build_model
from mambapro.train.checkpoint import load_checkpoint
from mambapro.train.sweep import parse_sets, plan_sweep, point_name

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = ["--set", "model.ma_d_state=4,8", "--set", "train.seed=1,2"]
NAMES = [
    "model.ma_d_state=4+train.seed=1",
    "model.ma_d_state=4+train.seed=2",
    "model.ma_d_state=8+train.seed=1",
    "model.ma_d_state=8+train.seed=2",
]


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["sweep", "--config", "demo", "-q", "--output", str(out), *FAST, f"data.root={data}", *extra]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse usage errors
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    # Three test identities: enough queries that the points' metrics differ.
    generate("rgbnt201", root, seed=3, ids=6, test_ids=3, cameras=2, shots=2)
    return root


@pytest.fixture(scope="module")
def grid(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("grid") / "sweep"
    rc, stdout, stderr = _run(_argv(data, out, *GRID))
    assert rc == 0, stderr
    return out, stdout


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a point was trained")

    monkeypatch.setattr(trainer_mod, "run_training", refuse)


def test_a_grid_trains_every_point_and_tabulates_their_own_metrics(
    grid: tuple[Path, str], data: Path
) -> None:
    out, stdout = grid
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == NAMES
    for i, name in enumerate(NAMES, start=1):
        assert f"[{i}/4] {name}: training" in stdout
    rows = _csv(out / "sweep.csv")
    assert list(rows[0]) == [
        "point",
        "model.ma_d_state",
        "train.seed",
        "mAP",
        "R1",
        "mINP",
        "params",
        "seconds",
    ]
    assert [r["point"] for r in rows] == NAMES  # the product, in the order the keys were given
    for row in rows:
        folder = out / row["point"]
        cfg = load_config(folder / "config.yaml")
        # The run was made with the point's values, in the point's folder.
        assert (cfg.model.ma_d_state, cfg.train.seed) == (
            int(row["model.ma_d_state"]),
            int(row["train.seed"]),
        )
        assert Path(cfg.train.output) == folder and cfg.data.root == str(data)
        # The metrics are the run's own results.json, in percent.
        (result,) = json.loads((folder / "results.json").read_text())["results"].values()
        assert float(row["mAP"]) == round(100 * result["mAP"], 2)
        assert float(row["R1"]) == round(100 * result["Rank-1"], 2)
        assert float(row["mINP"]) == round(100 * result["mINP"], 2)
        # The trainable parameters of the model the run trained.
        meta = json.loads((folder / "meta.json").read_text())
        model = build_model(cfg, meta["num_classes"], meta["num_cameras"])
        assert int(row["params"]) == sum(p.numel() for p in model.parameters() if p.requires_grad)
        epochs = [r for r in _records(folder) if "selection" not in r]
        assert float(row["seconds"]) == pytest.approx(sum(r["seconds"] for r in epochs), abs=0.01)
    # The comparison above is not vacuous: the points differ in metrics and in size.
    assert len({r["mAP"] for r in rows}) > 1
    assert rows[0]["params"] != rows[2]["params"] and rows[0]["params"] == rows[1]["params"]
    # The summary table lists every point with its mAP.
    for row in rows:
        assert re.search(rf"^{re.escape(row['point'])}\s+{float(row['mAP']):.2f}\s.*trained$", stdout, re.M)
    with Image.open(out / "sweep.png") as img:
        # train.seed is the repetition axis: one subplot (mean ± std over seeds per ma_d_state).
        assert img.format == "PNG" and img.height < img.width < 2 * img.height
    # The summary over seeds: one row per value of the other key, numpy's mean and sample std.
    summary = _csv(out / "sweep_summary.csv")
    assert [r["model.ma_d_state"] for r in summary] == ["4", "8"]
    for entry in summary:
        runs = [r for r in rows if r["model.ma_d_state"] == entry["model.ma_d_state"]]
        assert entry["runs"] == "2" and entry["seeds"] == "1 2"
        for m in ("mAP", "R1", "mINP"):
            xs = np.array([float(r[m]) for r in runs])
            assert float(entry[f"{m}_mean"]) == pytest.approx(xs.mean(), abs=1e-4)
            assert float(entry[f"{m}_std"]) == pytest.approx(xs.std(ddof=1), abs=1e-4)
            assert (float(entry[f"{m}_min"]), float(entry[f"{m}_max"])) == (xs.min(), xs.max())
    assert "over seeds (train.seed): mean ± sample std (ddof=1) [min, max]" in stdout
    assert re.search(r"^model.ma_d_state=4\s+2\s+\d+\.\d\d ± \d+\.\d\d \[", stdout, re.M)


def test_a_repeated_sweep_skips_finished_points(grid: tuple[Path, str], data: Path, no_training) -> None:
    out, _ = grid
    before = _snapshot(out)
    rc, stdout, stderr = _run(_argv(data, out, *GRID))
    assert rc == 0, stderr
    assert stdout.count("finished earlier, skipped") == 4 and "training" not in stdout
    after = _snapshot(out)
    runs = {k: v for k, v in before.items() if "/" in k}
    assert runs == {k: v for k, v in after.items() if "/" in k}  # no run file touched
    assert after["sweep.csv"][0] == before["sweep.csv"][0]  # the same table, rewritten


def test_a_point_without_its_final_record_is_resumed_not_retrained(
    grid: tuple[Path, str], data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    shutil.copytree(grid[0], out)
    folder = out / NAMES[1]
    records = _records(folder)
    final = records[-1]
    assert "selection" in final
    # Make it look interrupted after its last checkpoint: no final record, no results.
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records[:-1]))
    (folder / "results.json").unlink()
    ckpt = (folder / "last.ckpt").read_bytes(), (folder / "last.ckpt").stat().st_mtime_ns
    rc, stdout, stderr = _run(_argv(data, out, *GRID))
    assert rc == 0, stderr
    assert f"[2/4] {NAMES[1]}: resuming" in stdout and stdout.count("finished earlier, skipped") == 3
    assert json.loads((folder / "meta.json").read_text())["resumed_from_epoch"] == 1
    # No step was trained again: the checkpoint and the epoch record are the run's own.
    assert ((folder / "last.ckpt").read_bytes(), (folder / "last.ckpt").stat().st_mtime_ns) == ckpt
    assert _records(folder)[:-1] == records[:-1]
    # The same weights evaluate to the same metrics, so the table is the original one.
    assert _records(folder)[-1] == final
    assert (out / "sweep.csv").read_text() == (grid[0] / "sweep.csv").read_text()


def test_an_interrupted_point_continues_from_its_checkpoint(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "sweep"
    argv = _argv(data, out, "--set", "model.ma_d_state=4,8", "train.epochs=2")
    original = trainer_mod.Trainer.train_epoch

    def interrupted(self, epoch):
        if epoch == 1:  # Ctrl-C as the second epoch starts
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", interrupted)
    rc, stdout, _ = _run(argv)
    assert rc == 130
    first, second = out / "model.ma_d_state=4", out / "model.ma_d_state=8"
    assert "sweep interrupted at point 1/2 (model.ma_d_state=4)" in stdout
    assert load_checkpoint(first / "last.ckpt")["epoch"] == 1
    assert not second.exists() and not (out / "sweep.csv").exists()
    epoch_one = _records(first)
    assert [r["epoch"] for r in epoch_one] == [1]

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", original)
    rc, stdout, stderr = _run(argv)
    assert rc == 0, stderr
    assert "[1/2] model.ma_d_state=4: resuming" in stdout and "[2/2] model.ma_d_state=8: training" in stdout
    assert json.loads((first / "meta.json").read_text())["resumed_from_epoch"] == 1
    records = _records(first)
    assert records[0] == epoch_one[0] and [r["epoch"] for r in records] == [1, 2, 2]
    # Resumed, it ends where an uninterrupted run of the same point ends.
    reference = tmp_path / "reference"
    cfg = load_config("demo", [*FAST, f"data.root={data}", "train.epochs=2", "model.ma_d_state=4"])
    cfg.train.output = str(reference)
    original_run = trainer_mod.run_training(cfg, quiet=True)
    row = _csv(out / "sweep.csv")[0]
    assert float(row["mAP"]) == round(100 * original_run["result"].mAP, 2)
    assert records[-1]["test_mAP"] == pytest.approx(_records(reference)[-1]["test_mAP"], abs=1e-9)


def test_seeds_repeat_the_config_from_its_seed_and_summarise_over_them(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "seeds"
    rc, stdout, stderr = _run(_argv(data, out, "--seeds", "2", "train.seed=7"))
    assert rc == 0, stderr
    rows = _csv(out / "sweep.csv")
    assert [r["point"] for r in rows] == ["train.seed=7", "train.seed=8"]  # the config's seed, then +1
    assert [load_config(out / r["point"] / "config.yaml").train.seed for r in rows] == [7, 8]
    (entry,) = _csv(out / "sweep_summary.csv")
    assert entry["runs"] == "2" and entry["seeds"] == "7 8"
    for m in ("mAP", "R1", "mINP"):
        xs = np.array([float(r[m]) for r in rows])
        assert float(entry[f"{m}_mean"]) == pytest.approx(xs.mean(), abs=1e-4)
        assert float(entry[f"{m}_std"]) == pytest.approx(xs.std(ddof=1), abs=1e-4)
    assert re.search(r"^\(the config\)\s+2\s+", stdout, re.M)
    # Without the override: the config's own seed and the next ones.
    base = load_config("demo").train.seed
    plan = plan_sweep("demo", ["model.ma_d_state=4,8"], tmp_path / "p", [*FAST, f"data.root={data}"], seeds=3)
    assert plan.keys == ["model.ma_d_state", "train.seed"]
    assert [p.cfg.train.seed for p in plan.points] == [base, base + 1, base + 2] * 2


BAD = [
    ("unknown-key", ["--set", "model.ma_dstate=4,8"], r"unknown key 'model.ma_dstate'"),
    ("empty-list", ["--set", "model.ma_d_state="], r"--set model.ma_d_state=: no values"),
    ("empty-item", ["--set", "model.ma_d_state=4,,8"], r"an empty value in the list"),
    (
        "key-twice",
        ["--set", "model.ma_d_state=4", "--set", "model.ma_d_state=8"],
        r"--set model.ma_d_state is given twice",
    ),
    ("value-twice", ["--set", "model.ma_d_state=4,8,4"], r"the value 4 is given twice"),
    ("same-typed-value", ["--set", "train.lr=1e-3,0.001"], r"the values 1e-3 and 0.001 are the same"),
    (
        "negative-depth",
        ["--set", "model.ma_depth=2,-1"],
        r"sweep point model.ma_depth=-1: .*'model.ma_depth' = -1 must be >= 1",
    ),
    (
        # Points 1 and 2 are good, point 3 is not: refused before point 1 trains.
        "bad-later-point",
        ["--set", "model.prompt_tokens=2,0", "--set", "model.ma_d_state=4,8"],
        r"sweep point model.prompt_tokens=0 model.ma_d_state=4: .*'model.prompt_tokens' = 0 must be >= 1",
    ),
    (
        "swept-and-overridden",
        ["--set", "model.ma_d_state=4,8", "model.ma_d_state=16"],
        r"model.ma_d_state is both swept \(--set\) and overridden \(model.ma_d_state=16\)",
    ),
    ("sweep-output", ["--set", "train.output=a,b"], r"--set train.output: the sweep sets each point's"),
    ("no-equals", ["--set", "model.ma_d_state"], r"--set model.ma_d_state: must look like KEY=V1,V2"),
    ("zero-seeds", ["--seeds", "0"], r"--seeds 0: must be at least 1"),
    ("negative-seeds", ["--set", "model.ma_d_state=4,8", "--seeds", "-2"], r"--seeds -2: must be at least 1"),
    (
        "seeds-twice",
        ["--seeds", "2", "--set", "train.seed=1,2"],
        r"--seeds 2 and --set train.seed=\.\.\.: give",
    ),
    ("nothing-to-sweep", [], r"nothing to sweep: give --set KEY=V1,V2,\.\.\. \(repeatable\) or --seeds N"),
]


@pytest.mark.parametrize("argv,pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused_before_anything_exists(
    data: Path, tmp_path: Path, argv: list[str], pattern: str, no_training
) -> None:
    out = tmp_path / "sweep"
    rc, stdout, stderr = _run(_argv(data, out, *argv))
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1, stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert lines[0].startswith("mambapro sweep: error: ")
    assert not out.exists() and not stdout


def _sweep_over(out: Path, *extra: str) -> tuple[int, str, str]:
    """A sweep without _argv's data.root override, for grids over the data settings."""
    return _run(["sweep", "--config", "demo", "-q", "--output", str(out), *FAST, *extra])


def test_a_later_point_without_its_dataset_is_refused_before_the_first_trains(
    data: Path, tmp_path: Path
) -> None:
    # No no_training here: were the data checked only when point 2 starts, point 1 would train
    # and leave its folder behind.
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "sweep"
    rc, stdout, stderr = _sweep_over(out, "--set", f"data.root={data},{empty}")
    assert rc == 2 and not stdout, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"mambapro sweep: error: sweep point data.root={empty}: "), lines[0]
    assert f"dataset folder not found: {empty / 'RGBNT201'}" in lines[0]
    assert not (out / point_name({"data.root": str(data)})).exists() and not out.exists()
    assert list(empty.iterdir()) == []


def test_a_key_swept_and_given_by_its_flag_is_refused(data: Path, tmp_path: Path, no_training) -> None:
    out = tmp_path / "sweep"
    rc, _, stderr = _sweep_over(out, "--data-root", str(data), "--set", f"data.root={data},{tmp_path}")
    assert rc == 2
    assert stderr == (
        f"mambapro sweep: error: data.root is both swept (--set) and given by --data-root {data}; drop one\n"
    )
    assert not out.exists()


def test_points_generating_one_synthetic_tree_differently_are_refused_before_it_exists(
    tmp_path: Path,
) -> None:
    # Point 1 would generate the tree, point 2 would then refuse it as made with other settings.
    root = tmp_path / "synthetic"
    out = tmp_path / "sweep"
    small = ["data.synth.test_ids=2", "data.synth.cameras=2", "data.synth.shots=2"]
    rc, stdout, stderr = _sweep_over(
        out, "data.synthetic=true", f"data.root={root}", *small, "--set", "data.synth.ids=5,6"
    )
    assert rc == 2 and not stdout, stderr
    assert stderr.splitlines() == [
        f"mambapro sweep: error: sweep point data.synth.ids=6: point data.synth.ids=5 generates the "
        f"synthetic dataset {root.resolve() / 'RGBNT201'} with other data.synth settings (ids: 5 -> 6); "
        "give each data.synth setting its own data.root"
    ]
    assert not root.exists() and not out.exists()


def test_each_distinct_dataset_is_parsed_once_and_finished_points_not_at_all(
    grid: tuple[Path, str], data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple] = []
    original = sweep_plan.build_dataset

    def counted(*args, **kwargs):
        calls.append((*args, *sorted(kwargs.items())))
        return original(*args, **kwargs)

    monkeypatch.setattr(sweep_plan, "build_dataset", counted)
    overrides = [*FAST, f"data.root={data}"]
    plan = plan_sweep("demo", GRID[1::2], tmp_path / "s", overrides)
    assert len(plan.points) == 4
    assert calls == [("RGBNT201", str(data), ("skip_broken", False), ("verify", False))]
    calls.clear()
    plan = plan_sweep("demo", [*GRID[1::2], "data.verify=false,true"], tmp_path / "s", overrides)
    assert [c[-1] for c in calls] == [("verify", False), ("verify", True)]  # another data config
    calls.clear()
    plan = plan_sweep("demo", GRID[1::2], grid[0], overrides)  # every point finished
    assert [p.state for p in plan.points] == ["done"] * 4 and calls == []


def test_an_output_that_is_a_file_is_refused(data: Path, tmp_path: Path, no_training) -> None:
    afile = tmp_path / "afile"
    afile.write_text("notes\n")
    rc, _, stderr = _run(_argv(data, afile, "--set", "model.ma_d_state=4,8"))
    assert rc == 2
    assert stderr == f"mambapro sweep: error: --output {afile} is a file, not a folder\n"
    assert afile.read_text() == "notes\n"


def test_a_folder_of_other_settings_is_refused_and_unchanged(
    grid: tuple[Path, str], data: Path, no_training
) -> None:
    out, _ = grid
    before = _snapshot(out)
    rc, _, stderr = _run(_argv(data, out, *GRID, "train.epochs=2"))
    assert rc == 2
    assert re.search(
        rf"{re.escape(str(out / NAMES[0]))} holds a run with other settings: train.epochs: 1 -> 2", stderr
    )
    assert _snapshot(out) == before


def test_refused_without_loading_torch(tmp_path: Path) -> None:
    code = (
        "import sys; from mambapro.cli import main; "
        f"rc = main(['sweep', '--config', 'demo', '--output', {str(tmp_path / 's')!r}, "
        "'--set', 'model.ma_dstate=4,8']); print(rc, 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert "unknown key 'model.ma_dstate'" in proc.stderr


def test_values_are_typed_like_overrides_and_named_for_the_file_system(tmp_path: Path) -> None:
    assert parse_sets(["model.prompt_layers=[2,3],null", "train.lr=1e-3, 0.01"]) == {
        "model.prompt_layers": ["[2,3]", "null"],
        "train.lr": ["1e-3", "0.01"],
    }
    plan = plan_sweep(
        "demo",
        ["model.prompt_layers=[2,3],null", "model.ma_bidirectional=true,false", "train.lr=1e-3"],
        tmp_path / "s",
    )
    assert plan.values == {
        "model.prompt_layers": [[2, 3], None],
        "model.ma_bidirectional": [True, False],
        "train.lr": [0.001],
    }
    assert [p.name for p in plan.points] == [
        "model.prompt_layers=2,3+model.ma_bidirectional=true+train.lr=0.001",
        "model.prompt_layers=2,3+model.ma_bidirectional=false+train.lr=0.001",
        "model.prompt_layers=null+model.ma_bidirectional=true+train.lr=0.001",
        "model.prompt_layers=null+model.ma_bidirectional=false+train.lr=0.001",
    ]
    assert [p.cfg.model.prompt_layers for p in plan.points] == [[2, 3], [2, 3], None, None]
    assert all(p.cfg.train.output == str(tmp_path / "s" / p.name) for p in plan.points)
    assert not (tmp_path / "s").exists()
    assert point_name({"data.root": "/a b/c"}) == "data.root=_a_b_c"
    long = point_name({"model.adapter_layers": list(range(100))})
    assert len(long) <= 200 and long != point_name({"model.adapter_layers": list(range(101))})
