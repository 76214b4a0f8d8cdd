"""mambapro.files: outputs never replace an input or a file of another kind; writes finish
before SIGINT/SIGTERM are handled."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from mambapro.errors import UserError
from mambapro.files import (
    OUTPUT_MARKER,
    RANK_LIST_TAG,
    artefact_kind,
    atomic_write,
    check_output,
    check_output_folder,
    claim_output_folder,
    deferred_signals,
)
from mambapro.retrieval.features import FeatureSet


def _features(path: Path) -> Path:
    FeatureSet(np.eye(3, 4, dtype=np.float32), np.arange(3), np.zeros(3), np.zeros(3), ["a", "b", "c"]).save(
        path
    )
    return path


def _files(tmp_path: Path) -> dict[str, Path]:
    """One file of each kind mambapro recognises, made the way mambapro (or a user) makes them."""
    f = {"features": _features(tmp_path / "g.npz")}
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "last.ckpt")
    f["checkpoint"] = tmp_path / "last.ckpt"
    np.savez(tmp_path / "i.npz", header=np.asarray("{}"), index=np.zeros(3, np.uint8))
    f["index"] = tmp_path / "i.npz"

    class Double(torch.nn.Module):
        def forward(self, x):
            return 2 * x

    buf = io.BytesIO()
    torch.export.save(torch.export.export(Double(), (torch.zeros(2),)), buf)
    (tmp_path / "m.pt2").write_bytes(buf.getvalue())
    f["pt2"] = tmp_path / "m.pt2"
    # A ModelProto: ir_version (field 1, varint), producer "pytorch", ..., mambapro's metadata last.
    meta = json.dumps({"format": "mambapro-export"}).encode()
    (tmp_path / "m.onnx").write_bytes(b"\x08\x08\x12\x07pytorch" + b"\x00" * 64 + meta)
    f["onnx"] = tmp_path / "m.onnx"
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    f["image"] = tmp_path / "photo.jpg"
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", RANK_LIST_TAG)
    Image.new("RGB", (8, 8)).save(tmp_path / "r.png", pnginfo=info)
    f["rank list"] = tmp_path / "r.png"
    (tmp_path / "r.json").write_text(json.dumps({"checkpoint": "c", "gallery": "g", "queries": {}}))
    f["rankings"] = tmp_path / "r.json"
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("x.txt", "x")
    f["archive"] = tmp_path / "other.zip"
    return f


def test_artefact_kind_recognises_each_kind(tmp_path: Path) -> None:
    for kind, path in _files(tmp_path).items():
        assert artefact_kind(path) == kind, path
    (tmp_path / "notes.txt").write_text("notes\n")
    (tmp_path / "empty").write_bytes(b"")
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")  # a PNG without the rank-list tag
    assert artefact_kind(tmp_path / "notes.txt") is None
    assert artefact_kind(tmp_path / "empty") == "empty"
    assert artefact_kind(tmp_path / "plain.png") == "image"


def test_an_output_replaces_only_its_own_kind(tmp_path: Path) -> None:
    files = _files(tmp_path)
    for kind in files:
        for other, path in files.items():
            if other == kind:
                assert check_output(path, "--out", kind) == path  # same kind: replaced as before
            else:
                with pytest.raises(
                    UserError, match=rf"--out {path} exists and is .*not .*refusing to replace"
                ):
                    check_output(path, "--out", kind)
    (tmp_path / "notes.txt").write_text("notes\n")
    with pytest.raises(UserError, match="exists and is a file mambapro did not write"):
        check_output(tmp_path / "notes.txt", "--out", "features")
    (tmp_path / "empty.npz").write_bytes(b"")
    assert check_output(tmp_path / "empty.npz", "--out", "features") == tmp_path / "empty.npz"
    assert check_output(tmp_path / "new.npz", "--out", "index") == tmp_path / "new.npz"


def test_an_output_that_is_an_input_is_refused_through_links(tmp_path: Path) -> None:
    # An index over its own features file: the same kind check would not catch a features
    # file named as an index output; the input check does, however the path is spelled.
    g = _features(tmp_path / "g.npz")
    (tmp_path / "sub").mkdir()
    os.link(g, tmp_path / "hard.npz")
    (tmp_path / "soft.npz").symlink_to(g)
    inputs = [("--features", g)]
    for out in (g, tmp_path / "sub" / ".." / "g.npz", tmp_path / "hard.npz", tmp_path / "soft.npz"):
        with pytest.raises(UserError, match=rf"--out {out} is the input --features {g}"):
            check_output(out, "--out", "features", inputs)
    # A link to an input that does not exist yet is not an input; nor is a missing input.
    check_output(
        tmp_path / "new.npz", "--out", "features", [("--features", tmp_path / "nope.npz"), ("--x", None)]
    )


def _slow_writer(path: Path, seconds: float, payload: bytes) -> None:
    with atomic_write(path) as fh:
        for i in range(10):
            fh.write(payload[i * len(payload) // 10 : (i + 1) * len(payload) // 10])
            time.sleep(seconds / 10)


def _signal_soon(signum: int, delay: float) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay), os.kill(os.getpid(), signum)))
    t.start()
    return t


def test_ctrl_c_during_a_write_waits_for_the_whole_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    payload = os.urandom(1 << 16)
    sender = _signal_soon(signal.SIGINT, 0.2)
    with pytest.raises(KeyboardInterrupt):  # raised after the file is in place
        _slow_writer(path, 1.0, payload)
    sender.join()
    assert path.read_bytes() == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
    assert f"SIGINT received; finishing the write of {path} first" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_sigterm_during_a_write_runs_the_previous_handler_after_it(tmp_path: Path) -> None:
    seen: list[tuple[int, bool]] = []
    path = tmp_path / "f.bin"
    payload = os.urandom(1 << 12)

    def handler(signum, frame):
        seen.append((signum, path.is_file() and path.read_bytes() == payload))

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        sender = _signal_soon(signal.SIGTERM, 0.2)
        _slow_writer(path, 1.0, payload)
        sender.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [(signal.SIGTERM, True)]  # once, and only when the file was complete


def test_nested_deferrals_deliver_once_at_the_outer_end(tmp_path: Path) -> None:
    order: list[str] = []

    def handler(signum, frame):
        order.append("handled")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with deferred_signals("outer"):
            with deferred_signals("inner"):
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
            order.append("inner done")
        order.append("outer done")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert order == ["inner done", "handled", "outer done"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk"):
        with atomic_write(path) as fh:
            fh.write(b"new partial")
            raise RuntimeError("disk trouble")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


# ------------------------------------------------------------------ folder outputs


def test_a_folder_output_may_be_new_unrelated_or_the_same_command_s(tmp_path: Path) -> None:
    names = ("results.json", "report.txt", "gradcam-*.png")
    assert check_output_folder(tmp_path / "new", "--output", "test", names) == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("mine")
    check_output_folder(mine, "--output", "test", names)  # nothing of the command's there
    (mine / "report.txt").write_text("my report")
    with pytest.raises(UserError, match=r"^--output .*/mine holds report.txt, which `mambapro test` writes"):
        check_output_folder(mine, "--output", "test", names)
    (mine / "gradcam-a.png").write_bytes(b"")
    with pytest.raises(UserError, match=r"holds gradcam-a.png \(and 1 more: report.txt\)"):
        check_output_folder(mine, "--output", "test", names)
    # An earlier output of the same command is written again; another command's is not.
    claim_output_folder(mine, "test")
    assert json.loads((mine / OUTPUT_MARKER).read_text()) == {"command": "test"}
    check_output_folder(mine, "--output", "test", names)
    with pytest.raises(UserError, match="which `mambapro analyze` writes there, and is not the output of"):
        check_output_folder(mine, "--output", "analyze", names)
    assert (mine / "notes.md").read_text() == "mine" and (mine / "report.txt").read_text() == "my report"


def test_claiming_creates_the_folder_and_keeps_a_marker_of_the_same_command(tmp_path: Path) -> None:
    folder = claim_output_folder(tmp_path / "a" / "b", "train")
    marker = folder / OUTPUT_MARKER
    assert folder.is_dir() and json.loads(marker.read_text()) == {"command": "train"}
    mtime = marker.stat().st_mtime_ns
    claim_output_folder(folder, "train")
    assert marker.stat().st_mtime_ns == mtime
    marker.write_text("not json")  # a damaged marker marks nothing
    (folder / "x.txt").write_text("")
    with pytest.raises(UserError, match="holds x.txt"):
        check_output_folder(folder, "--output", "train", ["x.txt"])
