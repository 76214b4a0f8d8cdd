"""The self-check of the fused scan backends (``ops/scan_selfcheck.py``) and ``auto``'s fallback.

In-process, on CPU: ``auto`` is allowed to consider the fused backends on CPU
(``FUSED_DEVICE_TYPES``) and the fused entry points are replaced by fakes built on the torch
backend: a correct one, one a little wrong (outputs off by 1%), one that raises like a Triton
compile error. The real Triton kernels are checked in a subprocess under ``TRITON_INTERPRET=1``
(this file run as a script, ``--worker``), as ``tests/test_scan_triton.py`` does and for the
same reason: the variable must be set before Triton is first imported.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from mambapro.ops import scan_selfcheck as selfcheck
from mambapro.ops import selective_scan
from mambapro.ops.scan_reference import selective_scan_ref
from mambapro.ops.scan_torch import selective_scan_torch

scan_module = importlib.import_module("mambapro.ops.selective_scan")

NAMES = ("u", "delta", "A", "B", "C")


def make_inputs(batch=2, dim=6, length=13, d_state=4, seed=0, z=True) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": torch.rand(batch, dim, length, generator=g) * 0.8,
        "A": -torch.rand(dim, d_state, generator=g) * 3 - 0.1,
        "B": torch.randn(batch, d_state, length, generator=g),
        "C": torch.randn(batch, d_state, length, generator=g),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(batch, dim, length, generator=g),
        "delta_bias": torch.randn(dim, generator=g) * 0.5,
    }
    if not z:
        del x["z"]
    return x


class CompilationError(Exception):
    """Stands in for triton.compiler.errors.CompilationError."""


class Fake:
    """A fused entry point with the Triton backend's signature, built on the torch backend;
    ``scale`` != 1 makes its outputs wrong, ``raises`` makes every call fail; counts calls."""

    def __init__(self, scale: float = 1.0, raises: bool = False) -> None:
        self.scale, self.raises, self.calls = scale, raises, 0

    def __call__(
        self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, chunk_size=None
    ):
        self.calls += 1
        if self.raises:
            raise CompilationError("at 12:8: unsupported tensor index\n  (the kernel's source line)")
        out, last = selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size)
        return out * self.scale, last


@pytest.fixture(autouse=True)
def fresh_verdicts(monkeypatch):
    monkeypatch.delenv(selfcheck.STRICT_ENV, raising=False)
    selfcheck.clear()
    yield
    selfcheck.clear()


@pytest.fixture
def fused(monkeypatch):
    """``fused(triton=Fake|None, mamba_ssm=Fake|None)``: those entry points, considered by
    ``auto`` on CPU."""

    def set_(triton=None, mamba_ssm=None) -> None:
        monkeypatch.setattr(scan_module, "FUSED_DEVICE_TYPES", ("cpu",))
        monkeypatch.setattr(scan_module, "_triton_scan", lambda: triton)
        monkeypatch.setattr(scan_module, "_mamba_ssm_scan", lambda: mamba_ssm)

    return set_


def scan(x: dict, backend: str):
    return selective_scan(**x, delta_softplus=True, return_last_state=True, backend=backend)


def _run_recording(x: dict, backend: str):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, last = scan(x, backend)
    return out, last, [str(w.message) for w in caught]


def test_a_passing_fused_backend_is_used_and_checked_once(fused) -> None:
    fake = Fake()
    fused(triton=fake)
    x = make_inputs()
    out, last, msgs = _run_recording(x, "auto")
    assert msgs == []
    assert fake.calls == 2  # the check's forward, then the call itself
    assert torch.equal(out, scan(x, "triton")[0])  # what auto returns is the fused result, unchanged
    (verdict,) = selfcheck.verdicts()
    assert verdict.ok and verdict.backend == "triton" and verdict.device == "cpu"
    assert set(verdict.errors) == {
        "out",
        "last_state",
        "du",
        "ddelta",
        "dA",
        "dB",
        "dC",
        "dD",
        "dz",
        "ddelta_bias",
    }
    assert max(verdict.errors.values()) == 0.0  # the fake is the torch backend itself
    # cached: more calls of the same key check nothing again
    calls = fake.calls
    for _ in range(3):
        scan(x, "auto")
    assert fake.calls == calls + 3 and len(selfcheck.verdicts()) == 1


def test_the_key_is_device_dtypes_and_shape_class(fused) -> None:
    fused(triton=Fake())
    base = make_inputs()
    scan(base, "auto")
    scan(make_inputs(batch=3, seed=1), "auto")  # another batch size and values: the same key
    assert len(selfcheck.verdicts()) == 1
    scan(make_inputs(length=50), "auto")  # L enters as min(L, CHECK_LENGTH)
    scan(make_inputs(length=70), "auto")
    assert len(selfcheck.verdicts()) == 2
    scan(make_inputs(z=False), "auto")  # z absent
    scan(make_inputs(d_state=8), "auto")  # another N
    scan({**base, "u": base["u"].double()}, "auto")  # another dtype
    grouped = {**base, "B": base["B"][:, None].expand(-1, 2, -1, -1).contiguous()}
    scan(grouped, "auto")  # grouped B
    t = {
        k: v.transpose(-1, -2).contiguous().transpose(-1, -2) if v.dim() == 3 else v for k, v in base.items()
    }
    scan(t, "auto")  # time-major storage, as MA passes it
    sigs = [v.signature for v in selfcheck.verdicts()]
    assert len(sigs) == 7 and len(set(sigs)) == 7
    assert sigs[1].length == selfcheck.CHECK_LENGTH
    assert sigs[2].optional == ("D", "delta_bias") and sigs[3].d_state == 8
    assert dict(sigs[4].dtypes)["u"] == "float64" and sigs[5].groups == (2, 0)
    assert not dict(sigs[6].time_contiguous)["u"]


@pytest.mark.parametrize(
    ("fake", "expect"),
    [
        (Fake(scale=1.01), "largest error 1.00e-02 (out) exceeds the bound 2e-04"),
        (Fake(raises=True), "CompilationError: at 12:8"),
    ],
    ids=["wrong-output", "compile-error"],
)
def test_a_failing_fused_backend_warns_once_and_auto_uses_torch(fused, fake, expect) -> None:
    fused(triton=fake)
    x = make_inputs()
    out, last, msgs = _run_recording(x, "auto")
    assert len(msgs) == 1, msgs
    (msg,) = msgs
    assert msg.startswith("selective_scan: the triton backend failed its self-check on cpu (float32, D=6 N=4")
    assert expect in msg and msg.endswith("scan_backend=auto continues with torch")
    assert "\n" not in msg
    # the torch result, bit for bit, and the loop's within fp32 error
    ref_out, ref_last = scan(x, "torch")
    assert torch.equal(out, ref_out) and torch.equal(last, ref_last)
    loop_out, loop_last = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(out, loop_out, rtol=1e-5, atol=1e-5)
    # the verdict is cached: no second check, no second warning, never the fused backend
    calls = fake.calls
    out2, _, msgs2 = _run_recording(x, "auto")
    assert msgs2 == [] and fake.calls == calls and torch.equal(out2, ref_out)
    (verdict,) = selfcheck.verdicts()
    assert not verdict.ok and expect in verdict.detail


def test_auto_tries_the_next_fused_backend_in_order(fused, monkeypatch) -> None:
    good = Fake()
    fused(triton=Fake(scale=0.9), mamba_ssm=good)
    x = make_inputs()
    calls = []
    real = scan_module._run_backend

    def spy(backend, *args, **kw):
        calls.append(backend)
        if backend == "mamba_ssm":  # the real entry point refuses CPU tensors
            return good(*args, **kw)
        return real(backend, *args, **kw)

    monkeypatch.setattr(scan_module, "_run_backend", spy)
    _, _, msgs = _run_recording(x, "auto")
    assert len(msgs) == 1 and "the triton backend failed" in msgs[0]
    assert msgs[0].endswith("continues with mamba_ssm")
    # triton's check (fused, torch), mamba_ssm's check (fused, torch), then the call: mamba_ssm
    assert calls == ["triton", "torch", "mamba_ssm", "torch", "mamba_ssm"]
    assert [v.ok for v in selfcheck.verdicts()] == [False, True]


def test_every_fused_backend_failing_warns_once_each(fused) -> None:
    # mamba_ssm's real entry point refuses CPU tensors: a launch error of its own kind
    fused(triton=Fake(raises=True), mamba_ssm=Fake())
    x = make_inputs()
    out, _, msgs = _run_recording(x, "auto")
    assert len(msgs) == 2
    assert "triton backend failed" in msgs[0] and msgs[0].endswith("continues with mamba_ssm")
    assert "mamba_ssm backend failed" in msgs[1] and "runs only on CUDA tensors" in msgs[1]
    assert msgs[1].endswith("continues with torch")
    assert torch.equal(out, scan(x, "torch")[0])
    assert _run_recording(x, "auto")[2] == []


def test_an_explicit_fused_backend_is_never_replaced(fused, monkeypatch) -> None:
    wrong, broken = Fake(scale=1.01), Fake(raises=True)
    x = make_inputs()
    # by default explicit backends run unchecked: the wrong kernel's output comes back as it is
    fused(triton=wrong)
    out, _, msgs = _run_recording(x, "triton")
    assert msgs == [] and wrong.calls == 1 and selfcheck.verdicts() == []
    assert torch.equal(out, scan(x, "torch")[0] * 1.01)
    # an error of the kernel is raised, not answered by the torch backend
    fused(triton=broken)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CompilationError, match="unsupported tensor index"):
            scan(x, "triton")
    # strict: checked, and a failed check raises (the same check auto runs, no fallback)
    monkeypatch.setenv(selfcheck.STRICT_ENV, "strict")
    for fake, why in ((wrong, "largest error 1.00e-02 (out)"), (broken, "CompilationError")):
        selfcheck.clear()
        fused(triton=fake)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(selfcheck.ScanSelfCheckError) as err:
                scan(x, "triton")
        msg = str(err.value)
        assert msg.startswith("selective_scan: the triton backend failed its self-check on cpu")
        assert why in msg and "not replaced" in msg
    fused(triton=Fake())
    selfcheck.clear()
    assert torch.equal(scan(x, "triton")[0], scan(x, "torch")[0])  # a passing kernel runs


def test_the_check_runs_under_inference_mode_and_autocast(fused) -> None:
    fused(triton=Fake())
    x = make_inputs()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = selective_scan(**x, delta_softplus=True, backend="auto")
    (verdict,) = selfcheck.verdicts()
    assert verdict.ok, verdict.detail
    assert torch.equal(out, selective_scan(**x, delta_softplus=True, backend="torch"))


def test_bounds_are_stated_per_dtype() -> None:
    assert set(selfcheck.BOUNDS) == {torch.float32, torch.bfloat16, torch.float16}
    for out_bound, grad_bound in selfcheck.BOUNDS.values():
        assert 0 < out_bound <= grad_bound < 0.02


def test_auto_off_cuda_runs_no_check() -> None:
    x = make_inputs()
    assert torch.equal(scan(x, "auto")[0], scan(x, "torch")[0])
    assert selfcheck.verdicts() == []


# ----------------------------------------------------------------------------- the real Triton kernels


def worker() -> dict:
    """Under TRITON_INTERPRET=1: auto on CPU (allowed for the test) with the real kernels."""
    from mambapro.ops import scan_triton

    assert scan_triton.INTERPRETED, "the worker must run with TRITON_INTERPRET=1"
    scan_module.FUSED_DEVICE_TYPES = ("cpu",)
    scan_module._mamba_ssm_scan = lambda: None
    base = make_inputs(batch=1, dim=4, length=9, d_state=4)
    bf16 = {k: v.bfloat16() if v.dim() == 3 else v for k, v in make_inputs(1, 4, 9, 4, seed=1).items()}
    bf16["B"] = bf16["B"][:, None].expand(-1, 2, -1, -1).contiguous()  # grouped B
    results = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, x in (("fp32", base), ("bf16-grouped", bf16)):
            auto = selective_scan(**x, delta_softplus=True, backend="auto")
            explicit = selective_scan(**x, delta_softplus=True, backend="triton")
            verdict = selfcheck.verdicts()[-1]
            results[name] = {
                "ok": verdict.ok,
                "backend": verdict.backend,
                "detail": verdict.detail,
                "errors": verdict.errors,
                "seconds": verdict.seconds,
                "auto_equals_triton": torch.equal(auto, explicit),
            }
    results["_warnings"] = [str(w.message) for w in caught]
    return results


def test_the_triton_kernels_pass_their_self_check_interpreted() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop(selfcheck.STRICT_ENV, None)
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    res = json.loads(done.stdout.strip().splitlines()[-1])
    assert res.pop("_warnings") == []
    for name, r in res.items():
        assert r["backend"] == "triton" and r["ok"], (name, r)
        assert r["auto_equals_triton"], name  # auto runs the kernels, bit for bit
        assert "within the bound" in r["detail"]


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    print(json.dumps(worker()))
