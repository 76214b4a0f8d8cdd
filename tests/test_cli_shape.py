"""The shape of the console script: every argument explains itself, output folders are
``--output`` and output files ``--out`` everywhere, the old spellings get one line naming the new."""

from __future__ import annotations

import argparse

import pytest

from mambapro import __version__
from mambapro.cli import build_parser, main

FOLDER_OUTPUTS = {"analyze", "synth", "sweep", "train", "test", "demo"}
FILE_OUTPUTS = {"extract", "export", "index", "search"}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_argument_has_a_help_string() -> None:
    missing = [
        f"{name} {a.option_strings or a.dest}"
        for name, sub in _subparsers().items()
        for a in sub._actions
        if not isinstance(a, argparse._HelpAction) and not a.help
    ]
    assert not missing, missing


def test_output_folders_are_output_and_output_files_are_out() -> None:
    subs = _subparsers()
    visible = {
        name: {o for a in sub._actions if a.help != argparse.SUPPRESS for o in a.option_strings}
        for name, sub in subs.items()
    }
    for name in FOLDER_OUTPUTS:
        assert "--output" in visible[name] and "--out" not in visible[name], name
    for name in FILE_OUTPUTS:
        assert "--out" in visible[name] and "--output" not in visible[name], name
    assert FOLDER_OUTPUTS | FILE_OUTPUTS <= set(subs)


@pytest.mark.parametrize(
    "argv", [["synth", "--out", "x"], ["analyze", "--checkpoint", "c.ckpt", "--out", "x"]]
)
def test_the_old_folder_spelling_names_the_new_one(argv, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"mambapro {argv[0]}: error: {argv[0]} --out is now --output (an output folder): use --output x"
    )
    assert list(tmp_path.iterdir()) == []


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"mambapro {__version__}"
