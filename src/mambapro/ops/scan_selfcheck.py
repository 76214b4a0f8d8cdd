"""The self-check of the fused scan backends (``triton``, ``mamba_ssm``) against the torch backend.

``model.scan_backend=auto`` is safe by construction: the first time a process would run a fused
backend for a key (backend, device, input dtypes, shape class), :func:`run_check` runs that
backend forward AND backward on a small input of the same class and compares the output, the
last state and every input gradient with the torch backend's on the same input; the verdict is
cached for the process (:func:`verdicts`, :func:`clear`), so each key is checked once (a few ms
on a GPU). :func:`mambapro.ops.selective_scan.select_backend` uses the fused backend only on a
passing verdict and otherwise warns once (the verdict is new only once) and tries the next
backend in ``auto``'s order.

The shape class (:class:`Signature`) is what selects a different compiled kernel or a different
path through one: the channel count D and state size N (block sizes, the channel-to-program
map), B's and C's group counts (0: the ungrouped (B, N, L) form), which optional inputs are
given (D, z, delta_bias: compile-time flags), softplus, the requested ``chunk_size`` (a
compile-time tile extent), whether each (B, ·, L) input is contiguous in time (Triton
specialises on unit strides; MA passes (B, L, D) storage viewed as (B, D, L)) and the dtype of
every input. The batch size is not part of it (a grid axis: the check runs at batch 2), and
the sequence length only as min(L, :data:`CHECK_LENGTH`), the length the check runs: the kernels
walk L in chunks, and 40 steps cover a full default chunk, a chunk boundary and a ragged chunk,
so every longer sequence shares one key.

Errors are max |fused − torch| / max |torch| per tensor; the bounds (:data:`BOUNDS`) are by the
compared tensor's dtype, see there. A NaN, a wrong shape or dtype, or any exception (a Triton
compile error, a CUDA launch error) fails the check. On CUDA the reference runs with TF32
matmuls off, so that the bound measures the kernel, not the reference's precision setting.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "BOUNDS",
    "CHECK_LENGTH",
    "STRICT_ENV",
    "ScanSelfCheckError",
    "Signature",
    "Verdict",
    "clear",
    "run_check",
    "signature",
    "strict",
    "verdicts",
]

#: (outputs, gradients) bounds on max |fused − torch| / max |torch|, by the compared tensor's
#: dtype. Both backends accumulate in fp32 and round a low-precision result once, so:
#:
#: * fp32: the two differ only by the order of fp32 operations and the GPU's exp/log
#:   approximations; the Triton kernels measure ≤ 4e-7 (outputs and gradients) at the check's
#:   sizes under the CPU interpreter, and mamba-ssm's own tests allow ~6e-4 element-wise (not
#:   yet measured on a GPU here). 2e-4 and 1e-3 leave that margin,
#:   while a wrong kernel (a missed term, an off-by-one in time, a wrong stride) is off by 1e-2
#:   or more.
#: * bf16 (8 significant bits) and fp16 (11): a near-tie may round one ulp apart, and the fp32
#:   values rounded already differ a little; four roundings of the largest value (2^-6 and 2^-9)
#:   bound that. Gradients in fp32 (A's, D's, the bias's) keep the fp32 bounds.
BOUNDS: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (2e-4, 1e-3),
    torch.bfloat16: (2.0**-6, 2.0**-6),
    torch.float16: (2.0**-9, 2.0**-9),
}
_OTHER_BOUNDS = BOUNDS[torch.float32]  # float64 inputs are cast to fp32 by every backend

#: The longest sequence the check runs (the caller's L when shorter): with the Triton default
#: chunk of 32, one full chunk and a ragged one of 8.
CHECK_LENGTH = 40
CHECK_BATCH = 2

#: ``MAMBAPRO_SCAN_SELFCHECK=strict`` also checks explicitly requested fused backends, which then
#: raise :class:`ScanSelfCheckError` on a failed check (by default they run unchecked).
STRICT_ENV = "MAMBAPRO_SCAN_SELFCHECK"

_OPTIONAL = ("D", "z", "delta_bias")
_SEQUENCES = ("u", "delta", "z")  # the (B, D, L) inputs


class ScanSelfCheckError(RuntimeError):
    """An explicitly requested fused backend failed its self-check (strict mode)."""


@dataclass(frozen=True)
class Signature:
    """The key of a verdict besides the backend: device, dtypes and the shape class."""

    device: str
    dtypes: tuple[tuple[str, str], ...]  # (input, dtype) of every given input
    dim: int  # D, channels
    d_state: int  # N
    groups: tuple[int, int]  # B's and C's group counts, 0 for the ungrouped (B, N, L) form
    optional: tuple[str, ...]  # which of D, z, delta_bias are given
    softplus: bool
    chunk_size: int | None
    time_contiguous: tuple[tuple[str, bool], ...]  # (input, stride(-1) == 1) of u, delta, z, B, C
    length: int  # the check's L: min(L, CHECK_LENGTH)

    def describe(self) -> str:
        """A short human-readable form for warnings and the doctor report."""
        dtypes = dict(self.dtypes)
        main = dtypes["u"]
        mixed = sorted({f"{k}={v}" for k, v in self.dtypes if v != main})
        opts = "+".join(self.optional) or "no D/z/bias"
        gb, gc = self.groups
        parts = [
            main + (f" ({', '.join(mixed)})" if mixed else ""),
            f"D={self.dim} N={self.d_state}",
            f"B/C groups {gb or '-'}/{gc or '-'}",
            opts,
            "softplus" if self.softplus else "raw delta",
        ]
        if self.chunk_size is not None:
            parts.append(f"chunk_size={self.chunk_size}")
        return ", ".join(parts)


@dataclass
class Verdict:
    """The outcome of one check: ``ok``, and ``detail`` (the largest error against its bound, or
    the exception as ``Type: message``)."""

    backend: str
    signature: Signature
    ok: bool
    detail: str
    errors: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def device(self) -> str:
        return self.signature.device


_VERDICTS: dict[tuple[str, Signature], Verdict] = {}
_LOCK = threading.RLock()


def strict() -> bool:
    """Whether explicit fused backends are checked too (``MAMBAPRO_SCAN_SELFCHECK=strict``)."""
    return os.environ.get(STRICT_ENV, "").strip().lower() == "strict"


def verdicts() -> list[Verdict]:
    """Every verdict this process has reached, in order."""
    with _LOCK:
        return list(_VERDICTS.values())


def clear() -> None:
    """Forget every verdict (tests)."""
    with _LOCK:
        _VERDICTS.clear()


def signature(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    chunk_size: int | None,
) -> Signature:
    """The :class:`Signature` of validated scan inputs."""
    given = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    given = {k: v for k, v in given.items() if v is not None}
    return Signature(
        device=str(u.device),
        dtypes=tuple((k, str(v.dtype).removeprefix("torch.")) for k, v in given.items()),
        dim=u.shape[1],
        d_state=A.shape[1],
        groups=(B.shape[1] if B.dim() == 4 else 0, C.shape[1] if C.dim() == 4 else 0),
        optional=tuple(k for k in _OPTIONAL if k in given),
        softplus=bool(delta_softplus),
        chunk_size=chunk_size,
        time_contiguous=tuple(
            (k, given[k].stride(-1) == 1) for k in ("u", "delta", "z", "B", "C") if k in given
        ),
        length=min(u.shape[-1], CHECK_LENGTH),
    )


def _inputs(sig: Signature) -> dict[str, Tensor]:
    """Seeded inputs of the signature's class (drawn on CPU, so no device RNG state changes)."""
    g = torch.Generator().manual_seed(0)
    b, d, L, n = CHECK_BATCH, sig.dim, sig.length, sig.d_state

    def bc(groups: int) -> Tensor:
        return torch.randn(*((b, n, L) if groups == 0 else (b, groups, n, L)), generator=g)

    x = {
        "u": torch.randn(b, d, L, generator=g),
        "delta": torch.rand(b, d, L, generator=g) * 0.8,
        "A": -torch.rand(d, n, generator=g) * 3 - 0.1,
        "B": bc(sig.groups[0]),
        "C": bc(sig.groups[1]),
        "D": torch.randn(d, generator=g),
        "z": torch.randn(b, d, L, generator=g),
        "delta_bias": torch.randn(d, generator=g) * 0.5,
    }
    contiguous = dict(sig.time_contiguous)
    out = {}
    for name, dtype in sig.dtypes:
        t = x[name].to(device=sig.device, dtype=getattr(torch, dtype))
        if not contiguous.get(name, True):  # time-major storage viewed as (..., L), as MA passes it
            t = t.transpose(-1, -2).contiguous().transpose(-1, -2)
        out[name] = t
    return out


@contextlib.contextmanager
def _exact_reference(device: torch.device) -> Iterator[None]:
    """TF32 matmuls off while the torch reference runs on CUDA (restored afterwards)."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _forward_backward(
    run: Callable[..., tuple[Tensor, Tensor]],
    backend: str,
    x: dict[str, Tensor],
    sig: Signature,
    on_state: bool,
) -> dict[str, Tensor]:
    leaves = {k: v.clone().requires_grad_(v.is_floating_point()) for k, v in x.items()}
    out, last = run(backend, **leaves, delta_softplus=sig.softplus, chunk_size=sig.chunk_size)
    w = torch.linspace(-1.0, 1.0, out.numel(), device=out.device).view_as(out)
    loss = (out.float() * w).sum()
    if on_state:
        loss = loss + (last * last.sin()).sum()
    loss.backward()
    grads = {f"d{k}": v.grad if v.grad is not None else torch.zeros_like(v) for k, v in leaves.items()}
    return {"out": out.detach(), "last_state": last.detach(), **grads}


def _compare(ours: dict[str, Tensor], ref: dict[str, Tensor]) -> tuple[bool, str, dict[str, float]]:
    errors: dict[str, float] = {}
    worst: tuple[float, str, float] | None = None  # (error / bound, name, bound)
    for name, r in ref.items():
        o = ours[name]
        if o.shape != r.shape or o.dtype != r.dtype:
            return False, f"{name} is {o.dtype} {tuple(o.shape)}, expected {r.dtype} {tuple(r.shape)}", errors
        err = ((o.float() - r.float()).abs().max() / r.float().abs().max().clamp_min(1e-12)).item()
        errors[name] = err
        bound = BOUNDS.get(r.dtype, _OTHER_BOUNDS)[0 if name in ("out", "last_state") else 1]
        ratio = err / bound if err == err else float("inf")  # NaN fails
        if worst is None or ratio > worst[0]:
            worst = (ratio, name, bound)
    assert worst is not None
    ratio, name, bound = worst
    relation = "within" if ratio <= 1 else "exceeds"
    detail = f"largest error {errors[name]:.2e} ({name}) {relation} the bound {bound:.0e} (vs torch)"
    return ratio <= 1, detail, errors


def _one_line(err: BaseException) -> str:
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _check(backend: str, sig: Signature, run: Callable[..., tuple[Tensor, Tensor]]) -> Verdict:
    device = torch.device(sig.device)
    on_state = backend != "mamba_ssm"  # mamba-ssm's kernel drops last_state's gradient
    start = time.perf_counter()
    autocast = torch.autocast(device.type, enabled=False) if device.type in ("cuda", "cpu") else None
    with torch.inference_mode(False), torch.enable_grad(), autocast or contextlib.nullcontext():
        x = _inputs(sig)  # inside: under inference_mode they would be inference tensors
        try:
            ours = _forward_backward(run, backend, x, sig, on_state)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # an asynchronous launch error surfaces here
        except Exception as err:  # a compile or launch error: the backend is unusable here
            return Verdict(backend, sig, False, _one_line(err), seconds=time.perf_counter() - start)
        with _exact_reference(device):
            ref = _forward_backward(run, "torch", x, sig, on_state)
    ok, detail, errors = _compare(ours, ref)
    return Verdict(backend, sig, ok, detail, errors, time.perf_counter() - start)


def run_check(
    backend: str, sig: Signature, run: Callable[..., tuple[Tensor, Tensor]]
) -> tuple[Verdict, bool]:
    """``(verdict, new)``: the cached verdict for (backend, sig), checked now when there is none
    (``new``). ``run(backend, u, delta, A, B, C, D=, z=, delta_bias=, delta_softplus=,
    chunk_size=)`` returns (out, last_state) of that backend."""
    key = (backend, sig)
    with _LOCK:
        if key in _VERDICTS:
            return _VERDICTS[key], False
        verdict = _check(backend, sig, run)
        _VERDICTS[key] = verdict
        return verdict, True


# FX/dynamo would trace the check (data-dependent comparisons, a backward): run it eagerly.
_disable = getattr(getattr(torch, "compiler", None), "disable", None)
if _disable is not None:
    run_check = _disable(run_check)
