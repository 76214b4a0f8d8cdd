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
from mambapro.ops import SCAN_BACKENDS, resolve_backend

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


def worker(
    name: str,
    tokens: int,
    batch: int,
    dim: int,
    repeats: int,
    device: str = "cpu",
    scan_backend: str = "auto",
    amp: str = "off",
) -> dict:
    torch.manual_seed(0)
    if device != "cpu":
        return _worker_cuda(name, tokens, batch, dim, repeats, device, scan_backend, amp)
    grid = grid_for(tokens)
    module = build_aggregator(name, dim=dim, grid=grid, depth=1, scan_backend=scan_backend)
    inputs = [torch.randn(batch, 1 + tokens, dim, requires_grad=True) for _ in range(3)]
    macs = count_macs(module, [x.detach()[:1] for x in inputs])["total"]
    dtype = {"off": None, "bf16": torch.bfloat16}[amp]

    def step() -> None:
        module.zero_grad(set_to_none=True)
        for x in inputs:
            x.grad = None
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = module(*inputs)
        out.float().square().mean().backward()

    # lazy one-time initialisation (kernels, op registration) on a tiny input, not measured
    tiny = build_aggregator(name, dim=dim, grid=(2, 2), depth=1, scan_backend=scan_backend)
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


def _worker_cuda(
    name: str, tokens: int, batch: int, dim: int, repeats: int, device: str, scan_backend: str, amp: str
) -> dict:
    """The same measurement on a CUDA device: two warm-up steps (Triton compiles on the first),
    then ``repeats`` synchronised steps; peak = CUDA memory allocated above the module, inputs
    and gradient buffers during them (``torch.cuda.max_memory_allocated``)."""
    grid = grid_for(tokens)
    # MACs depend on shapes only: counted on the meta device (no compute) with the torch scan,
    # whose op FlopCounterMode counts (a Triton or mamba-ssm kernel is not an op it sees)
    with torch.device("meta"):
        shapes = build_aggregator(name, dim=dim, grid=grid, depth=1, scan_backend="torch")
        macs = count_macs(shapes, [torch.randn(1, 1 + tokens, dim) for _ in range(3)])["total"]
    dev = torch.device(device)
    torch.cuda.set_device(dev)
    module = build_aggregator(name, dim=dim, grid=grid, depth=1, scan_backend=scan_backend).to(dev)
    inputs = [torch.randn(batch, 1 + tokens, dim, device=dev, requires_grad=True) for _ in range(3)]
    dtype = {"off": None, "bf16": torch.bfloat16}[amp]

    def step() -> None:
        # gradients are zeroed in place (kept allocated), so every step allocates the same
        module.zero_grad(set_to_none=False)
        for x in inputs:
            x.grad = None
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            out = module(*inputs)
        out.float().square().mean().backward()

    step()
    step()
    torch.cuda.synchronize(dev)
    baseline = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(max(1, repeats)):
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(dev) - baseline
    return {"time_s": min(times) / batch, "peak_bytes": peak / batch, "macs": macs}


def device_name(device: str) -> str:
    if device == "cpu":
        return f"{cpu_name()} ({os.cpu_count()} CPUs)"
    return torch.cuda.get_device_name(torch.device(device))


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


def plot(tokens: list[int], res: dict[str, list[dict]], dim: int, path: Path, title: str) -> None:
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
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="128,256,512,1024,2048", help="tokens per modality")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, or a CUDA device (cuda, cuda:1)")
    p.add_argument(
        "--scan-backend",
        default="auto",
        choices=SCAN_BACKENDS,
        help="MA's selective scan (auto: triton on CUDA when it imports, torch on CPU)",
    )
    p.add_argument("--amp", default="off", choices=["off", "bf16"], help="autocast dtype (off: fp32)")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_aggregation_scaling.txt")
    p.add_argument("--plot", type=Path, default=RESULTS / "aggregation_scaling.png")
    p.add_argument("--worker", nargs=2, metavar=("NAME", "TOKENS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if args.worker:
        res = worker(
            args.worker[0],
            int(args.worker[1]),
            args.batch,
            args.dim,
            args.repeats,
            args.device,
            args.scan_backend,
            args.amp,
        )
        print(json.dumps(res))
        return

    if args.device != "cpu" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here")
    tokens = [int(t) for t in args.tokens.split(",")]
    precision = "fp32" if args.amp == "off" else f"{args.amp} autocast"
    where = f"{torch.get_num_threads()} threads, " if args.device == "cpu" else ""
    backend = resolve_backend(args.scan_backend, args.device)
    lines = [
        f"aggregator forward+backward per sample, C={args.dim}, batch {args.batch}, {precision}, "
        f"MA scan backend {backend}, {where}torch {torch.__version__}, {device_name(args.device)}",
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
            cmd += ["--device", args.device, "--scan-backend", args.scan_backend, "--amp", args.amp]
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
        f"tokens ({'within' if growth <= 20 else 'ABOVE'} the bound of 20); "
        f"Transformer: {tr[-1] / tr[0]:.1f}x"
    )
    lines.append(crossing(tokens, ma, tr))
    ratio = ma[0] / tr[0]
    verdict = "met" if ratio <= 1 else "NOT met"
    if tokens[0] == 128:
        verdict = f"target (MA no slower than the Transformer at 3 x 128 tokens): {verdict}"
    lines.append(f"MA / Transformer forward+backward time at {tokens[0]} tokens: {ratio:.2f}; {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    plot(tokens, res, args.dim, args.plot, lines[0].replace("forward+backward per sample, ", "scaling, "))
    print("\n".join(lines[-3:]))
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
