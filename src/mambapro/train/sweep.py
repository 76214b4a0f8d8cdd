"""``mambapro sweep``: one training per point of a hyper-parameter grid, one table, one plot.

A grid is the Cartesian product of ``--set KEY=V1,V2,...`` lists (values parsed exactly like
``key=value`` config overrides; commas inside ``[...]`` belong to a list value). Every point
trains sequentially in ``OUTPUT/<point name>/`` (``model.ma_d_state=16``; several keys joined
by ``+``, list items by ``,``). Re-running the same command skips the finished points (their
``metrics.jsonl`` holds the final test record, the last thing a run writes) and resumes the
interrupted ones from their ``last.ckpt``, so an interrupted sweep is continued by repeating it.

``OUTPUT/sweep.csv`` (``point``, one column per swept key, ``mAP``, ``R1``, ``mINP`` in percent,
``params`` the trainable parameter count, ``seconds`` the run's summed epoch times) is rewritten
atomically after every point; ``OUTPUT/sweep.png`` plots mAP against each swept key, one subplot
per key and one line per combination of the other keys' values (the paper's Figs. 8-9).

Everything that can refuse the sweep (a bad ``--set``, a point whose config does not validate,
a point folder that holds a run with other settings, a point whose dataset does not parse) is
checked by :func:`plan_sweep`, before any training starts. A config error is refused without
importing torch: the torch-based modules load lazily, through :mod:`mambapro.train`,
when the first point trains (or when an existing synthetic tree's settings are checked).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mambapro import data, reports, train
from mambapro.config import Config, load_config, parse_override
from mambapro.data import build_dataset, synth
from mambapro.errors import ConfigError, DatasetError, UserError, check_output_dir
from mambapro.files import atomic_write
from mambapro.train.runlog import changed_settings

__all__ = ["SweepPlan", "SweepPoint", "parse_sets", "plan_sweep", "point_name", "run_sweep", "run_state"]

CSV_NAME = "sweep.csv"
PLOT_NAME = "sweep.png"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
_MAX_NAME = 200  # bytes; file systems allow 255
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
    keys: list[str]
    values: dict[str, list[Any]]  # swept key -> its values, in the order given
    points: list[SweepPoint]
    output: Path
    rows: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------- the grid


def _split_values(text: str) -> list[str]:
    """``8,16,[1,2]`` -> ``["8", "16", "[1,2]"]``: commas inside brackets or quotes stay."""
    items, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    items.append("".join(cur))
    return [item.strip() for item in items]


def parse_sets(sets: list[str]) -> dict[str, list[str]]:
    """``["KEY=V1,V2", ...]`` -> ``{KEY: ["V1", "V2"]}`` (value texts, not yet typed)."""
    grid: dict[str, list[str]] = {}
    if not sets:
        raise UserError("--set: give at least one KEY=V1,V2,... to sweep")
    for text in sets:
        if "=" not in text:
            raise UserError(f"--set {text}: must look like KEY=V1,V2,...")
        key, raw = (part.strip() for part in text.split("=", 1))
        if not key or any(not part for part in key.split(".")):
            raise UserError(f"--set {text}: the key is empty")
        if key in grid:
            raise UserError(f"--set {key} is given twice; list all its values in one --set {key}=V1,V2,...")
        if not raw:
            raise UserError(f"--set {key}=: no values; give {key}=V1,V2,...")
        items = _split_values(raw)
        if any(not item for item in items):
            raise UserError(f"--set {key}={raw}: an empty value in the list")
        twice = [item for i, item in enumerate(items) if item in items[:i]]
        if twice:
            raise UserError(f"--set {key}: the value {twice[0]} is given twice; give each value once")
        grid[key] = items
    return grid


def _value_text(value: Any) -> str:
    """A value as the CSV and the plot show it (YAML-like: ``null``, ``true``, ``[8, 9]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    return str(value)


def _name_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_name_text(v) for v in value)
    return _value_text(value)


def point_name(values: dict[str, Any]) -> str:
    """The folder name of a point: ``model.ma_d_state=16+model.ma_dt_rank=8`` (file-name safe)."""
    name = _UNSAFE.sub("_", "+".join(f"{k}={_name_text(v)}" for k, v in values.items()))
    if len(name.encode()) > _MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[: _MAX_NAME - 12]}~{digest}"
    return name


def _get(cfg: Config, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _shown(point: SweepPoint) -> str:
    return " ".join(f"{k}={_value_text(v)}" for k, v in point.values.items())


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


def _read_records(folder: Path) -> list[dict[str, Any]]:
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


def _final_record(folder: Path) -> dict[str, Any] | None:
    """The record a finished run writes last (its test metrics and the selection), or None."""
    finals = [r for r in _read_records(folder) if "selection" in r and "test_mAP" in r]
    return finals[-1] if finals else None


def run_state(folder: Path) -> str:
    """``done`` (finished run), ``resume`` (a checkpoint, not finished) or ``new``."""
    if _final_record(folder) is not None:
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
    sets: list[str],
    output: str | Path,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> SweepPlan:
    """Validate the whole grid and the output folder; nothing is written.

    Every point's config is loaded (``overrides``, then the point's values) so that a bad key
    or value at any point is refused now, naming the point; so is a point whose dataset its
    training would refuse (:func:`_check_data`).
    """
    overrides = list(overrides or [])
    out = check_output_dir(output, "--output")
    grid = parse_sets(sets)
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
                    f"({_value_text(seen[text])}); give each value once"
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
        check_output_dir(point.folder, f"point {point.name}")
        point.cfg.train.output = str(point.folder)
        point.state = run_state(point.folder)
        if point.state != "new":
            _check_same_settings(point)
    _check_data(points)
    values = {k: list(v.values()) for k, v in typed.items()}  # distinct, in the order given
    return SweepPlan(keys, values, points, out)


# ----------------------------------------------------------------------------- results


def _row(plan: SweepPlan, point: SweepPoint, status: str) -> dict[str, Any]:
    """The sweep.csv row of a finished point, read back from its run folder."""
    final = _final_record(point.folder)
    if final is None:
        raise UserError(f"{point.folder}: the run ended without its final test record in metrics.jsonl")
    epochs = [r for r in _read_records(point.folder) if "seconds" in r and "selection" not in r]
    meta = json.loads((point.folder / "meta.json").read_text())
    # a lazy export: torch loads with the first point, not when a sweep is refused.
    params = reports.parameter_report(point.cfg, meta["num_classes"], meta["num_cameras"])["trainable"]
    row: dict[str, Any] = {"point": point.name}
    row.update({k: _value_text(point.values[k]) for k in plan.keys})
    row.update(
        {
            "mAP": round(100 * final["test_mAP"], 2),
            "R1": round(100 * final["test_Rank-1"], 2),
            "mINP": round(100 * final["test_mINP"], 2),
            "params": int(params),
            "seconds": round(sum(r["seconds"] for r in epochs), 2),
            "status": status,
        }
    )
    return row


def _columns(plan: SweepPlan) -> list[str]:
    return ["point", *plan.keys, "mAP", "R1", "mINP", "params", "seconds"]


def write_csv(plan: SweepPlan, path: Path) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(plan), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(plan.rows)
    with atomic_write(path) as fh:
        fh.write(buf.getvalue().encode())
    return path


def plot_sweep(plan: SweepPlan, path: Path, title: str = "") -> Path:
    """mAP against each swept key, one subplot per key, one line per value of the other keys."""
    by_name = {row["point"]: row for row in plan.rows}
    n = len(plan.keys)
    fig = Figure(figsize=(4.2 * n, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, key in enumerate(plan.keys):
        ax = fig.add_subplot(1, n, i + 1)
        others = [k for k in plan.keys if k != key]
        ticks = [_value_text(v) for v in plan.values[key]]
        lines: dict[tuple[str, ...], list[tuple[int, float]]] = {}
        for point in plan.points:
            row = by_name.get(point.name)
            if row is None:
                continue
            group = tuple(f"{k}={_value_text(point.values[k])}" for k in others)
            lines.setdefault(group, []).append((ticks.index(_value_text(point.values[key])), row["mAP"]))
        for group, xy in lines.items():
            xy.sort()
            xs, ys = [x for x, _ in xy], [y for _, y in xy]
            ax.plot(xs, ys, marker="o", label=", ".join(group) or None)
            for x, y in xy:
                ax.annotate(
                    f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7
                )
        ax.set_xticks(range(len(ticks)), ticks, rotation=30 if max(map(len, ticks)) > 6 else 0)
        ax.set_xlim(-0.5, len(ticks) - 0.5)
        ax.margins(y=0.15)  # room for the value labels above the points
        ax.set_xlabel(key)
        ax.set_ylabel("mAP (%)")
        ax.grid(True, alpha=0.3)
        if others and lines:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png")
    return path


def format_summary(plan: SweepPlan) -> str:
    cols = ["point", "mAP", "R1", "mINP", "params", "seconds", "status"]
    width = max([len("point")] + [len(p.name) for p in plan.points])
    lines = [f"{'point':<{width}}  {'mAP':>6} {'R1':>6} {'mINP':>6} {'params':>12} {'seconds':>9}  status"]
    by_name = {row["point"]: row for row in plan.rows}
    for p in plan.points:
        row = by_name.get(p.name)
        if row is None:
            lines.append(f"{p.name:<{width}}  {'-':>6} {'-':>6} {'-':>6} {'-':>12} {'-':>9}  not run")
            continue
        r = {c: row[c] for c in cols}
        lines.append(
            f"{r['point']:<{width}}  {r['mAP']:>6.2f} {r['R1']:>6.2f} {r['mINP']:>6.2f} "
            f"{r['params']:>12,} {r['seconds']:>9.2f}  {r['status']}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- run


def run_sweep(plan: SweepPlan, quiet: bool = False) -> SweepPlan:
    """Train (or skip, or resume) every point in order; write sweep.csv and sweep.png."""
    total = len(plan.points)
    plan.rows = []
    shown_data = False
    start = time.perf_counter()
    for point in plan.points:
        where = f"[{point.index}/{total}] {point.name}"
        if point.state == "done":
            print(f"{where}: finished earlier, skipped", flush=True)
            status = "skipped"
        else:
            if point.state == "resume":
                print(f"{where}: resuming the interrupted run in {point.folder}", flush=True)
                status = "resumed"
            else:
                print(f"{where}: training in {point.folder}", flush=True)
                status = "trained"
            try:
                train.run_training(
                    point.cfg, resume=point.state == "resume", quiet=quiet, show_data=not shown_data
                )
            except KeyboardInterrupt:
                print(
                    f"sweep interrupted at point {point.index}/{total} ({point.name}); "
                    "repeat the command to resume it",
                    flush=True,
                )
                raise
            except UserError as err:
                raise type(err)(
                    f"sweep point {point.index}/{total} {point.name}: {err} (the points before it are "
                    "kept; repeat the command to continue)"
                ) from None
            shown_data = True
            point.state = "done"
        plan.rows.append(_row(plan, point, status))
        write_csv(plan, plan.output / CSV_NAME)
    plot_sweep(plan, plan.output / PLOT_NAME, title=f"{plan.points[0].cfg.data.dataset} sweep")
    took = time.perf_counter() - start
    print(format_summary(plan))
    print(
        f"{total} point(s) in {took:.1f} s: {plan.output / CSV_NAME}, {plan.output / PLOT_NAME}",
        flush=True,
    )
    return plan
