"""``mambapro sweep``: one training per point of a hyper-parameter grid, one table, one plot.

A grid is the Cartesian product of ``--set KEY=V1,V2,...`` lists (:mod:`~mambapro.train.sweep_grid`);
``--seeds N`` adds ``train.seed`` with N values, the repetition axis the summary averages over.
Every point trains sequentially in ``OUTPUT/<point name>/``. Re-running the same command skips the
finished points (their ``metrics.jsonl`` holds the final test record, the last thing a run writes)
and resumes the interrupted ones from their ``last.ckpt``, so an interrupted sweep is continued by
repeating it.

This module runs a plan (:func:`run_sweep`). Everything that can refuse the sweep is checked
before, without torch, by :func:`~mambapro.train.sweep_plan.plan_sweep`; the tables it writes
after every point are :mod:`~mambapro.train.sweep_tables`. The public names of both are
re-exported here, where the CLI imports them.
"""

from __future__ import annotations

import time

from mambapro import train
from mambapro.errors import UserError
from mambapro.files import claim_output_folder
from mambapro.train.sweep_grid import parse_sets, point_name
from mambapro.train.sweep_plan import SweepPlan, SweepPoint, plan_sweep, run_state
from mambapro.train.sweep_tables import (
    CSV_NAME,
    PLOT_NAME,
    SUMMARY_NAME,
    format_seed_summary,
    format_summary,
    plot_sweep,
    sweep_row,
    write_csv,
    write_seed_summary,
)

__all__ = ["SweepPlan", "SweepPoint", "parse_sets", "plan_sweep", "point_name", "run_sweep", "run_state"]


def run_sweep(plan: SweepPlan, quiet: bool = False) -> SweepPlan:
    """Train (or skip, or resume) every point in order; write sweep.csv and sweep.png."""
    total = len(plan.points)
    claim_output_folder(plan.output, "sweep")
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
        plan.rows.append(sweep_row(plan, point, status))
        write_csv(plan, plan.output / CSV_NAME)
    plot_sweep(plan, plan.output / PLOT_NAME, title=f"{plan.points[0].cfg.data.dataset} sweep")
    summary = write_seed_summary(plan, plan.output / SUMMARY_NAME)
    took = time.perf_counter() - start
    print(format_summary(plan))
    if summary is not None:
        print(format_seed_summary(plan))
    written = [plan.output / CSV_NAME, *([summary] if summary else []), plan.output / PLOT_NAME]
    print(f"{total} point(s) in {took:.1f} s: {', '.join(map(str, written))}", flush=True)
    return plan
