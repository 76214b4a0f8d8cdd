"""The results of a sweep: ``sweep.csv`` and ``sweep.png`` in the output folder, and the summary
printed at the end.

``sweep.csv`` (``point``, one column per swept key, ``mAP``, ``R1``, ``mINP`` in percent,
``params`` the trainable parameter count, ``seconds`` the run's summed epoch times) is rewritten
atomically after every point, from what each point's run folder records; ``sweep.png`` plots mAP
against each swept key, one subplot per key and one line per combination of the other keys'
values (the paper's Figs. 8-9).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mambapro import reports
from mambapro.errors import UserError
from mambapro.files import atomic_write
from mambapro.train.sweep_grid import value_text
from mambapro.train.sweep_plan import SweepPlan, SweepPoint, final_record, read_records

__all__ = ["CSV_NAME", "PLOT_NAME", "format_summary", "plot_sweep", "sweep_row", "write_csv"]

CSV_NAME = "sweep.csv"
PLOT_NAME = "sweep.png"


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


def plot_sweep(plan: SweepPlan, path: Path, title: str = "") -> Path:
    """mAP against each swept key, one subplot per key, one line per value of the other keys."""
    by_name = {row["point"]: row for row in plan.rows}
    n = len(plan.keys)
    fig = Figure(figsize=(4.2 * n, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, key in enumerate(plan.keys):
        ax = fig.add_subplot(1, n, i + 1)
        others = [k for k in plan.keys if k != key]
        ticks = [value_text(v) for v in plan.values[key]]
        lines: dict[tuple[str, ...], list[tuple[int, float]]] = {}
        for point in plan.points:
            row = by_name.get(point.name)
            if row is None:
                continue
            group = tuple(f"{k}={value_text(point.values[k])}" for k in others)
            lines.setdefault(group, []).append((ticks.index(value_text(point.values[key])), row["mAP"]))
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
