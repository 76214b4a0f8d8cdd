"""Exported models (``mambapro export``): onnxruntime on the CPU against PyTorch eager, in one run.

Models (random weights: speed does not depend on them): the ``demo`` preset (tiny backbone,
128x64) and the ``rgbnt201`` preset (CLIP ViT-B/16, 256x128, MA on), each saved as a checkpoint
and exported with :func:`mambapro.deploy.export.export_model` (which checks the file against
PyTorch). Measured per model and selective-scan form (``--forms``; ``mambapro export --scan``):

* export seconds (tracing + conversion + the built-in check) and the file size;
* latency at batch 1 and throughput at batch 32 (triplets per second), median of ``--repeats``
  timed runs after one warm-up, for PyTorch eager (the checkpoint's model with its own scan, the
  baseline) and for onnxruntime (CPU execution provider, default threads) on the ONNX file;
* the largest relative feature difference, onnxruntime against PyTorch, on the timed inputs.

Usage: ``python benchmarks/bench_export.py [--models demo,rgbnt201] [--forms parallel]
[--unrolled-on demo]``
(writes ``benchmarks/results/bench_export.txt``)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from _checkpoint import random_checkpoint
from _machine import describe
from mambapro.config import load_config
from mambapro.deploy.export import ExportedFile, TestTimeModel, _onnx_session, export_model

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = {"demo": ["model.backbone=tiny"], "rgbnt201": ["model.weights=null"]}
NUM_CAMERAS = 4


def _checkpoint(preset: str, folder: Path) -> tuple[Path, object]:
    overrides = ["data.synthetic=false", *PRESETS[preset]]
    ckpt, model = random_checkpoint(preset, overrides, folder / f"{preset}.ckpt", NUM_CAMERAS)
    return ckpt, model.eval()


def _inputs(img_size: tuple[int, int], batch: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(batch)
    images = tuple(torch.randn(batch, 3, *img_size, generator=gen) for _ in range(3))
    return (*images, torch.randint(0, NUM_CAMERAS, (batch,), generator=gen))


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(preset: str, forms: list[str], repeats: int, folder: Path) -> list[dict]:
    ckpt, model = _checkpoint(preset, folder)
    eager = TestTimeModel(model, camids=True).eval()
    img_size = tuple(load_config(preset, PRESETS[preset]).img_size())
    rows = []
    base: dict[int, float] = {}
    for batch in (1, 32):
        x = _inputs(img_size, batch)
        with torch.no_grad():
            base[batch] = _median_seconds(lambda x=x: eager(*x), repeats)
    rows.append({"model": preset, "runtime": "PyTorch eager", "export_s": None, "mib": None, **_speed(base)})
    for form in forms:
        t0 = time.perf_counter()
        data, _, _ = export_model(ckpt, "onnx", scan=form)
        export_s = time.perf_counter() - t0
        run = ExportedFile(Path("<memory>"), "onnx", {}, _onnx_session(data, "bench"))
        secs, worst = {}, 0.0
        for batch in (1, 32):
            x = _inputs(img_size, batch)
            xs = tuple(t.numpy() for t in x)
            secs[batch] = _median_seconds(lambda run=run, xs=xs: run.run(xs), repeats)
            with torch.no_grad():
                want = eager(*x).numpy()
            worst = max(worst, float(np.abs(run.run(xs) - want).max() / np.abs(want).max()))
        rows.append(
            {
                "model": preset,
                "runtime": f"onnxruntime ({form} scan)",
                "export_s": export_s,
                "mib": len(data) / 2**20,
                **_speed(secs),
                "vs_b1": base[1] / secs[1],
                "vs_b32": base[32] / secs[32],
                "rel_err": worst,
            }
        )
        print(f"{preset} {form}: exported in {export_s:.0f} s", flush=True)
    return rows


def _speed(secs: dict[int, float]) -> dict:
    return {"b1_ms": 1000 * secs[1], "b32_tps": 32 / secs[32]}


def format_rows(rows: list[dict], header: str) -> str:
    cols = ["model", "runtime", "export s", "MiB", "b1 ms", "x eager", "b32 trip/s", "x eager", "rel err"]
    lines = [header, " | ".join(cols), " | ".join("---" for _ in cols)]
    for r in rows:
        onnx = r["export_s"] is not None
        lines.append(
            " | ".join(
                [
                    r["model"],
                    r["runtime"],
                    f"{r['export_s']:.0f}" if onnx else "-",
                    f"{r['mib']:.1f}" if onnx else "-",
                    f"{r['b1_ms']:.1f}",
                    f"{r['vs_b1']:.2f}" if onnx else "1.00",
                    f"{r['b32_tps']:.1f}",
                    f"{r['vs_b32']:.2f}" if onnx else "1.00",
                    f"{r['rel_err']:.1e}" if onnx else "-",
                ]
            )
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,rgbnt201", help=f"comma-separated, of: {', '.join(PRESETS)}")
    ap.add_argument("--forms", default="parallel", help="selective-scan forms to export, every model")
    ap.add_argument(
        "--unrolled-on",
        default="demo",
        help="models also exported with the unrolled scan (its graph has one step per token: "
        "converting ViT-B's 387-token scans takes tens of minutes)",
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_export.txt")
    args = ap.parse_args()
    header = describe(f"onnxruntime {onnxruntime.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.models.split(","):
            forms = args.forms.split(",")
            if preset in args.unrolled_on.split(",") and "unrolled" not in forms:
                forms.append("unrolled")
            rows += measure(preset, forms, args.repeats, Path(tmp))
    table = format_rows(rows, header)
    print(table)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
