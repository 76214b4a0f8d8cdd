"""Inference on the CPU at each test-time precision (``--precision fp32|bf16|int8``), in one run.

Models: the ``demo`` preset (tiny backbone, 128x64) trained ``--demo-epochs`` on the synthetic
training split (a random tiny model's features are nearly collinear: its mAP says nothing), and
the ``rgbnt201`` preset (CLIP ViT-B/16, 256x128, PFA + SRP + MA) with random weights (seed 0),
each loaded from its checkpoint as every command loads it and converted with
:func:`mambapro.models.precision.apply_precision`. Measured per model and precision, PyTorch
eager, the fp32 baseline in the same run:

* triplets per second at batch 1 and at batch 32 (median of ``--repeats`` timed calls after one
  warm-up), and the speed-up over fp32; at batch 1 also the milliseconds spent in the aggregator
  (MA: its selective scan stays fp32 at every precision);
* achieved GFLOP/s: the fp32 model's FLOPs per triplet (``FlopCounterMode``: matrix products,
  convolutions, attention, the selective scan; element-wise operators not counted) times the
  triplets per second, and its share of the peak of the units that precision runs on, computed
  from the core count, the clock of /proc/cpuinfo and the instruction set (per core and cycle:
  fp32 AVX-512 2 FMA ports x 16 lanes x 2 = 64, AVX2 32; bf16 AMX 1024, AVX512-BF16 128; int8
  AMX 2048, AVX512-VNNI 256, AVX-VNNI 128);
* the smallest feature cosine against fp32 over the 32 timed triplets (synthetic normalised
  noise, the inputs ``export`` checks with);
* mAP and Rank-1 on the demo's synthetic test set (RGBNT201 layout, 20 identities x 4 cameras x
  3 shots; query and gallery are the same folder) and their difference against fp32 (``test
  --precision`` reports the same on any dataset).

The load average is read before and after: other processes on the machine slow every row, so
only ratios within one run compare; the precisions are timed in turns so that a change of load
falls on each alike. ``OMP_WAIT_POLICY`` is the environment's (the CLI sets PASSIVE, which costs
the many short operators of the batch-1 selective scan; docs/deploy.md, Precision).

Usage: ``python benchmarks/bench_cpu_inference.py [--models demo,rgbnt201] [--precisions
fp32,bf16,int8] [--repeats 5] [--demo-epochs 4]`` (writes
``benchmarks/results/bench_cpu_inference.txt``)
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

from _checkpoint import random_checkpoint
from _machine import describe
from mambapro.config import load_config
from mambapro.data import build_dataset
from mambapro.data.synth import generate
from mambapro.evaluation import evaluate_features
from mambapro.machine import cpu_info
from mambapro.models.precision import apply_precision, autocast_dtype
from mambapro.options import precision_support_error
from mambapro.retrieval.features import eval_loader, extract_features
from mambapro.train.checkpoint import load_model
from mambapro.train.trainer import run_training

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = {"demo": ["model.backbone=tiny"], "rgbnt201": ["model.weights=null"]}
#: The demo's synthetic data (configs/demo.yaml): 20 test identities, 4 cameras, 3 shots.
SYNTH = {"seed": 0, "ids": 80, "test_ids": 20, "cameras": 4, "shots": 3}
BATCHES = (1, 32)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _sdpa_cpu_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    # FlopCounterMode knows the CUDA attention kernels, not the CPU one the encoder runs here.
    return sdpa_flop_count(query, key, value)


def peak_gflops(precision: str) -> tuple[float, str]:
    """Peak GFLOP/s (GOP/s for int8) of the units ``precision`` runs on, and how it was computed."""
    _, flags = cpu_info()
    mhz = next(
        (
            float(line.split(":")[1])
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "MHz" in line
        ),
        float("nan"),
    )
    cores = os.cpu_count() or 1
    table = {
        "fp32": [("avx512f", 64, "AVX-512 FMA"), ("avx2", 32, "AVX2 FMA")],
        "bf16": [("amx_bf16", 1024, "AMX-BF16"), ("avx512_bf16", 128, "AVX512-BF16")],
        "int8": [
            ("amx_int8", 2048, "AMX-INT8"),
            ("avx512_vnni", 256, "AVX512-VNNI"),
            ("avx_vnni", 128, "AVX-VNNI"),
        ],
    }[precision]
    flag, per_cycle, unit = next(((f, n, u) for f, n, u in table if f in flags), (None, 16, "SSE"))
    return cores * mhz / 1000 * per_cycle, f"{cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} ({unit})"


def _inputs(img_size: tuple[int, int], batch: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {m: torch.randn(batch, 3, *img_size, generator=gen) for m in ("RGB", "NI", "TI")}
    out["camids"] = torch.randint(0, SYNTH["cameras"], (batch,), generator=gen)
    return out


def _runner(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
    amp = autocast_dtype(model)

    def run() -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            return model(x).float()

    return run


def _time_part(module: torch.nn.Module) -> list[float]:
    """Seconds of each call of ``module``, appended to the returned list (forward hooks)."""
    spent: list[float] = []
    module.register_forward_pre_hook(lambda *_: spent.append(-time.perf_counter()))

    def done(*_: object) -> None:
        spent[-1] += time.perf_counter()

    module.register_forward_hook(done)
    return spent


def _seconds(runs: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each runner, timed in turns (one call of each per round), so
    that a change of the machine's load falls on every precision alike."""
    for run in runs.values():
        run()  # warm-up (first-call allocations, oneDNN primitive creation)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _flops_per_triplet(model: torch.nn.Module, img_size: tuple[int, int]) -> float:
    probe = copy.deepcopy(model).requires_grad_(False)  # the module tracker needs no autograd
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        probe(_inputs(img_size, 1, 0))
    return float(counter.get_total_flops())


def _map(model: torch.nn.Module, cfg, ds) -> tuple[float, float]:
    """(mAP, Rank-1) of ``model`` on the synthetic test set, its query and gallery extracted once."""
    amp = autocast_dtype(model)
    feats = extract_features(model, eval_loader(cfg, ds.query, ds.spec), torch.device("cpu"), amp)
    if [s.paths for s in ds.query] == [s.paths for s in ds.gallery]:
        gallery = feats
    else:
        loader = eval_loader(cfg, ds.gallery, ds.spec)
        gallery = extract_features(model, loader, torch.device("cpu"), amp)
    res = evaluate_features(feats.labelled(), gallery.labelled(), metric=cfg.test.distance)
    return 100 * res.mAP, 100 * res.rank(1)


def _checkpoint(preset: str, folder: Path, data: Path, demo_epochs: int) -> Path:
    """The demo model trained ``demo_epochs`` epochs on the synthetic data (a random tiny model's
    features are nearly collinear: its mAP says nothing), else random weights."""
    if preset == "demo" and demo_epochs > 0:
        out = folder / "demo-run"
        overrides = [f"data.root={data}", "data.synthetic=false", f"train.epochs={demo_epochs}"]
        overrides += ["train.warmup_epochs=1", f"train.output={out}", "train.select_best=final"]
        run_training(load_config("demo", overrides), quiet=True)
        return out / "last.ckpt"
    overrides = ["data.synthetic=false", "data.num_workers=0", *PRESETS[preset]]
    return random_checkpoint(preset, overrides, folder / f"{preset}.ckpt", SYNTH["cameras"])[0]


def measure(
    preset: str, precisions: list[str], repeats: int, folder: Path, data: Path, demo_epochs: int
) -> list[dict]:
    ckpt = _checkpoint(preset, folder, data, demo_epochs)
    ds = build_dataset("RGBNT201", data)
    models, cfg = {}, None
    for precision in precisions:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no pre-trained weights": random weights are the point
            extra = {"data": {"root": str(data)}, "test": {"batch_size": 32}}
            model, cfg, _ = load_model(ckpt, extra=extra, device=torch.device("cpu"))
        models[precision] = apply_precision(model, precision)
    img_size = tuple(cfg.img_size())
    flops = _flops_per_triplet(models["fp32"], img_size)
    speed: dict[str, dict[int, float]] = {p: {} for p in precisions}
    parts = {p: _time_part(m.aggregator) for p, m in models.items()}
    aggregator_ms = {}
    for batch in BATCHES:
        x = _inputs(img_size, batch, batch)
        seconds = _seconds({p: _runner(m, x) for p, m in models.items()}, repeats)
        for p in precisions:
            speed[p][batch] = batch / seconds[p]
            if batch == 1:
                aggregator_ms[p] = 1000 * statistics.median(parts[p][1:])  # the warm-up call left out
    x = _inputs(img_size, 32, 32)
    outs = {p: _runner(m, x)().numpy().astype(np.float64) for p, m in models.items()}
    rows = []
    for precision, model in models.items():
        m_ap, rank1 = _map(model, cfg, ds)
        out, want = outs[precision], outs["fp32"]
        cosine = (out * want).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(want, axis=1))
        peak, how = peak_gflops(precision)
        base = rows[0] if rows else None
        rows.append(
            {
                "model": preset,
                "precision": precision,
                **{f"b{b}": speed[precision][b] for b in BATCHES},
                **{f"x{b}": speed[precision][b] / speed["fp32"][b] for b in BATCHES},
                "gflops": flops * speed[precision][1] / 1e9,
                "gflops32": flops * speed[precision][32] / 1e9,
                "peak": peak,
                "peak_how": how,
                "flops": flops,
                "cosine": float(cosine.min()),
                "mAP": m_ap,
                "rank1": rank1,
                "dmap": m_ap - (base or {"mAP": m_ap})["mAP"],
                "drank1": rank1 - (base or {"rank1": rank1})["rank1"],
                "trained": preset == "demo" and demo_epochs > 0,
                "agg_ms": aggregator_ms[precision],
            }
        )
        r = rows[-1]
        print(
            f"{preset} {precision}: b1 {r['b1']:.2f} trip/s ({r['x1']:.2f}x), b32 {r['b32']:.2f} trip/s "
            f"({r['x32']:.2f}x), cos {r['cosine']:.5f}, mAP {m_ap:.2f} ({r['dmap']:+.2f})",
            flush=True,
        )
    return rows


def format_rows(rows: list[dict], header: str) -> str:
    cols = [
        "model",
        "precision",
        "b1 trip/s",
        "x fp32",
        "b1 ms (MA)",
        "b32 trip/s",
        "x fp32",
        "GFLOP/s b1 / b32",
        "% of peak (b32)",
        "cos vs fp32",
        "mAP (diff)",
        "Rank-1 (diff)",
    ]
    lines = [header, "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["model"],
                    r["precision"],
                    f"{r['b1']:.2f}",
                    f"{r['x1']:.2f}",
                    f"{1000 / r['b1']:.0f} ({r['agg_ms']:.0f})",
                    f"{r['b32']:.2f}",
                    f"{r['x32']:.2f}",
                    f"{r['gflops']:.0f} / {r['gflops32']:.0f}",
                    f"{100 * r['gflops32'] / r['peak']:.1f}% of {r['peak']:.0f}",
                    f"{r['cosine']:.5f}",
                    f"{r['mAP']:.2f} ({r['dmap']:+.2f})",
                    f"{r['rank1']:.2f} ({r['drank1']:+.2f})",
                ]
            )
            + " |"
        )
    flops = {r["model"]: r["flops"] for r in rows}
    lines.append(
        "GFLOP per triplet (fp32 model): " + ", ".join(f"{m} {f / 1e9:.2f}" for m, f in flops.items())
    )
    peaks = dict.fromkeys(r["precision"] for r in rows)
    lines.append("peaks: " + "; ".join(f"{p} {peak_gflops(p)[0]:.0f} = {peak_gflops(p)[1]}" for p in peaks))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,rgbnt201", help=f"comma-separated, of: {', '.join(PRESETS)}")
    ap.add_argument(
        "--precisions", default="fp32,bf16,int8", help="comma-separated; fp32 first (the baseline)"
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--demo-epochs", type=int, default=4, help="train the demo model this long first (0: random weights)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_cpu_inference.txt")
    args = ap.parse_args()
    precisions = [p for p in args.precisions.split(",") if precision_support_error(p) is None]
    if precisions[0] != "fp32":
        raise SystemExit("--precisions must start with fp32 (the baseline)")
    # The CLI makes idle OpenMP workers sleep (OMP_WAIT_POLICY=PASSIVE, for a machine shared with
    # data-loader processes); here the environment decides, and the header says which.
    header = describe(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset (libgomp default)')}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate("rgbnt201", data, **SYNTH)
        for preset in args.models.split(","):
            rows += measure(preset, precisions, args.repeats, Path(tmp), data, args.demo_epochs)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = format_rows(rows, f"{header}, load average at the end {load:.1f}")
    print(table)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
