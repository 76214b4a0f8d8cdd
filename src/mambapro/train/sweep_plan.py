"""Planning a sweep: every point of the grid resolved and checked before any training starts.

:func:`plan_sweep` refuses everything that can refuse the sweep: a bad ``--set``, a point whose
config does not validate, a point folder that holds a run with other settings, a point whose
dataset does not parse. Each point's folder is ``OUTPUT/<point name>/`` and its state comes
from what is there (:func:`run_state`): a finished run is skipped, an interrupted one resumed.

A config error is refused without importing torch: the torch-based modules load lazily, through
:mod:`mambapro.data`, only when an existing synthetic tree's settings are checked.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mambapro import data
from mambapro.config import Config, load_config, parse_override
from mambapro.data import build_dataset, synth
from mambapro.errors import ConfigError, DatasetError, UserError
from mambapro.files import check_output_folder
from mambapro.options import RUN_OUTPUTS, check_sweep_seeds
from mambapro.train.runlog import changed_settings
from mambapro.train.sweep_grid import parse_sets, point_name, value_text

__all__ = [
    "CSV_NAME",
    "PLOT_NAME",
    "SEED_KEY",
    "SUMMARY_NAME",
    "SWEEP_OUTPUTS",
    "SweepPlan",
    "SweepPoint",
    "final_record",
    "plan_sweep",
    "read_records",
    "run_state",
]

#: The repetition axis: points that differ only in it are one configuration run with other seeds.
SEED_KEY = "train.seed"

#: The tables and the plot a sweep writes into its folder (``sweep_tables.py``), beside the
#: points' run folders: a folder holding one of them that an earlier sweep did not write is refused.
CSV_NAME, PLOT_NAME, SUMMARY_NAME = "sweep.csv", "sweep.png", "sweep_summary.csv"
SWEEP_OUTPUTS = (CSV_NAME, PLOT_NAME, SUMMARY_NAME)

#: The sweep command's flags that set a config key (its ``extra``), for naming them in errors.
_FLAGS = {"data.root": "--data-root", "model.weights": "--clip-weights"}


@dataclass
class SweepPoint:
    """One grid point: its swept values, its resolved config and its run folder's state."""

    index: int  # 1-based
    name: str
    values: dict[str, Any]  # swept key -> value as the config holds it
    cfg: Config
    folder: Path
    state: str  # "new", "resume" (a last.ckpt, not finished) or "done"


@dataclass
class SweepPlan:
    """A checked sweep: the swept keys and their distinct values, the points in order, the output
    folder, and the sweep.csv rows of the points run so far."""

    keys: list[str]
    values: dict[str, list[Any]]  # swept key -> its values, in the order given
    points: list[SweepPoint]
    output: Path
    rows: list[dict[str, Any]] = field(default_factory=list)


def _get(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _shown(point: SweepPoint) -> str:
    return " ".join(f"{k}={value_text(v)}" for k, v in point.values.items())


def _overridden_keys(overrides: list[str]) -> dict[str, str]:
    out = {}
    for text in overrides:
        try:
            key, _ = parse_override(text)
        except ConfigError:
            continue  # load_config names it
        out[key] = text
    return out


def _flag_keys(extra: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"data": {"root": "x"}}`` (the config values of flags such as --data-root) ->
    ``{"data.root": "x"}``."""
    out: dict[str, Any] = {}
    for key, value in extra.items():
        if isinstance(value, dict):
            out.update(_flag_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ----------------------------------------------------------------------------- run folders


def read_records(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash: that run is not finished
    return records


def final_record(folder: Path) -> dict[str, Any] | None:
    """The record a finished run writes last (its test metrics and the selection), or None."""
    finals = [r for r in read_records(folder) if "selection" in r and "test_mAP" in r]
    return finals[-1] if finals else None


def run_state(folder: Path) -> str:
    """``done`` (finished run), ``resume`` (a checkpoint, not finished) or ``new``."""
    if final_record(folder) is not None:
        return "done"
    if (folder / "last.ckpt").is_file():
        return "resume"
    return "new"


def _check_same_settings(point: SweepPoint) -> None:
    """A run already in the point's folder must have been made with the point's settings."""
    path = point.folder / "config.yaml"
    try:
        recorded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        recorded = None
    if not isinstance(recorded, dict):
        raise UserError(
            f"{point.folder} holds a run without a readable config.yaml; "
            "move it away or choose another --output"
        )
    changed = changed_settings(recorded, point.cfg)
    if changed:
        raise UserError(
            f"{point.folder} holds a run with other settings: {changed}; "
            "repeat the sweep's own config and overrides, or choose another --output"
        )


# ----------------------------------------------------------------------------- data


def _parse_point_data(point: SweepPoint) -> None:
    """Parse the point's dataset as its training will, without writing anything."""
    d = point.cfg.data
    if d.synthetic:
        # dataset_from_config refuses a synthetic tree of other data.synth settings; the folder
        # exists (the caller checked), so it only reads. Its module imports torch: it loads on
        # this first use (mambapro.data's lazy exports), not when the sweep module is imported.
        data.dataset_from_config(d)
    else:
        build_dataset(d.dataset, d.root, skip_broken=d.skip_broken, verify=d.verify)


def _check_data(points: list[SweepPoint]) -> None:
    """Refuse, before the first point trains, a point whose dataset its training would refuse.

    Each distinct data config is parsed once (a real dataset's image headers are read). A
    synthetic tree that is not there yet is not generated: the first point at its folder will
    generate it, and a later point there must then ask for the same ``data.synth`` settings.
    """
    generated: dict[Path, tuple[dict[str, Any], SweepPoint]] = {}  # folder -> synth settings, point
    parsed: set[tuple[Any, ...]] = set()
    for point in points:
        if point.state == "done":  # not trained again: its data is not read
            continue
        d = point.cfg.data
        folder = synth.dataset_dir(d.dataset, d.root).resolve()
        wanted = dataclasses.asdict(d.synth)
        if folder in generated:
            asked, first = generated[folder]
            if d.synthetic and wanted != asked:
                changed = ", ".join(f"{k}: {asked[k]} -> {v}" for k, v in wanted.items() if asked.get(k) != v)
                raise DatasetError(
                    f"sweep point {_shown(point)}: point {_shown(first)} generates the synthetic dataset "
                    f"{folder} with other data.synth settings ({changed}); give each data.synth "
                    "setting its own data.root"
                )
            continue
        if d.synthetic and not folder.exists():
            generated[folder] = (wanted, point)
            continue
        key = (d.dataset.lower(), folder, d.synthetic and tuple(wanted.items()), d.skip_broken, d.verify)
        if key in parsed:
            continue
        try:
            # The point's training parses again and warns then; once is enough.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _parse_point_data(point)
        except UserError as err:
            raise type(err)(f"sweep point {_shown(point)}: {err}") from None
        parsed.add(key)


# ----------------------------------------------------------------------------- plan


def plan_sweep(
    config: str | Path | None,
    sets: list[str] | None,
    output: str | Path,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    seeds: int | None = None,
) -> SweepPlan:
    """Validate the whole grid and the output folder; nothing is written.

    Every point's config is loaded (``overrides``, then the point's values) so that a bad key
    or value at any point is refused now, naming the point; so is a point whose dataset its
    training would refuse (:func:`_check_data`). ``seeds=N`` repeats every point with the
    seeds ``train.seed``, ``train.seed + 1``, ..., ``train.seed + N - 1`` (the seed of the config
    and overrides): ``train.seed`` becomes the last swept key, the repetition axis of the
    summary (:data:`SEED_KEY`).
    """
    overrides = list(overrides or [])
    sets = list(sets or [])
    out = check_output_folder(output, "--output", "sweep", SWEEP_OUTPUTS)
    check_sweep_seeds(seeds)
    if seeds is not None:
        if any(text.split("=", 1)[0].strip() == SEED_KEY for text in sets):
            raise UserError(f"--seeds {seeds} and --set {SEED_KEY}=...: give the seeds one way; drop one")
    grid = parse_sets(sets) if sets or seeds is None else {}
    if seeds is not None:
        base = load_config(config, overrides, extra=extra).train.seed
        grid[SEED_KEY] = [str(base + i) for i in range(seeds)]
        given = _overridden_keys(overrides)
        if SEED_KEY in given:  # the seeds start from it; it must not also be an override
            overrides = [o for o in overrides if o != given[SEED_KEY]]
    if "train.output" in grid:
        raise UserError("--set train.output: the sweep sets each point's run folder (under --output)")
    given = _overridden_keys(overrides)
    if "train.output" in given:
        raise UserError(f"{given['train.output']}: the sweep sets each point's run folder; use --output")
    flags = _flag_keys(extra or {})
    for key in grid:
        if key in given:
            raise UserError(f"{key} is both swept (--set) and overridden ({given[key]}); drop one")
        if key in flags:  # the swept values would win over the flag without a word
            flag = _FLAGS.get(key, f"the flag that sets {key}")
            raise UserError(f"{key} is both swept (--set) and given by {flag} {flags[key]}; drop one")
    # The base config alone first: an error of the config or the overrides is not a point's.
    load_config(config, overrides, extra=extra)

    keys = list(grid)
    typed: dict[str, dict[str, Any]] = {k: {} for k in keys}  # value text -> typed value
    points: list[SweepPoint] = []
    for index, combo in enumerate(itertools.product(*(grid[k] for k in keys)), start=1):
        texts = [f"{k}={v}" for k, v in zip(keys, combo)]
        try:
            cfg = load_config(config, [*overrides, *texts], extra=extra)
        except ConfigError as err:
            raise ConfigError(f"sweep point {' '.join(texts)}: {err}") from None
        values = {k: _get(cfg, k) for k in keys}
        for k, text in zip(keys, combo):
            typed[k][text] = values[k]
        points.append(SweepPoint(index, point_name(values), values, cfg, out, "new"))
    for key, seen in typed.items():
        texts = list(seen)
        for i, text in enumerate(texts):
            same = [t for t in texts[:i] if seen[t] == seen[text] and type(seen[t]) is type(seen[text])]
            if same:
                raise UserError(
                    f"--set {key}: the values {same[0]} and {text} are the same "
                    f"({value_text(seen[text])}); give each value once"
                )
    names: dict[str, SweepPoint] = {}
    for point in points:
        if point.name in names:  # different values, the same file-name characters
            raise UserError(
                f"--set: the points {_shown(names[point.name])} and {_shown(point)} would share "
                f"the folder {point.name}; sweep values that differ in letters or digits"
            )
        names[point.name] = point
        point.folder = out / point.name
        point.cfg.train.output = str(point.folder)
        point.state = run_state(point.folder)
        # A new point is a new run: its folder takes no file a run writes (train refuses it too,
        # but only when the points before it have trained).
        check_output_folder(
            point.folder, f"point {point.name}", "train", RUN_OUTPUTS if point.state == "new" else ()
        )
        if point.state != "new":
            _check_same_settings(point)
    _check_data(points)
    values = {k: list(v.values()) for k, v in typed.items()}  # distinct, in the order given
    return SweepPlan(keys, values, points, out)
