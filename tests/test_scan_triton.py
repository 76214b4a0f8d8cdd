"""The Triton selective scan (``backend='triton'``) equals the torch backend and the literal loop.

How the kernels run without a GPU: Triton's interpreter executes them on CPU tensors, but only
when ``TRITON_INTERPRET=1`` is in the environment when ``@triton.jit`` decorates them, i.e. when
``mambapro.ops.scan_triton`` is first imported, and Triton reads it through process-wide state
(``triton.knobs``). Setting it inside this pytest process would either come too late (another
test may already have imported the module) or leak into every later test. So the numerical
checks run in ONE subprocess started with ``TRITON_INTERPRET=1`` (this file run as a script,
``python tests/test_scan_triton.py``): it runs every case below and prints a JSON table of max
errors, which the module-scoped fixture ``interpreted`` reads; each parametrised test then
asserts on its own case, so a failure names the case, the input and the measured error. The
pytest process itself never sets the variable. The dispatch tests (``auto`` and explicit
backends with monkeypatched availability) run in-process.

Errors are max |ours − ref| / max |ref| per tensor, ref = the loop (``scan_reference.py``) and
the torch backend; bounds in fp32: 1e-5 (output, last state), 1e-4 (gradients of every input).
bf16 inputs: outputs and bf16 gradients within two bf16 roundings (2^-7 of the max). The
interpreter runs ``tl.associative_scan`` element by element and every op of every program in
Python, so sizes are small (the whole file takes ~25 s of CPU time, ~40 s wall on a busy 2-core
machine); one case lowers the kernels' tile budgets so that several channel blocks are covered
at a small D. The compiled path is checked here by compiling both kernels for sm_90, and on a
GPU (skipped without one) against the torch backend at MA's size.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mambapro.config import load_config
from mambapro.ops import SCAN_BACKENDS, resolve_backend, selective_scan
from mambapro.ops.scan_reference import selective_scan_ref

scan_module = importlib.import_module("mambapro.ops.selective_scan")

OUT_TOL, GRAD_TOL = 1e-5, 1e-4
BF16_TOL = 2.0**-7  # two bf16 roundings (each backend rounds its fp32 result once)
ALL = ("D", "z", "delta_bias")

# name -> spec: optional inputs used, softplus, input sizes ``dims`` = (batch, D, L, N) (default
# (1, 4, 9, 4)), ``chunk`` (the chunk_size passed), B/C ``groups``, and flags. Every case runs
# triton, the torch backend and the loop on the same inputs with the same weighted loss.
CASES: dict[str, dict] = {}


def _case(name: str, use=ALL, softplus: bool = True, **kw) -> None:
    CASES[name] = {"use": sorted(use), "softplus": softplus, **kw}


# every optional input (the kernels' compile-time branches); L = 9 leaves a ragged chunk of 1
for _use in [(), ("D",), ("z",), ("delta_bias",), ("D", "z"), ("D", "delta_bias"), ("z", "delta_bias"), ALL]:
    _case("opt-" + ("+".join(_use) or "plain"), use=_use, chunk=4)
_case("opt-all-raw_dt", softplus=False, chunk=4)
_case("opt-plain-raw_dt", use=(), softplus=False, chunk=4)
# chunk boundaries everywhere: every step, 5 -> 4 (13 = 3*4 + 1); the default: the dlast cases
for _chunk in (1, 5):
    _case(f"chunk-{_chunk}", dims=(2 if _chunk == 5 else 1, 6, 13, 4), chunk=_chunk)
# grouped B/C (mamba-ssm's (B, G, N, L)), also with different group counts for B and C
_case("groups-1", groups=(1, 1), chunk=4)
_case("groups-3", dims=(1, 6, 9, 4), groups=(3, 3), chunk=8)
_case("groups-B2-C3", dims=(1, 6, 5, 4), groups=(2, 3), chunk=4)
_case("groups-B3-Cflat", dims=(1, 6, 9, 4), groups=(3, None), chunk=8)
# state sizes (N = 16 at the real tile budget: one block of 8 channels, tiles of 8 x 8 x 16)
_case("N1", dims=(1, 6, 13, 1), chunk=4)
_case("N16", dims=(1, 8, 11, 16), chunk=8)
# several channel blocks with a ragged last one (10 = 4 + 4 + 2), in both kernels: the tile
# budgets are lowered for this case only, as a large D would make the interpreter slow
_case("channel-blocks", dims=(2, 10, 5, 4), chunk=4, fwd_tile=16, bwd_tile=64)
# the gradient of last_state flows (mamba-ssm's kernel drops it)
for _chunk in (1, 4, None):
    _case(
        f"dlast-chunk-{_chunk}", use=("D", "delta_bias"), dims=(1, 4, 11, 4), chunk=_chunk, loss_on_state=True
    )
_case("only-last-state-used", use=("D",), chunk=4, only_state=True)
_case("non-contiguous", use=("D", "z"), dims=(2, 4, 9, 4), chunk=4, transpose=True)
_case("large-delta", chunk=4, delta_shift=21.0)  # softplus' linear branch (x > 20)
_case("bf16", dims=(2, 4, 9, 4), chunk=4, bf16=True)


def make_inputs(batch=2, dim=6, length=13, d_state=4, groups=(None, None), seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def bc(groups_):
        shape = (batch, d_state, length) if groups_ is None else (batch, groups_, d_state, length)
        return torch.randn(*shape, generator=g)

    return {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": torch.rand(batch, dim, length, generator=g) * 0.8,
        "A": -torch.rand(dim, d_state, generator=g) * 3 - 0.1,
        "B": bc(groups[0]),
        "C": bc(groups[1]),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(batch, dim, length, generator=g),
        "delta_bias": torch.randn(dim, generator=g) * 0.5,
    }


def case_inputs(name: str) -> dict:
    spec = CASES[name]
    b, d, L, n = spec.get("dims", (1, 4, 9, 4))
    inputs = make_inputs(b, d, L, n, groups=spec.get("groups", (None, None)), seed=list(CASES).index(name))
    if "delta_shift" in spec:
        inputs["delta"] = inputs["delta"] + spec["delta_shift"]
        inputs["A"] = inputs["A"] * 0.05  # keep exp(ΔA) away from 0 so the state matters
    if spec.get("bf16"):
        for k in ("u", "delta", "B", "C", "z"):
            inputs[k] = inputs[k].bfloat16()
    return {k: v for k, v in inputs.items() if k not in ALL or k in spec["use"]}


def run_case(fn, inputs: dict, spec: dict, **kw):
    """Output, last state and input gradients of a fixed weighted loss."""
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    args = leaves
    if spec.get("transpose"):  # (B, D, L) views of (B, L, D) storage, as MA passes them
        args = {
            k: v.transpose(-1, -2).contiguous().transpose(-1, -2) if v.dim() == 3 else v
            for k, v in leaves.items()
        }
    out, last = fn(**args, delta_softplus=spec["softplus"], return_last_state=True, **kw)
    w = torch.linspace(-1.0, 1.0, out.numel()).view_as(out)
    if spec.get("only_state"):
        loss = (last * last.cos()).sum()
    else:
        loss = (out.float() * w).sum()
        if spec.get("loss_on_state"):
            loss = loss + (last * last.sin()).sum()
    loss.backward()
    # an input the loss does not reach gets no gradient from autograd, zeros from the kernels
    grads = {k: v.grad if v.grad is not None else torch.zeros_like(v) for k, v in leaves.items()}
    return out.detach(), last.detach(), grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def compare(ours, ref, same_dtypes: bool = True) -> dict:
    """Max relative errors, and whether shapes (and dtypes, when ``same_dtypes``) agree."""
    (y, last, grads), (y_ref, last_ref, grads_ref) = ours, ref

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.shape == b.shape and (a.dtype == b.dtype or not same_dtypes)

    errs = {"out": _rel(y, y_ref), "last_state": _rel(last, last_ref)}
    meta = {
        "out_dtype_ok": same(y, y_ref),
        "last_dtype_ok": last.dtype == torch.float32,
        "grads_ok": grads.keys() == grads_ref.keys()
        and all(grads[k] is not None and same(grads[k], grads_ref[k]) for k in grads_ref),
    }
    errs.update({f"d{k}": _rel(grads[k], grads_ref[k]) for k in grads_ref})
    return {"errors": errs, **meta}


def worker() -> dict:
    """Every case under the interpreter (this process has TRITON_INTERPRET=1)."""
    from mambapro.ops import scan_triton

    assert scan_triton.INTERPRETED, "the worker must run with TRITON_INTERPRET=1"
    results = {}
    tiles = {"fwd_tile": "_FWD_TILE", "bwd_tile": "_BWD_TILE"}
    defaults = {attr: getattr(scan_triton, attr) for attr in tiles.values()}
    for name, spec in CASES.items():
        t0 = time.perf_counter()
        inputs = case_inputs(name)
        for key, attr in tiles.items():
            setattr(scan_triton, attr, spec.get(key, defaults[attr]))
        ours = run_case(selective_scan, inputs, spec, backend="triton", chunk_size=spec.get("chunk"))
        torch_b = run_case(selective_scan, inputs, spec, backend="torch")
        if spec.get("bf16"):  # the loop on the same values in fp32 (so its dtypes are fp32)
            ref = run_case(selective_scan_ref, {k: v.float() for k, v in inputs.items()}, spec)
        else:
            ref = run_case(selective_scan_ref, inputs, spec)
        results[name] = {
            "vs_torch": compare(ours, torch_b),
            "vs_loop": compare(ours, ref, same_dtypes=not spec.get("bf16")),
            "seconds": time.perf_counter() - t0,
        }
    out = selective_scan(*(inputs[k] for k in ("u", "delta", "A", "B", "C")), backend="triton")
    results["_plain_return_is_tensor"] = isinstance(out, torch.Tensor)
    return results


@pytest.fixture(scope="module")
def interpreted() -> dict:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"the interpreted worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_triton_matches_torch_and_loop(interpreted: dict, name: str) -> None:
    spec = CASES[name]
    for against in ("vs_torch", "vs_loop"):
        res = interpreted[name][against]
        assert res["out_dtype_ok"] and res["last_dtype_ok"] and res["grads_ok"], (against, res)
        errs = res["errors"]
        if spec.get("bf16"):
            # bf16 outputs and gradients are rounded to bf16, and so is the incoming gradient of
            # the bf16 output (the loop's is fp32): every fp32 gradient vs the loop sees it too;
            # vs the torch backend (same bf16 inputs and output gradient) dA, dD, d bias are fp32
            rounded = ("out", "du", "ddelta", "dB", "dC", "dz")
            bounds = {k: BF16_TOL if k in rounded or against == "vs_loop" else GRAD_TOL for k in errs}
            bounds["last_state"] = OUT_TOL
        else:
            bounds = {k: (OUT_TOL if k in ("out", "last_state") else GRAD_TOL) for k in errs}
        bad = {k: v for k, v in errs.items() if not v <= bounds[k]}
        assert not bad, f"{name} vs {against}: {bad} (all errors: {errs})"


def test_triton_returns_tensor_without_last_state(interpreted: dict) -> None:
    assert interpreted["_plain_return_is_tensor"]


# ----------------------------------------------------------------------------- compiled kernels


def test_kernels_compile_for_a_cuda_target() -> None:
    """The interpreter accepts code the compiler rejects; compile both kernels for sm_90 (Triton ->
    PTX -> ptxas, all bundled with triton, no GPU needed) with every option on, bf16 inputs and
    the launch's block sizes for N = 16 and the default chunk."""
    pytest.importorskip("triton")
    scan_triton = importlib.import_module("mambapro.ops.scan_triton")
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:  # pragma: no cover - depends on the Triton version
        pytest.skip(f"this Triton has no ahead-of-time compile API: {e}")
    low = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "dout_ptr"}
    chunk, block_n = scan_triton._DEFAULT_CHUNK, 16
    flags = {
        "HAS_D": True,
        "HAS_Z": True,
        "HAS_BIAS": True,
        "SOFTPLUS": True,
        "BLOCK_N": block_n,
        "CHUNK": chunk,
    }
    for kernel, block_d in (
        (scan_triton.scan_fwd_kernel, scan_triton._fwd_block_d(1024, block_n)),
        (scan_triton.scan_bwd_kernel, scan_triton._bwd_block_d(1024, block_n, chunk)),
    ):
        const = {**flags, "BLOCK_D": block_d}
        signature = {
            name: "constexpr"
            if name in const
            else ("*bf16" if name in low else "*fp32")
            if name.endswith("_ptr")
            else "i32"
            for name in kernel.arg_names
        }
        compiled = triton.compile(
            ASTSource(kernel, signature, constexprs=const),
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": 4},
        )
        assert compiled.asm["cubin"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_triton_matches_torch_on_gpu(dtype: torch.dtype) -> None:
    """On a GPU: the compiled kernels vs the torch backend at MA's size (D = 512, N = 16, L = 387)."""
    cpu = make_inputs(2, 512, 387, 16, seed=7)
    cpu["delta"] = cpu["delta"] - 2.0
    x = {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v).cuda() for k, v in cpu.items()}
    spec = {"use": list(ALL), "softplus": True, "loss_on_state": True}
    ours = run_case(selective_scan, x, spec, backend="triton")
    ref = run_case(selective_scan, x, spec, backend="torch")
    res = compare(ours, ref)
    assert res["out_dtype_ok"] and res["last_dtype_ok"] and res["grads_ok"], res
    tol = {"out": 1e-5, "last_state": 1e-5} if dtype == torch.float32 else {"out": BF16_TOL}
    for k, err in res["errors"].items():
        assert err <= tol.get(k, GRAD_TOL if dtype == torch.float32 else BF16_TOL), (k, res["errors"])


# ----------------------------------------------------------------------------- dispatch (in-process)


@pytest.fixture
def availability(monkeypatch):
    """Set which optional backends import: ``availability(triton=..., mamba_ssm=...)``."""

    def set_(triton: bool, mamba_ssm: bool) -> None:
        monkeypatch.setattr(scan_module, "_triton_scan", lambda: (lambda *a: None) if triton else None)
        monkeypatch.setattr(scan_module, "_mamba_ssm_scan", lambda: (lambda *a: None) if mamba_ssm else None)

    return set_


@pytest.mark.parametrize(
    ("triton", "mamba_ssm", "expected"),
    [(True, True, "triton"), (True, False, "triton"), (False, True, "mamba_ssm"), (False, False, "torch")],
)
def test_auto_on_cuda_prefers_triton_then_mamba_ssm_then_torch(availability, triton, mamba_ssm, expected):
    availability(triton, mamba_ssm)
    assert resolve_backend("auto", torch.device("cuda", 0)) == expected
    assert resolve_backend("auto", "cuda") == expected


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_auto_off_cuda_is_torch(availability, device: str) -> None:
    availability(True, True)
    assert resolve_backend("auto", device) == "torch"


def test_explicit_backends_are_kept(availability) -> None:
    availability(False, False)
    for backend in ("torch", "triton", "mamba_ssm"):
        assert resolve_backend(backend, "cuda") == backend
    assert "triton" in SCAN_BACKENDS
    with pytest.raises(ValueError, match="'fast' is not one of: torch, mamba_ssm, triton, auto"):
        resolve_backend("fast", "cpu")


def test_triton_backend_calls_the_triton_scan(monkeypatch) -> None:
    """selective_scan validates, then hands every argument to the Triton entry point."""
    calls = []

    def fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size):
        calls.append((D, z, delta_bias, delta_softplus, chunk_size))
        return torch.zeros_like(u), torch.ones(u.shape[0], u.shape[1], A.shape[1])

    monkeypatch.setattr(scan_module, "_triton_scan", lambda: fake)
    x = make_inputs()
    args = [x[k] for k in ("u", "delta", "A", "B", "C")]
    out, last = selective_scan(*args, x["D"], delta_softplus=True, return_last_state=True, backend="triton")
    assert torch.equal(out, torch.zeros_like(x["u"])) and last.shape == (2, 6, 4)
    assert calls == [(x["D"], None, None, True, None)]
    assert isinstance(selective_scan(*args, backend="triton", chunk_size=8), torch.Tensor)
    assert calls[-1][-1] == 8
    with pytest.raises(ValueError, match=r"B must be \(B, N, L\)"):  # validation precedes the kernel
        selective_scan(args[0], args[1], args[2], args[3][:, :, :5], args[4], backend="triton")
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        selective_scan(*args, backend="triton", chunk_size=0)


def test_triton_backend_without_triton_errors_clearly(monkeypatch) -> None:
    monkeypatch.setattr(scan_module, "_triton_scan", lambda: None)
    x = make_inputs()
    with pytest.raises(RuntimeError, match="backend='triton' needs the triton package"):
        selective_scan(*(x[k] for k in ("u", "delta", "A", "B", "C")), backend="triton")


def test_triton_backend_on_cpu_without_interpreter_errors_clearly() -> None:
    scan_triton = pytest.importorskip("mambapro.ops.scan_triton")
    if scan_triton.INTERPRETED:
        pytest.skip("TRITON_INTERPRET=1 is set for this process: CPU tensors are valid")
    x = make_inputs()
    with pytest.raises(RuntimeError, match="runs only on CUDA tensors, got u on cpu"):
        selective_scan(*(x[k] for k in ("u", "delta", "A", "B", "C")), backend="triton")


def test_config_accepts_triton_backend() -> None:
    assert load_config(overrides=["model.scan_backend=triton"]).model.scan_backend == "triton"


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        torch.set_num_threads(1)
        print(json.dumps(worker()))
    else:
        raise SystemExit("usage: TRITON_INTERPRET=1 python tests/test_scan_triton.py --worker")
