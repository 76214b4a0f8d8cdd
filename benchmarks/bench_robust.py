"""Robustness to missing modalities: the demo model trained with and without modality dropout.

Trains the ``demo`` preset once per ``train.modality_dropout`` rate (same seed, same epochs, same
synthetic data; rate 0 is the plain demo, the baseline of the ratios, trained in the same run),
then evaluates each final checkpoint on the 7 x 7 any-to-any matrix (query subset x gallery
subset; its diagonal is the ``--missing all`` table). Prints one table and writes it to
``benchmarks/results/bench_robust.txt``:

    full mAP | the six missing settings (-R ... -NT, query and gallery alike) | their mean and
    its ratio to full | the mean of the 49 cross cells | training minutes

    python benchmarks/bench_robust.py                    # rates 0 and 0.5, the demo's 12 epochs
    python benchmarks/bench_robust.py --rates 0,0.3,0.5 --epochs 6
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mambapro.config import load_config
from mambapro.engine.checkpoint import load_model
from mambapro.engine.data import prepare_data
from mambapro.engine.evaluate import cross_missing_matrix
from mambapro.engine.trainer import run_training
from mambapro.modalities import MISSING_SETTINGS, missing_label

RESULTS = Path(__file__).resolve().parent / "results"


def measure(rate: float, epochs: int | None, runs: Path, data_root: str | None) -> dict:
    overrides = [f"train.modality_dropout={rate}", f"train.output={runs / f'rate_{rate}'}"]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    if data_root is not None:
        overrides.append(f"data.root={data_root}")
    cfg = load_config("demo", overrides)
    t0 = time.perf_counter()
    run_training(cfg, quiet=True, show_data=False)
    minutes = (time.perf_counter() - t0) / 60
    model, cfg, _ = load_model(runs / f"rate_{rate}" / "last.ckpt")
    data = prepare_data(cfg)
    matrix = cross_missing_matrix(model, cfg, data.name, data.query, data.gallery, torch.device("cpu"))
    diag = {s: matrix[(s, s)].mAP for s in MISSING_SETTINGS}
    six = [diag[s] for s in MISSING_SETTINGS if s != "full"]
    return {
        "rate": rate,
        "diag": diag,
        "six_mean": float(np.mean(six)),
        "cross_mean": float(np.mean([r.mAP for r in matrix.values()])),
        "minutes": minutes,
    }


def format_rows(rows: list[dict], header: str) -> str:
    labels = [missing_label(s) for s in MISSING_SETTINGS]
    cols = ["dropout", *labels, "six mean", "/ full", "cross mean", "train min"]
    lines = [header, " | ".join(f"{c:>9}" for c in cols)]
    lines.append("-" * len(lines[-1]))
    for r in rows:
        cells = [f"{r['rate']:g}", *(f"{100 * r['diag'][s]:.1f}" for s in MISSING_SETTINGS)]
        cells += [
            f"{100 * r['six_mean']:.1f}",
            f"{100 * r['six_mean'] / max(r['diag']['full'], 1e-12):.0f}%",
            f"{100 * r['cross_mean']:.1f}",
            f"{r['minutes']:.1f}",
        ]
        lines.append(" | ".join(f"{c:>9}" for c in cells))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="0,0.5", help="comma-separated train.modality_dropout rates (0 first)")
    ap.add_argument("--epochs", type=int, default=None, help="default: the demo preset's")
    ap.add_argument("--data-root", default=None, help="default: the demo preset's (generated if absent)")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in rates:
            rows.append(measure(rate, args.epochs, Path(tmp), args.data_root))
            print(f"rate {rate:g}: full {100 * rows[-1]['diag']['full']:.1f} mAP", flush=True)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    header = (
        f"demo preset ({args.epochs or 'preset'} epochs, seed of the preset) per modality-dropout rate; "
        f"mAP (%) on the synthetic test set; {machine}, torch {torch.__version__}"
    )
    table = format_rows(rows, header)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_robust.txt").write_text(table + "\n")


if __name__ == "__main__":
    main()
