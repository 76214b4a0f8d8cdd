"""Selective scan on a CUDA GPU: the literal loop and the torch, triton and mamba-ssm backends.

For each (B, L) at D = 1024, N = 16 (MA's options: D, delta_bias, softplus) and each input dtype
(of u, delta, B, C; fp32 and bf16), every backend runs in its own subprocess (a kernel that
fails, or poisons the CUDA context, cannot take the other backends down): forward time (no
grad) and forward+backward time, each the median of the timed runs after two warm-up runs (the
first includes Triton's JIT compilation), ``torch.cuda.synchronize`` around every run; and the
peak extra CUDA memory of one forward+backward (``torch.cuda.max_memory_allocated`` after a
reset, minus what the inputs hold). Errors are against the loop (mamba-ssm's
``selective_scan_ref``) run in fp32 on the same (rounded) inputs in the same process: max abs
error / max |loop value|, of the output and of the worst input's gradient. ``loop`` upcasts to
fp32 whatever it is given, so it runs on fp32 inputs only. A size that runs out of memory is
reported as such, and so is a backend whose process fails.

    python benchmarks/bench_scan_cuda.py                    # the GPU table (about a minute)
    python benchmarks/bench_scan_cuda.py --sizes 64x384 --backends torch,triton --dtypes bf16
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mambapro.ops import selective_scan
from mambapro.ops.scan_reference import selective_scan_ref

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("loop", "torch", "triton", "mamba_ssm")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")
LOW_PRECISION = ("u", "delta", "B", "C")  # what MA hands the scan in its autocast dtype
#: The targets (fwd+bwd at B = 64, L = 384): triton >= 10x torch, within 2x of mamba-ssm.
TARGET_SIZE = (64, 384)
DEVICE = "cuda"


def available_backends() -> list[str]:
    out = ["loop", "torch"]
    if importlib.util.find_spec("triton") is not None:
        out.append("triton")
    if importlib.util.find_spec("mamba_ssm") is not None:
        out.append("mamba_ssm")
    return out


def make_inputs(batch: int, length: int, dim: int, d_state: int, dtype: torch.dtype) -> dict:
    """Seeded on the GPU, so every backend's process gets the same values."""
    g = torch.Generator(device=DEVICE).manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=DEVICE)

    x = {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length) * 0.5 - 2.0,
        "A": -torch.arange(1, d_state + 1, dtype=torch.float32, device=DEVICE).repeat(dim, 1),
        "B": randn(batch, d_state, length),
        "C": randn(batch, d_state, length),
        "D": torch.ones(dim, device=DEVICE),
        "delta_bias": randn(dim) * 0.1,
    }
    for k in LOW_PRECISION:
        x[k] = x[k].to(dtype)
    return x


def _scan_fn(backend: str):
    if backend == "loop":
        return selective_scan_ref

    def fn(**kw):
        return selective_scan(**kw, backend=backend)

    return fn


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _run_size(backend: str, batch: int, length: int, args: argparse.Namespace, dtype: torch.dtype) -> dict:
    fn = _scan_fn(backend)
    base = make_inputs(batch, length, args.dim, args.d_state, dtype)
    leaves = {k: v.clone().requires_grad_() for k, v in base.items()}
    weight = torch.randn(
        batch, args.dim, length, generator=torch.Generator(device=DEVICE).manual_seed(1), device=DEVICE
    )

    def fwd_bwd() -> torch.Tensor:
        for v in leaves.values():
            v.grad = None
        out = fn(**leaves, delta_softplus=True)
        (out.float() * weight).sum().backward()
        return out

    def fwd() -> None:
        with torch.no_grad():
            fn(**leaves, delta_softplus=True)

    repeats = args.loop_repeats if backend == "loop" else args.repeats
    t0 = time.perf_counter()
    out = fwd_bwd()  # warm-up 1: JIT compilation, lazy initialisation
    torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    out = fwd_bwd().detach()  # warm-up 2; its results are the ones checked against the loop
    grads = {k: leaves[k].grad.detach().clone() for k in GRAD_NAMES}
    for v in leaves.values():
        v.grad = None
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd()
    torch.cuda.synchronize()
    peak_extra = torch.cuda.max_memory_allocated() - baseline
    fwd_bwd_s = _timed(fwd_bwd, repeats)
    fwd_s = _timed(fwd, repeats)
    for v in leaves.values():
        v.grad = None

    errors: dict | str | None = None
    if backend != "loop" and not args.no_check:
        try:
            ref_leaves = {k: v.detach().float().requires_grad_() for k, v in base.items()}
            ref_out = selective_scan_ref(**ref_leaves, delta_softplus=True)
            (ref_out * weight).sum().backward()
            ref_out = ref_out.detach()
            rel = {
                k: (
                    (grads[k].float() - ref_leaves[k].grad).abs().max() / ref_leaves[k].grad.abs().max()
                ).item()
                for k in GRAD_NAMES
            }
            errors = {
                "out_rel": ((out.float() - ref_out).abs().max() / ref_out.abs().max()).item(),
                "grad_rel": max(rel.values()),
                "worst_grad": max(rel, key=rel.get),
            }
            del ref_leaves, ref_out
        except torch.cuda.OutOfMemoryError:
            errors = "loop OOM"
    return {
        "fwd_s": fwd_s,
        "fwd_bwd_s": fwd_bwd_s,
        "first_s": first_s,
        "peak_extra_bytes": peak_extra,
        "errors": errors,
    }


def worker(backend: str, dtype_names: list[str], args: argparse.Namespace) -> list[dict]:
    """Every size and dtype for one backend, in this process; one JSON line per result."""
    results = []
    for dtype_name in dtype_names:
        for size in args.sizes.split(","):
            batch, length = parse_size(size)
            try:
                res = _run_size(backend, batch, length, args, DTYPES[dtype_name])
            except torch.cuda.OutOfMemoryError:
                res = {"failed": "out of CUDA memory"}
            torch.cuda.empty_cache()
            res.update(batch=batch, length=length, dtype=dtype_name)
            print(json.dumps(res), flush=True)
            results.append(res)
    return results


def run_worker(backend: str, dtype_names: list[str], args: argparse.Namespace) -> dict[str, list[dict]]:
    """One subprocess per backend (all its dtypes and sizes); its rows by dtype. A worker that
    dies or times out leaves a row ``{"failed": why}`` for every result it did not print."""
    cmd = [sys.executable, __file__, "--worker", backend, "--dtypes", ",".join(dtype_names)]
    cmd += ["--sizes", args.sizes, "--dim", str(args.dim), "--d-state", str(args.d_state)]
    cmd += ["--repeats", str(args.repeats), "--loop-repeats", str(args.loop_repeats)]
    cmd += ["--no-check"] if args.no_check else []
    failed = None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.worker_timeout)
        stdout = proc.stdout
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
            failed = f"exit {proc.returncode}: {tail[0][:150]}"
            print(proc.stderr[-3000:], file=sys.stderr, flush=True)
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        failed = f"timed out after {args.worker_timeout} s"
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    out: dict[str, list[dict]] = {d: [r for r in rows if r.get("dtype") == d] for d in dtype_names}
    if failed:
        for d in dtype_names:
            out[d].append({"failed": failed})
    return out


def parse_size(text: str) -> tuple[int, int]:
    try:
        b, length = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--sizes: '{text}' must look like BxL, e.g. 64x384") from None
    return b, length


def _row_for(rows: list[dict], batch: int, length: int) -> dict:
    """The worker's row for (batch, length), or why there is none (the worker's failure)."""
    for r in rows:
        if (r.get("batch"), r.get("length")) == (batch, length):
            return r
    failures = [r["failed"] for r in rows if "failed" in r and "batch" not in r]
    return {"failed": failures[0] if failures else "no result"}


def _fmt_row(backend: str, dtype_name: str, r: dict, torch_row: dict | None, state_bytes: int) -> str:
    lead = f"{r.get('batch', '?'):>3} {r.get('length', '?'):>5} {dtype_name:<5} {backend:<10}"
    if "failed" in r:
        return f"{lead} FAILED: {r['failed']}"
    row = (
        f"{lead} {r['fwd_s'] * 1e3:>9.3f} {r['fwd_bwd_s'] * 1e3:>11.3f} {r['first_s']:>8.2f}"
        f" {r['peak_extra_bytes'] / 2**20:>11.1f} {r['peak_extra_bytes'] / state_bytes:>8.2f}"
    )
    if torch_row is not None and "failed" not in torch_row:
        row += f" {torch_row['fwd_s'] / r['fwd_s']:>9.1f}x {torch_row['fwd_bwd_s'] / r['fwd_bwd_s']:>10.1f}x"
    else:
        row += f" {'-':>10} {'-':>11}"
    e = r["errors"]
    if isinstance(e, dict):
        row += f" {e['out_rel']:>11.1e} {e['grad_rel']:>12.1e} ({e['worst_grad']})"
    elif e:
        row += f" {e}"
    return row


def target_lines(res: dict, dtypes: list[str]) -> list[str]:
    b, L = TARGET_SIZE
    lines = []

    def find(backend: str, dtype_name: str) -> dict | None:
        for r in res.get((backend, dtype_name), []):
            if (r.get("batch"), r.get("length")) == (b, L) and "failed" not in r:
                return r
        return None

    for dtype_name in dtypes:
        tri, tor, mam = (find(x, dtype_name) for x in ("triton", "torch", "mamba_ssm"))
        if tri and tor:
            x = tor["fwd_bwd_s"] / tri["fwd_bwd_s"]
            verdict = "met" if x >= 10 else "NOT met"
            lines.append(
                f"target ({dtype_name}): triton fwd+bwd >= 10x torch at B={b}, L={L}: {x:.1f}x -> {verdict}"
            )
        else:
            lines.append(f"target ({dtype_name}): triton vs torch at B={b}, L={L}: not measured")
        if tri and mam:
            x = tri["fwd_bwd_s"] / mam["fwd_bwd_s"]
            verdict = "met" if x <= 2 else "NOT met"
            lines.append(
                f"target ({dtype_name}): triton fwd+bwd within 2x of mamba_ssm at B={b}, L={L}: "
                f"{x:.2f}x mamba_ssm's time -> {verdict}"
            )
        else:
            lines.append(
                f"target ({dtype_name}): triton vs mamba_ssm at B={b}, L={L}: not measured "
                "(mamba_ssm not installed or a run failed)"
            )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="8x128,8x384,8x1536,64x128,64x384,64x1536", help="comma-separated BxL")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument(
        "--backends",
        default=",".join(available_backends()),
        help=f"comma-separated, of {', '.join(BACKENDS)} (default: those importable here)",
    )
    p.add_argument("--dtypes", default="fp32,bf16", help="input dtypes of u, delta, B, C: fp32, bf16")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per mode (the median is reported)")
    p.add_argument("--loop-repeats", type=int, default=3, help="timed runs of the slow loop")
    p.add_argument("--no-check", action="store_true", help="skip the error check against the loop")
    p.add_argument(
        "--worker-timeout", type=int, default=300, help="seconds per backend (all its sizes and dtypes)"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "bench_scan_cuda.txt")
    p.add_argument("--worker", metavar="BACKEND", help=argparse.SUPPRESS)
    args = p.parse_args()

    if not torch.cuda.is_available():
        print("bench_scan_cuda: no CUDA device (torch.cuda.is_available() is False); nothing to measure")
        return
    if args.worker:
        worker(args.worker, [x for x in args.dtypes.split(",") if x], args)
        return

    backends = [x for x in args.backends.split(",") if x]
    dtypes = [x for x in args.dtypes.split(",") if x]
    for name, given, known in (("backend", backends, BACKENDS), ("dtype", dtypes, DTYPES)):
        bad = [x for x in given if x not in known]
        if bad:
            raise SystemExit(f"unknown {name}(s) {bad}; choose from {', '.join(known)}")
    missing = [x for x in backends if x not in available_backends()]
    props = torch.cuda.get_device_properties(0)
    header = (
        f"{'B':>3} {'L':>5} {'dtype':<5} {'backend':<10} {'fwd ms':>9} {'fwd+bwd ms':>11} {'first s':>8}"
        f" {'peak MiB':>11} {'x state':>8} {'fwd/torch':>10} {'f+b/torch':>11}"
        f" {'err out':>11} {'err grad':>12}"
    )
    lines = [
        f"selective scan on {props.name} ({props.total_memory / 2**30:.0f} GiB), D={args.dim}, "
        f"N={args.d_state}, D + delta_bias + softplus; torch {torch.__version__}"
        + (f", triton {__import__('triton').__version__}" if "triton" in available_backends() else ""),
        "times: median of the timed runs; first s: the first forward+backward (compilation included); "
        "peak MiB: CUDA memory above the inputs during one forward+backward, also as a multiple of the "
        "fp32 (B, D, L, N) state; fwd/torch, f+b/torch: speed-up over the torch backend; errors vs the "
        "fp32 loop (max abs error / max |loop value|: of the output, and of the worst input's "
        "gradient, named)",
        header,
        "-" * len(header),
    ]
    if missing:
        lines.insert(1, f"not importable here, skipped: {', '.join(missing)}")
    print("\n".join(lines), flush=True)
    res: dict[tuple[str, str], list[dict]] = {}
    for backend in backends:
        # the loop upcasts to fp32 whatever it is given: it runs once, on fp32 inputs
        own = [d for d in dtypes if backend != "loop" or d == "fp32"]
        if backend in missing or not own:
            continue
        for dtype_name, rows in run_worker(backend, own, args).items():
            res[(backend, dtype_name)] = rows
    for size in args.sizes.split(","):
        batch, length = parse_size(size)
        state_bytes = batch * args.dim * length * args.d_state * 4
        for dtype_name in dtypes:
            by_backend = {}
            for backend in backends:
                rows = res.get((backend, dtype_name))
                if rows is not None:
                    by_backend[backend] = _row_for(rows, batch, length)
            for backend, r in by_backend.items():
                r = {**r, "batch": batch, "length": length}
                row = _fmt_row(backend, dtype_name, r, by_backend.get("torch"), state_bytes)
                print(row, flush=True)
                lines.append(row)
    lines += target_lines(res, dtypes)
    print("\n".join(lines[-2 * len(dtypes) :]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
