"""Selective scan: the literal step-by-step loop vs ``mambapro.ops.selective_scan``.

For each (B, L) at D = 1024, N = 16, fp32 (MA's options: D, delta_bias, softplus), both
implementations run in fresh subprocesses so peak memory is clean: forward time (no grad),
forward+backward time, and the peak extra resident memory of one forward+backward (Linux
VmHWM after resetting it, minus the resident size once the inputs exist), also as a multiple of
the (B, D, L, N) state tensor. The loop (mamba-ssm's ``selective_scan_ref``) is the baseline of
the ratios, measured in the same run, and also the reference for the printed max errors
(outputs; gradients of every input, relative to their max magnitude).

    python benchmarks/bench_scan.py                       # the full table (the loop takes ~20 min)
    python benchmarks/bench_scan.py --sizes 8x384         # the acceptance size only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from mambapro.ops import selective_scan
from mambapro.ops.scan_reference import selective_scan_ref

RESULTS = Path(__file__).resolve().parent / "results"
IMPLS = {"loop": selective_scan_ref, "ours": selective_scan}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0) so the next peak is this run's.
    Path("/proc/self/clear_refs").write_text("5")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def make_inputs(batch: int, length: int, dim: int, d_state: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": torch.randn(batch, dim, length, generator=g) * 0.5 - 2.0,
        "A": -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(batch, d_state, length, generator=g),
        "C": torch.randn(batch, d_state, length, generator=g),
        "D": torch.ones(dim),
        "delta_bias": torch.randn(dim, generator=g) * 0.1,
    }


def worker(impl: str, batch: int, length: int, dim: int, d_state: int, repeats: int, dump: str) -> dict:
    """One implementation at one size, in its own process."""
    fn = IMPLS[impl]
    base = make_inputs(batch, length, dim, d_state)
    leaves = {k: v.clone().requires_grad_() for k, v in base.items()}
    weight = torch.randn(batch, dim, length, generator=torch.Generator().manual_seed(1))

    def fwd_bwd() -> torch.Tensor:
        for v in leaves.values():
            v.grad = None
        out = fn(**leaves, delta_softplus=True)
        (out * weight).sum().backward()
        return out

    # A tiny call first loads what the first call loads lazily (op registration, kernels), which
    # is not the scan's memory; the measured run then starts on a cold allocator, so no earlier
    # run's freed-but-kept pages hide its peak.
    tiny = {k: v.clone().requires_grad_() for k, v in make_inputs(1, 4, 4, 2).items()}
    fn(**tiny, delta_softplus=True).sum().backward()
    baseline = _proc_status_kib("VmRSS")
    _reset_peak_rss()
    t0 = time.perf_counter()
    out = fwd_bwd()
    first = time.perf_counter() - t0
    peak_extra = (_proc_status_kib("VmHWM") - baseline) * 1024
    grads = {k: leaves[k].grad for k in GRAD_NAMES}
    if impl == "loop":
        torch.save({"out": out.detach(), **grads}, dump)
        errors = None
    else:
        ref = torch.load(dump, weights_only=True)
        rel = {k: ((grads[k] - ref[k]).abs().max() / ref[k].abs().max()).item() for k in GRAD_NAMES}
        errors = {"out_abs": (out.detach() - ref["out"]).abs().max().item(), "grad_rel": max(rel.values())}
    del out

    fb_times = [first]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        fwd_bwd()
        fb_times.append(time.perf_counter() - t0)
    fwd_times = []
    with torch.no_grad():
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            fn(**leaves, delta_softplus=True)
            fwd_times.append(time.perf_counter() - t0)
    return {
        "fwd_s": min(fwd_times),
        "fwd_bwd_s": min(fb_times),
        "peak_extra_bytes": peak_extra,
        "errors": errors,
    }


def run_worker(impl: str, batch: int, length: int, args: argparse.Namespace, dump: str) -> dict:
    reps = args.loop_repeats if impl == "loop" else args.repeats
    cmd = [sys.executable, __file__, "--worker", impl, f"{batch}x{length}", "--dump", dump]
    cmd += ["--dim", str(args.dim), "--d-state", str(args.d_state), "--repeats", str(reps)]
    cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{impl} at B={batch}, L={length} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_size(text: str) -> tuple[int, int]:
    try:
        b, length = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--sizes: '{text}' must look like BxL, e.g. 8x384") from None
    return b, length


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="8x128,8x384,64x128,64x384", help="comma-separated BxL")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of ours (the minimum is reported)")
    p.add_argument("--loop-repeats", type=int, default=1, help="timed runs of the slow loop")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "bench_scan.txt")
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "BxL"), help=argparse.SUPPRESS)
    p.add_argument("--dump", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if args.worker:
        batch, length = parse_size(args.worker[1])
        res = worker(args.worker[0], batch, length, args.dim, args.d_state, args.repeats, args.dump)
        print(json.dumps(res))
        return

    header = (
        f"{'B':>3} {'L':>4} {'impl':<5} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak extra MiB':>15} "
        f"{'x state':>8} {'fwd speedup':>12} {'fwd+bwd speedup':>16} {'max err out':>12} {'max err grad':>13}"
    )
    lines = [
        f"selective scan, D={args.dim}, N={args.d_state}, fp32, D + delta_bias + softplus; "
        f"{torch.get_num_threads()} threads; torch {torch.__version__}; {cpu_name()} ({os.cpu_count()} CPUs)",
        "loop = literal step-by-step loop under autograd (mamba-ssm's selective_scan_ref), the baseline; "
        "errors: ours vs loop (outputs: max abs; grads: max abs / max |grad|, worst input)",
        header,
        "-" * len(header),
    ]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            batch, length = parse_size(size)
            dump = str(Path(tmp) / f"ref_{batch}x{length}.pt")
            state_bytes = batch * args.dim * length * args.d_state * 4
            loop = run_worker("loop", batch, length, args, dump)
            ours = run_worker("ours", batch, length, args, dump)
            for name, r in (("loop", loop), ("ours", ours)):
                row = (
                    f"{batch:>3} {length:>4} {name:<5} {r['fwd_s'] * 1e3:>9.1f} "
                    f"{r['fwd_bwd_s'] * 1e3:>11.1f} "
                    f"{r['peak_extra_bytes'] / 2**20:>15.1f} {r['peak_extra_bytes'] / state_bytes:>8.2f}"
                )
                if name == "ours":
                    e = r["errors"]
                    row += (
                        f" {loop['fwd_s'] / r['fwd_s']:>11.1f}x {loop['fwd_bwd_s'] / r['fwd_bwd_s']:>15.1f}x"
                        f" {e['out_abs']:>12.1e} {e['grad_rel']:>13.1e}"
                    )
                print(row, flush=True)
                lines.append(row)
            Path(dump).unlink(missing_ok=True)
    lines.append(
        "targets (B=8, L=384): fwd+bwd >= 50x, fwd >= 2x, peak extra <= 4x state, "
        "errors <= 1e-5 (out) / 1e-4 (grad)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
