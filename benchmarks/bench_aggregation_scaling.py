"""How MA and the Transformer aggregator scale with the number of tokens per modality.

One MA block (intra + inter, the paper's Table 6 "MA", 1.42 G MACs at 3 × 128 tokens) against
one Transformer block over the concatenated tokens (Table 6 "Transformer", 1.36 G MACs) at
C = 512, fp32, as the tokens per modality grow 128 -> 256 -> 512 -> 1024 -> 2048 (the inter
sequence is three times that). Each point runs in a fresh subprocess: forward+backward time per
sample (minimum of the timed runs) and peak extra resident memory per sample of one
forward+backward (Linux VmHWM after a reset, minus the resident size once the module and inputs
exist). Prints the table, the MACs per sample of each point, MA's time growth 128 -> 2048 and
where the two curves cross, and saves a log-log plot.

    python benchmarks/bench_aggregation_scaling.py
    python benchmarks/bench_aggregation_scaling.py --tokens 128,256 --batch 1   # quick look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from mambapro.aggregation import build_aggregator, count_macs

RESULTS = Path(__file__).resolve().parent / "results"
AGGS = {"ma": "MA (1 block)", "transformer": "Transformer (1 block)"}


def grid_for(tokens: int) -> tuple[int, int]:
    """The most square H x W grid with H >= W (16x8 at 128 tokens, as RGBNT201's)."""
    w = int(math.isqrt(tokens))
    while tokens % w:
        w -= 1
    return tokens // w, w


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def worker(name: str, tokens: int, batch: int, dim: int, repeats: int) -> dict:
    torch.manual_seed(0)
    grid = grid_for(tokens)
    module = build_aggregator(name, dim=dim, grid=grid, depth=1)
    inputs = [torch.randn(batch, 1 + tokens, dim, requires_grad=True) for _ in range(3)]
    macs = count_macs(module, [x.detach()[:1] for x in inputs])["total"]

    def step() -> None:
        module.zero_grad(set_to_none=True)
        for x in inputs:
            x.grad = None
        module(*inputs).square().mean().backward()

    # lazy one-time initialisation (kernels, op registration) on a tiny input, not measured
    tiny = build_aggregator(name, dim=dim, grid=(2, 2), depth=1)
    tiny(*[torch.randn(1, 5, dim) for _ in range(3)]).sum().backward()
    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
    t0 = time.perf_counter()
    step()
    times = [time.perf_counter() - t0]
    peak = (_status_kib("VmHWM") - baseline) * 1024
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"time_s": min(times) / batch, "peak_bytes": peak / batch, "macs": macs}


def crossing(tokens: list[int], a: list[float], b: list[float]) -> str:
    """Where curve a falls below curve b (log-log interpolation between measured points)."""
    if a[0] <= b[0]:
        return f"MA is already faster at {tokens[0]} tokens per modality"
    for i in range(1, len(tokens)):
        if a[i] <= b[i]:
            d0 = math.log(a[i - 1] / b[i - 1])
            d1 = math.log(a[i] / b[i])
            frac = d0 / (d0 - d1)
            x = math.exp(math.log(tokens[i - 1]) + frac * (math.log(tokens[i]) - math.log(tokens[i - 1])))
            return (
                f"MA becomes faster than the Transformer at ~{x:.0f} tokens per modality "
                f"(~{3 * x:.0f} in the inter sequence)"
            )
    return f"no crossing up to {tokens[-1]} tokens per modality"


def plot(tokens: list[int], res: dict[str, list[dict]], dim: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, label in AGGS.items():
        axes[0].plot(tokens, [r["time_s"] * 1e3 for r in res[name]], "o-", label=label)
        axes[1].plot(tokens, [r["peak_bytes"] / 2**20 for r in res[name]], "o-", label=label)
    lin = [res["ma"][0]["time_s"] * 1e3 * t / tokens[0] for t in tokens]
    quad = [res["transformer"][0]["time_s"] * 1e3 * (t / tokens[0]) ** 2 for t in tokens]
    axes[0].plot(tokens, lin, ":", color="gray", label=f"linear (from MA at {tokens[0]})")
    axes[0].plot(tokens, quad, "--", color="gray", label=f"quadratic (from Transformer at {tokens[0]})")
    axes[0].set_ylabel("forward+backward ms / sample")
    axes[1].set_ylabel("peak extra MiB / sample")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens per modality (x3 in the inter sequence)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"aggregator scaling, C={dim}, fp32, {torch.get_num_threads()} threads, {cpu_name()}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="128,256,512,1024,2048", help="tokens per modality")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "bench_aggregation_scaling.txt")
    p.add_argument("--plot", type=Path, default=RESULTS / "aggregation_scaling.png")
    p.add_argument("--worker", nargs=2, metavar=("NAME", "TOKENS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if args.worker:
        res = worker(args.worker[0], int(args.worker[1]), args.batch, args.dim, args.repeats)
        print(json.dumps(res))
        return

    tokens = [int(t) for t in args.tokens.split(",")]
    lines = [
        f"aggregator forward+backward per sample, C={args.dim}, batch {args.batch}, fp32, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {cpu_name()} ({os.cpu_count()} CPUs)",
        f"{'tokens':>7} {'grid':>6} {'aggregator':<22} {'GMACs':>7} {'ms/sample':>10} {'MiB/sample':>11} "
        f"{f'time vs {tokens[0]}':>12}",
    ]
    lines.append("-" * len(lines[-1]))
    print("\n".join(lines), flush=True)
    res: dict[str, list[dict]] = {name: [] for name in AGGS}
    for t in tokens:
        for name, label in AGGS.items():
            cmd = [sys.executable, __file__, "--worker", name, str(t), "--batch", str(args.batch)]
            cmd += ["--dim", str(args.dim), "--repeats", str(args.repeats), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} at {t} tokens failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            res[name].append(r)
            h, w = grid_for(t)
            growth = r["time_s"] / res[name][0]["time_s"]
            row = (
                f"{t:>7} {f'{h}x{w}':>6} {label:<22} {r['macs'] / 1e9:>7.2f} {r['time_s'] * 1e3:>10.1f} "
                f"{r['peak_bytes'] / 2**20:>11.1f} {growth:>11.1f}x"
            )
            print(row, flush=True)
            lines.append(row)
    ma = [r["time_s"] for r in res["ma"]]
    tr = [r["time_s"] for r in res["transformer"]]
    growth = ma[-1] / ma[0]
    lines.append(
        f"MA time {tokens[-1]} / {tokens[0]} tokens: {growth:.1f}x for {tokens[-1] / tokens[0]:.0f}x the "
        f"tokens ({'within' if growth <= 20 else 'ABOVE'} the issue's bound of 20); "
        f"Transformer: {tr[-1] / tr[0]:.1f}x"
    )
    lines.append(crossing(tokens, ma, tr))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    plot(tokens, res, args.dim, args.plot)
    print("\n".join(lines[-2:]))
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
