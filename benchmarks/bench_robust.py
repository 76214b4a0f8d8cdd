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
    python benchmarks/bench_robust.py --rates 0.2:feature --append   # one more row, same file

A rate may name the dropout mode (``RATE:input``, the default, or ``RATE:feature``:
``train.modality_dropout_mode``, learned tokens for the missing modality before MA).
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
from mambapro.modalities import MISSING_SETTINGS, missing_label
from mambapro.retrieval.testing import cross_missing_matrix
from mambapro.train.checkpoint import load_model
from mambapro.train.run_data import prepare_data
from mambapro.train.trainer import run_training

RESULTS = Path(__file__).resolve().parent / "results"


def measure(rate: float, mode: str, epochs: int | None, runs: Path, data_root: str | None) -> dict:
    out = runs / f"rate_{rate}_{mode}"
    overrides = [
        f"train.modality_dropout={rate}",
        f"train.modality_dropout_mode={mode}",
        f"train.output={out}",
    ]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    if data_root is not None:
        overrides.append(f"data.root={data_root}")
    cfg = load_config("demo", overrides)
    t0 = time.perf_counter()
    run_training(cfg, quiet=True, show_data=False)
    minutes = (time.perf_counter() - t0) / 60
    model, cfg, _ = load_model(out / "last.ckpt")
    data = prepare_data(cfg)
    matrix = cross_missing_matrix(model, cfg, data.name, data.query, data.gallery, torch.device("cpu"))
    diag = {s: matrix[(s, s)].mAP for s in MISSING_SETTINGS}
    six = [diag[s] for s in MISSING_SETTINGS if s != "full"]
    return {
        "rate": rate,
        "mode": mode,
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
        label = f"{r['rate']:g}" + (" feat" if r["mode"] == "feature" else "")
        cells = [label, *(f"{100 * r['diag'][s]:.1f}" for s in MISSING_SETTINGS)]
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
    ap.add_argument("--append", action="store_true", help="add the rows to the existing results file")
    args = ap.parse_args()
    runs = []
    for spec in args.rates.split(","):
        rate, _, mode = spec.partition(":")
        if (mode or "input") not in ("input", "feature"):
            ap.error(f"--rates {spec}: the mode must be input or feature")
        runs.append((float(rate), mode or "input"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate, mode in runs:
            rows.append(measure(rate, mode, args.epochs, Path(tmp), args.data_root))
            print(f"rate {rate:g}: full {100 * rows[-1]['diag']['full']:.1f} mAP", flush=True)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    header = (
        f"demo preset ({args.epochs or 'preset'} epochs, seed of the preset) per modality-dropout rate; "
        f"mAP (%) on the synthetic test set; {machine}, torch {torch.__version__}"
    )
    table = format_rows(rows, header)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "bench_robust.txt"
    if args.append and path.is_file():
        new_rows = table.splitlines()[3:]  # below the header and its rule
        path.write_text(
            path.read_text() + "\n".join(f"{r}   (appended: {args.rates})" for r in new_rows) + "\n"
        )
    else:
        path.write_text(table + "\n")


if __name__ == "__main__":
    main()
