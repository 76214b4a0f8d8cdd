"""The fast selective scan equals the literal step-by-step loop (mamba-ssm's selective_scan_ref).

Every test compares against ``mambapro.ops.scan_reference.selective_scan_ref``, a line-by-line port
of mamba-ssm's reference loop differentiated by autograd: outputs, the last state and the
gradients of every input, for every combination of the optional inputs, both B/C layouts and
several chunk sizes (so chunk boundaries fall everywhere, including a ragged last chunk).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mambapro.ops import selective_scan
from mambapro.ops.scan_reference import selective_scan_ref

OPTIONAL = ("D", "z", "delta_bias")


def make_inputs(
    batch: int = 2, dim: int = 6, length: int = 13, d_state: int = 4, groups: int | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    bc_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    return {
        "u": torch.randn(batch, dim, length, generator=g),
        # positive steps, as softplus or Mamba's init produce; negative ones make the state explode
        "delta": torch.rand(batch, dim, length, generator=g) * 0.8,
        "A": -torch.rand(dim, d_state, generator=g) * 3 - 0.1,
        "B": torch.randn(*bc_shape, generator=g),
        "C": torch.randn(*bc_shape, generator=g),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(batch, dim, length, generator=g),
        "delta_bias": torch.randn(dim, generator=g) * 0.5,
    }


def run(
    fn, inputs: dict[str, torch.Tensor], use: set[str], softplus: bool, loss_on_state: bool = False, **kw
):
    """Output, last state and input gradients of a fixed scalar loss (weights break symmetry)."""
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if k not in OPTIONAL or k in use}
    out, last = fn(**leaves, delta_softplus=softplus, return_last_state=True, **kw)
    w = torch.linspace(-1.0, 1.0, out.numel()).view_as(out)
    loss = (out.float() * w).sum()
    if loss_on_state:
        loss = loss + (last * last.sin()).sum()
    loss.backward()
    return out.detach(), last.detach(), {k: v.grad for k, v in leaves.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def assert_matches(ours, ref, out_tol: float = 1e-5, grad_tol: float = 1e-4) -> None:
    (y, last, grads), (y_ref, last_ref, grads_ref) = ours, ref
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    assert rel_err(y, y_ref) <= out_tol
    assert last.dtype == torch.float32 and rel_err(last, last_ref) <= out_tol
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        assert grads[name] is not None, name
        assert grads[name].shape == grads_ref[name].shape, name
        assert rel_err(grads[name], grads_ref[name]) <= grad_tol, name


OPTION_SETS = [set(s) for r in range(len(OPTIONAL) + 1) for s in itertools.combinations(OPTIONAL, r)]


@pytest.mark.parametrize("use", OPTION_SETS, ids=lambda s: "+".join(sorted(s)) or "plain")
@pytest.mark.parametrize("softplus", [False, True], ids=["raw_dt", "softplus"])
def test_matches_reference_all_options(use: set[str], softplus: bool) -> None:
    inputs = make_inputs()
    ref = run(selective_scan_ref, inputs, use, softplus)
    assert_matches(run(selective_scan, inputs, use, softplus), ref)


@pytest.mark.parametrize("chunk_size", [1, 2, 5, 13, 64])
@pytest.mark.parametrize("groups", [None, 1, 3], ids=["BNL", "G1", "G3"])
def test_chunk_sizes_and_grouped_bc(chunk_size: int, groups: int | None) -> None:
    inputs = make_inputs(groups=groups, seed=1)
    use = {"D", "z", "delta_bias"}
    ref = run(selective_scan_ref, inputs, use, True)
    assert_matches(run(selective_scan, inputs, use, True, chunk_size=chunk_size), ref)


@pytest.mark.parametrize("chunk_size", [1, 4, None])
def test_gradient_through_last_state(chunk_size: int | None) -> None:
    """mamba-ssm's kernel drops d(last_state); this implementation propagates it."""
    inputs = make_inputs(length=11, seed=2)
    use = {"D", "delta_bias"}
    ref = run(selective_scan_ref, inputs, use, True, loss_on_state=True)
    assert_matches(run(selective_scan, inputs, use, True, loss_on_state=True, chunk_size=chunk_size), ref)


def test_larger_case_against_reference() -> None:
    """A size closer to MA's (many channels, a state of 16, a longer sequence)."""
    inputs = make_inputs(batch=2, dim=64, length=96, d_state=16, seed=3)
    inputs["delta"] = inputs["delta"] - 2.0  # softplus brings it to MA's typical Δ range
    use = {"D", "z", "delta_bias"}
    assert_matches(run(selective_scan, inputs, use, True), run(selective_scan_ref, inputs, use, True))


def test_non_contiguous_inputs() -> None:
    """MA passes transposed views of (B, L, E) projections; layout must not matter."""
    base = make_inputs(seed=4)
    views = {
        k: v.transpose(-1, -2).contiguous().transpose(-1, -2) if v.dim() == 3 else v for k, v in base.items()
    }
    assert not views["u"].is_contiguous()
    use = {"D", "z"}
    assert_matches(run(selective_scan, views, use, True), run(selective_scan_ref, base, use, True))


def test_autocast_accumulates_in_fp32() -> None:
    """Under bf16 autocast the state stays fp32: only the output rounding to bf16 differs."""
    inputs = make_inputs(dim=8, length=16, seed=5)
    inputs["u"] = inputs["u"].bfloat16()
    u = inputs["u"].clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = selective_scan(u, inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"])
    ref = selective_scan_ref(u.float(), inputs["delta"], inputs["A"], inputs["B"], inputs["C"], inputs["D"])
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) <= 2**-8  # one bf16 rounding
    out.float().sum().backward()
    assert u.grad is not None and u.grad.dtype == torch.bfloat16


def test_flop_counter_counts_nine_ldn_macs() -> None:
    b, d, L, n = 2, 6, 13, 4
    inputs = make_inputs(b, d, L, n)
    leaves = {k: v.requires_grad_() for k, v in inputs.items()}
    with FlopCounterMode(display=False) as fc:
        out = selective_scan(**leaves, delta_softplus=True)
    assert fc.get_total_flops() == 2 * 9 * b * L * d * n  # FLOPs = 2 x MACs, as for matmuls
    with FlopCounterMode(display=False) as fc:
        out.sum().backward()
    assert fc.get_total_flops() == 2 * 2 * 9 * b * L * d * n  # backward: twice the forward


def test_auto_backend_on_cpu_is_the_torch_scan() -> None:
    inputs = make_inputs(seed=6)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    assert torch.equal(selective_scan(*args, backend="auto"), selective_scan(*args, backend="torch"))


def test_mamba_ssm_backend_errors_clearly_without_kernel() -> None:
    inputs = make_inputs()
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        selective_scan(*args, backend="mamba_ssm")
    with pytest.raises(ValueError, match="'fast'"):
        selective_scan(*args, backend="fast")


@pytest.mark.parametrize(
    ("name", "value", "pattern"),
    [
        ("u", torch.randn(2, 6), r"u must be \(B, D, L\), got shape \(2, 6\)"),
        ("delta", torch.rand(2, 6, 12), r"delta must have u's shape \(2, 6, 13\), got \(2, 6, 12\)"),
        ("A", torch.randn(5, 4), r"A must be \(D, N\) = \(6, N\), got shape \(5, 4\)"),
        ("B", torch.randn(2, 4, 12), r"B must be \(B, N, L\) = \(2, 4, 13\)"),
        ("C", torch.randn(6, 4), r"time-invariant C of shape \(6, 4\) is not supported"),
        ("B", torch.randn(2, 4, 4, 13), r"B has 4 groups, which does not divide D = 6"),
        ("D", torch.randn(5), r"D must be \(D,\) = \(6,\), got shape \(5,\)"),
        ("z", torch.randn(2, 6, 1), r"z must have u's shape"),
    ],
)
def test_bad_shapes_are_named(name: str, value: torch.Tensor, pattern: str) -> None:
    inputs = make_inputs()
    inputs[name] = value
    with pytest.raises(ValueError, match=pattern):
        selective_scan(**inputs)
