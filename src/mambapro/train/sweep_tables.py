"""The results of a sweep: ``sweep.csv`` and ``sweep.png`` in the output folder, and the summary
printed at the end.

``sweep.csv`` (``point``, one column per swept key, ``mAP``, ``R1``, ``mINP`` in percent,
``params`` the trainable parameter count, ``seconds`` the run's summed epoch times) is rewritten
atomically after every point, from what each point's run folder records; ``sweep.png`` plots mAP
against each swept key, one subplot per key and one line per combination of the other keys'
values (the paper's Figs. 8-9).

``train.seed`` is the repetition axis (``sweep --seeds N``, or ``--set train.seed=1,2,3``): when
it is swept, the runs that differ only in it are one grid point, and ``sweep_summary.csv`` and
the printed summary give per point the mean, the sample standard deviation (ddof=1; empty for a
single run) and the min and max over its seeds of mAP, Rank-1 and mINP; the plot then shows the
mean with the standard deviation as an error bar against each other key.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mambapro import reports
from mambapro.errors import UserError
from mambapro.files import atomic_write
from mambapro.train.sweep_grid import value_text
from mambapro.train.sweep_plan import (
    CSV_NAME,
    PLOT_NAME,
    SEED_KEY,
    SUMMARY_NAME,
    SweepPlan,
    SweepPoint,
    final_record,
    read_records,
)

__all__ = [
    "CSV_NAME",
    "PLOT_NAME",
    "SUMMARY_NAME",
    "format_seed_summary",
    "format_summary",
    "plot_sweep",
    "seed_summary",
    "sweep_row",
    "write_csv",
    "write_seed_summary",
]

#: The metrics summarised over seeds (sweep.csv's columns, in percent).
METRICS = ("mAP", "R1", "mINP")


def sweep_row(plan: SweepPlan, point: SweepPoint, status: str) -> dict[str, Any]:
    """The sweep.csv row of a finished point, read back from its run folder."""
    final = final_record(point.folder)
    if final is None:
        raise UserError(f"{point.folder}: the run ended without its final test record in metrics.jsonl")
    epochs = [r for r in read_records(point.folder) if "seconds" in r and "selection" not in r]
    meta = json.loads((point.folder / "meta.json").read_text())
    # a lazy export: torch loads with the first point, not when a sweep is refused.
    params = reports.parameter_report(point.cfg, meta["num_classes"], meta["num_cameras"])["trainable"]
    row: dict[str, Any] = {"point": point.name}
    row.update({k: value_text(point.values[k]) for k in plan.keys})
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


def grid_keys(plan: SweepPlan) -> list[str]:
    """The swept keys but the repetition axis ``train.seed`` (all keys if it is the only one)."""
    others = [k for k in plan.keys if k != SEED_KEY]
    return others if others and SEED_KEY in plan.keys else list(plan.keys)


def seed_summary(plan: SweepPlan) -> list[dict[str, Any]]:
    """Per grid point (the values of the swept keys other than ``train.seed``), over its seeds:
    ``runs``, ``seeds`` and ``<metric>_mean``, ``_std`` (sample, ddof=1; None for one run), ``_min``
    and ``_max`` of each of :data:`METRICS`, from the sweep.csv rows; [] without a seed axis."""
    if SEED_KEY not in plan.keys:
        return []
    others = [k for k in plan.keys if k != SEED_KEY]
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in plan.rows:
        groups.setdefault(tuple(row[k] for k in others), []).append(row)
    out = []
    for values, rows in groups.items():
        entry: dict[str, Any] = dict(zip(others, values))
        entry["runs"] = len(rows)
        entry["seeds"] = " ".join(str(r[SEED_KEY]) for r in rows)
        for m in METRICS:
            xs = [float(r[m]) for r in rows]
            entry[f"{m}_mean"] = statistics.fmean(xs)
            entry[f"{m}_std"] = statistics.stdev(xs) if len(xs) > 1 else None
            entry[f"{m}_min"] = min(xs)
            entry[f"{m}_max"] = max(xs)
        out.append(entry)
    return out


def write_seed_summary(plan: SweepPlan, path: Path) -> Path | None:
    """``sweep_summary.csv`` (:func:`seed_summary`, 4 decimals); None when no seed axis."""
    rows = seed_summary(plan)
    if not rows:
        return None
    others = [k for k in plan.keys if k != SEED_KEY]
    stats = [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "min", "max")]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*others, "runs", "seeds", *stats], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else round(v, 4) if k in stats else v) for k, v in row.items()})
    with atomic_write(path) as fh:
        fh.write(buf.getvalue().encode())
    return path


def format_seed_summary(plan: SweepPlan) -> str:
    """The printed summary over seeds: per grid point mean ± sample std (ddof=1) [min, max]."""
    rows = seed_summary(plan)
    if not rows:
        return ""
    others = [k for k in plan.keys if k != SEED_KEY]

    def cell(row: dict[str, Any], m: str) -> str:
        std = "-" if row[f"{m}_std"] is None else f"{row[f'{m}_std']:.2f}"
        return f"{row[f'{m}_mean']:.2f} ± {std} [{row[f'{m}_min']:.2f}, {row[f'{m}_max']:.2f}]"

    labels = [" ".join(f"{k}={row[k]}" for k in others) or "(the config)" for row in rows]
    cells = [[cell(row, m) for m in METRICS] for row in rows]
    width = max(len("grid point"), *map(len, labels))
    cw = max(len(c) for line in cells for c in line)
    lines = [
        f"over seeds ({SEED_KEY}): mean ± sample std (ddof=1) [min, max], in %",
        (f"{'grid point':<{width}}  {'runs':>4}  " + "  ".join(f"{m:<{cw}}" for m in METRICS)).rstrip(),
    ]
    for label, row, line in zip(labels, rows, cells):
        lines.append(f"{label:<{width}}  {row['runs']:>4}  " + "  ".join(f"{c:<{cw}}" for c in line).rstrip())
    return "\n".join(lines)


def plot_sweep(plan: SweepPlan, path: Path, title: str = "") -> Path:
    """mAP against each swept key, one subplot per key, one line per value of the other keys;
    with a seed axis the mean over seeds, its sample standard deviation as error bars, against
    each other key."""
    by_name = {row["point"]: row for row in plan.rows}
    keys = grid_keys(plan)
    repeated = SEED_KEY in plan.keys and SEED_KEY not in keys
    n = len(keys)
    fig = Figure(figsize=(4.2 * n, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, n, i + 1)
        others = [k for k in keys if k != key]
        ticks = [value_text(v) for v in plan.values[key]]
        lines: dict[tuple[str, ...], dict[int, list[float]]] = {}
        for point in plan.points:
            row = by_name.get(point.name)
            if row is None:
                continue
            group = tuple(f"{k}={value_text(point.values[k])}" for k in others)
            x = ticks.index(value_text(point.values[key]))
            lines.setdefault(group, {}).setdefault(x, []).append(row["mAP"])
        for group, points in lines.items():
            xy = sorted((x, statistics.fmean(ys)) for x, ys in points.items())
            xs, ys = [x for x, _ in xy], [y for _, y in xy]
            label = ", ".join(group) or None
            if repeated:
                err = [statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
            else:
                ax.plot(xs, ys, marker="o", label=label)
            for x, y in xy:
                ax.annotate(
                    f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7
                )
        ax.set_xticks(range(len(ticks)), ticks, rotation=30 if max(map(len, ticks)) > 6 else 0)
        ax.set_xlim(-0.5, len(ticks) - 0.5)
        ax.margins(y=0.15)  # room for the value labels above the points
        ax.set_xlabel(key)
        ax.set_ylabel("mAP (%), mean ± std over seeds" if repeated else "mAP (%)")
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
