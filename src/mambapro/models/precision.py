"""Test-time precision of a model: ``fp32`` (as trained), ``bf16`` or ``int8``, for inference on
CPUs near their hardware limit (``extract``, ``search``, ``serve``, ``export``, ``test``
``--precision``).

* ``bf16``: the weights of the linear and convolution layers are cast to bf16 once, and the model
  runs under ``torch.autocast(dtype=torch.bfloat16)`` (:func:`autocast_dtype`): matrix products in
  bf16 (AMX or AVX-512-BF16 kernels through oneDNN), norms accumulating in fp32; the selective
  SSM (its projections and the scan, whose state ``ops/scan_torch.py`` keeps in fp32 anyway) and
  the readout run in fp32. Casting the weights ahead of time matters: autocast alone re-casts
  every weight on every call, which took a third of a ViT-B forward at batch 1. Refused on a
  CPU without native bf16 (torch would emulate it, slower than fp32).
* ``int8``: the linear layers that hold the FLOPs (the encoder's attention and MLP projections,
  the adapters, MA's input and output projections, a Transformer aggregator's projections)
  become :class:`Int8Linear`: weights int8 per output channel (symmetric), activations quantized
  to int8 per call with one scale per tensor (symmetric, dynamic: no calibration data), int32
  accumulation, the output dequantized to fp32 with the bias added. Everything else stays fp32:
  norms, attention's softmax, the depth-wise convs, the selective scan and the SSM's own small
  projections (Δ, B, C feed the recurrence), the prompt projections (a few rows each: int8 was
  slower there), the readout and the heads.

Why this int8 path. ``torch.ao.quantization.quantize_dynamic`` (fbgemm) is deprecated in this
torch (it warns it will be removed) and ran a ViT-B projection at half the speed of the oneDNN
kernel on an AMX CPU; its maintained successor, torchao, is another package, built around
``torch.compile``. The kernels used here are core ATen operators on plain int8 tensors (no
quantized tensor types, which are deprecated too): ``onednn::qlinear_pointwise`` (the operator
Inductor's x86 int8 lowering emits; AMX-INT8 or VNNI) where oneDNN is built in, else
``torch._int_mm``, which every CPU build has and ``torch.export`` records (the pt2 and ONNX
exports use it). A converted model's int8 layers share one scratch :class:`Workspace` per
thread, so one model may serve several threads.

The activation after an MLP's first projection is fused into the kernel: QuickGELU
``x·σ(1.702x)`` is ``silu(1.702x) / 1.702``, so the factor 1.702 is folded into the first
projection's weights and bias, 1/1.702 into the second's, and oneDNN's ``swish`` post-op applies
the SiLU while the tile is in cache; exact GELU maps to its ``gelu`` post-op.

OpenAI's attention keeps its input projection as the Parameter ``in_proj_weight`` used through
``F.linear`` (so CLIP checkpoints load unchanged); :class:`ProjectedAttention` computes the same
attention with that projection as a module, which the conversion can then quantize, without a
change to ``clip_vit.py``. ``tests/test_precision.py`` checks that it computes what the original
computes in fp32.

The conversion works in place, after :func:`~mambapro.retrieval.identity.model_identity` has
fingerprinted the fp32 weights (a converted model refuses to be fingerprinted, so an identity
always names the checkpoint's weights and records the precision beside them).
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambapro.aggregation.base import ModalityReadout
from mambapro.aggregation.ma import SelectiveSSM
from mambapro.errors import UserError
from mambapro.models.adapters import MlpAdapter
from mambapro.models.clip_vit import Attention, Mlp, QuickGELU
from mambapro.models.mambapro import BNNeckHead
from mambapro.models.prompts import PromptLayer
from mambapro.options import PRECISIONS, check_precision, precision_support_error

__all__ = [
    "INT8_KERNELS",
    "PRECISIONS",
    "Int8Linear",
    "ProjectedAttention",
    "Workspace",
    "apply_precision",
    "autocast_dtype",
    "check_precision_supported",
    "int8_kernel",
    "model_precision",
]

#: How :class:`Int8Linear` multiplies: ``onednn`` (``onednn::qlinear_pointwise``, fused
#: dequantization, bias and activation) or ``int_mm`` (``torch._int_mm``, then the scales, bias and
#: activation as separate operators; portable and exportable). ``auto``: onednn where available.
INT8_KERNELS = ("auto", "onednn", "int_mm")

#: QuickGELU's factor: ``x·σ(1.702x) = silu(1.702x) / 1.702``.
_QUICK_GELU = 1.702
#: Modules whose linear layers stay fp32 in int8: the SSM's projections produce the scan's Δ, B
#: and C (the recurrence amplifies their errors); the readout and the heads see one vector per
#: sample, the prompt projections a few prompt tokens: at so few rows the per-call quantization
#: costs more than the product saves (SRP's projections took twice their fp32 time in int8 at
#: ViT-B's 4 prompt tokens).
_KEEP_FP32 = (SelectiveSSM, ModalityReadout, BNNeckHead, PromptLayer, nn.MultiheadAttention)


def check_precision_supported(precision: str, device: torch.device | str = "cpu") -> str:
    """``precision`` if this machine runs it natively on ``device``; else a one-line
    :class:`UserError`: an unknown name, bf16 on a CPU without avx512_bf16 / amx_bf16 (or on a GPU
    without bf16), int8 on another device than the CPU."""
    precision = check_precision(precision)
    device = torch.device(device)
    if device.type == "cpu":
        problem = precision_support_error(precision)
        if problem is not None:
            raise UserError(problem)
    elif precision == "int8":
        raise UserError(
            f"--precision int8 runs on the CPU (oneDNN int8 kernels); this run's device is {device}: "
            "add train.device=cpu"
        )
    elif precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--precision bf16: the GPU {torch.cuda.get_device_name(device)} has no bf16 support")
    return precision


def int8_kernel(kernel: str = "auto") -> str:
    """The kernel ``kernel`` names: ``auto`` is ``onednn`` where torch has oneDNN's int8 linear
    operator (x86 builds), else ``int_mm``."""
    if kernel not in INT8_KERNELS:
        raise ValueError(f"int8 kernel {kernel!r} is not one of: {', '.join(INT8_KERNELS)}")
    if kernel != "auto":
        return kernel
    has_onednn = torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")
    return "onednn" if has_onednn else "int_mm"


def _quantize_traceable(x: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` (M, K) float as int8 with one symmetric scale: ``(q, scale)``, ``x ≈ q · scale``, in
    operators ``torch.export`` and the ONNX exporter record (``abs().max()``: the exporter cannot
    convert ``aminmax``)."""
    # An all-zero input gets a tiny positive scale rather than 0 (whose inverse is inf, 0·inf NaN).
    scale = x.abs().max().clamp_min(1e-30) / 127.0
    # |x| / scale <= 127 by construction, so the conversion needs no clamp.
    return torch.mul(x, 1.0 / scale).round_().to(torch.int8), scale


class Workspace(threading.local):
    """Scratch buffers for quantizing activations, shared by the :class:`Int8Linear` layers of one
    model (one per thread): allocating them per call cost a third of the quantization at batch
    32, the fresh pages of large tensors being faulted in each time."""

    def __init__(self) -> None:
        self.floats = torch.empty(0)
        self.ints = torch.empty(0, dtype=torch.int8)

    def buffers(self, shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
        n = shape[0] * shape[1]
        if self.floats.numel() < n:
            self.floats, self.ints = torch.empty(n), torch.empty(n, dtype=torch.int8)
        return self.floats[:n].view(shape), self.ints[:n].view(shape)


def _quantize_eager(x: Tensor, workspace: Workspace) -> tuple[Tensor, float]:
    """:func:`_quantize_traceable` in fewer passes for eager runs: one ``aminmax``, the scale as a
    Python number, the quantized values in ``workspace`` (valid until the next call there)."""
    lo, hi = torch.aminmax(x)
    scale = max(-float(lo), float(hi), 1e-30) / 127.0
    scaled, q = workspace.buffers(tuple(x.shape))
    torch.mul(x, 1.0 / scale, out=scaled).round_()
    return q.copy_(scaled), scale


class Int8Linear(nn.Module):
    """``y = act(x Wᵀ + b)`` with ``W`` int8 per output channel (symmetric) and ``x`` quantized
    to int8 at each call with one symmetric scale per tensor; int32 accumulation, fp32 output.

    Args:
        weight: the fp32 weight ``(out, in)``.
        bias: the fp32 bias ``(out,)`` or None.
        activation: ``None``, ``"silu"`` or ``"gelu"`` (exact), applied to the output.
        kernel: one of :data:`INT8_KERNELS`.
        workspace: the oneDNN kernel's scratch buffers, shared by a model's layers (default: its
            own).

    Buffers ``weight_int8`` ``(out, in)``, ``weight_scale`` ``(out,)`` and ``bias`` hold the layer;
    the oneDNN kernel also keeps its own packed copy of the weight (not saved).
    """

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        activation: str | None = None,
        kernel: str = "auto",
        workspace: Workspace | None = None,
    ) -> None:
        super().__init__()
        if activation not in (None, "silu", "gelu"):
            raise ValueError(f"Int8Linear activation {activation!r}: None, 'silu' or 'gelu'")
        weight = weight.detach().float()
        self.out_features, self.in_features = weight.shape
        self.activation = activation
        self.kernel = int8_kernel(kernel)
        scale = weight.abs().amax(dim=1).clamp_min(1e-30) / 127.0
        self.register_buffer("weight_int8", torch.round(weight / scale[:, None]).to(torch.int8))
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        if self.kernel == "onednn":
            self._packed = torch.ops.onednn.qlinear_prepack(self.weight_int8, None)
            self._zero_points = torch.zeros(self.out_features, dtype=torch.int64)
            self._workspace = workspace or Workspace()
            self._post_op = {None: ("none", ""), "silu": ("swish", ""), "gelu": ("gelu", "none")}[activation]
        else:
            self.register_buffer("_weight_t", self.weight_int8.t().contiguous(), persistent=False)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        activation: str | None = None,
        scale: float = 1.0,
        kernel: str = "auto",
        workspace: Workspace | None = None,
    ) -> Int8Linear:
        """The int8 layer of ``linear`` with its weight and bias multiplied by ``scale`` (a factor
        folded in from a neighbouring activation)."""
        bias = None if linear.bias is None else linear.bias * scale
        return cls(linear.weight * scale, bias, activation, kernel, workspace)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()
        if self.kernel == "onednn":
            q, x_scale = _quantize_eager(x2, self._workspace)
            y = torch.ops.onednn.qlinear_pointwise(
                q,
                x_scale,
                0,
                self._packed,
                self.weight_scale,
                self._zero_points,
                self.bias,
                1.0,
                0,
                torch.float32,
                *self._post_op[:1],
                [],
                self._post_op[1],
            )
        else:
            q, x_scale = _quantize_traceable(x2)
            acc = torch._int_mm(q, self._weight_t).float()
            scale = x_scale * self.weight_scale
            y = acc.mul_(scale) if self.bias is None else torch.addcmul(self.bias, acc, scale)
            if self.activation == "silu":
                y = F.silu(y, inplace=True)
            elif self.activation == "gelu":
                y = F.gelu(y)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        act = f", activation={self.activation}" if self.activation else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}{act}, kernel={self.kernel}"
        )


class ProjectedAttention(Attention):
    """:class:`~mambapro.models.clip_vit.Attention` with its input projection as the module
    ``in_proj`` (built from ``in_proj_weight`` and the bias the original applies), so that a
    quantized linear layer can replace it. Made from an ``Attention`` in place by :meth:`convert`;
    computes what it computes."""

    in_proj: nn.Module

    @classmethod
    def convert(cls, attn: Attention) -> ProjectedAttention:
        """``attn`` itself, its class changed and its ``in_proj_weight``/``in_proj_bias`` moved into
        the ``nn.Linear`` ``in_proj`` (the key third of the bias zeroed where the original masks
        it)."""
        if type(attn) is not Attention:
            raise TypeError(f"ProjectedAttention converts clip_vit.Attention, not {type(attn).__name__}")
        weight = attn.in_proj_weight.detach()
        bias = attn._bias()
        proj = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            proj.weight.copy_(weight)
            if bias is not None:
                proj.bias.copy_(bias.detach())
        del attn.in_proj_weight
        if "in_proj_bias" in attn._parameters:
            del attn.in_proj_bias
        attn.in_proj_bias = None
        attn.__class__ = cls
        attn.in_proj = proj.to(weight.device)
        return attn  # type: ignore[return-value]

    def _bias(self) -> Tensor | None:
        return None  # applied by in_proj

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, L, D)`` -> ``(B, L, D)``, as ``Attention.forward`` with ``in_proj``."""
        b, n, d = x.shape
        qkv = self.in_proj(x)
        q, k, v = qkv.view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.rope is not None:
            q, k = self._rotate(q), self._rotate(k)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, D/heads)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


def model_precision(model: nn.Module) -> str:
    """The precision :func:`apply_precision` converted ``model`` to (``fp32`` when never)."""
    return str(getattr(model, "precision", "fp32"))


def autocast_dtype(model: nn.Module, default: torch.dtype | None = None) -> torch.dtype | None:
    """The autocast dtype ``model`` runs under: bf16 for a bf16 model (its weights are bf16), none
    for an int8 one (its other operators are fp32), ``default`` (``test.amp``) for fp32."""
    precision = model_precision(model)
    if precision == "bf16":
        return torch.bfloat16
    return None if precision == "int8" else default


def _fused_activation(act: nn.Module) -> tuple[str, float] | None:
    """(kernel activation, factor folded into the first projection) for an MLP activation the
    int8 kernel applies itself, else None."""
    if type(act) is QuickGELU:
        return "silu", _QUICK_GELU
    if type(act) is nn.GELU and act.approximate == "none":
        return "gelu", 1.0
    return None


def _fuse_mlp(module: nn.Module, kernel: str, workspace: Workspace) -> None:
    """A Linear -> activation -> Linear block (the encoder's MLP, a PFA/BNA adapter) as two
    :class:`Int8Linear`, the activation inside the first; other modules are left alone."""
    names = {Mlp: ("c_fc", "gelu", "c_proj"), MlpAdapter: ("fc1", "act", "fc2")}.get(type(module))
    if names is None:
        return
    first, act, second = (getattr(module, n) for n in names)
    fused = _fused_activation(act)
    if fused is None or type(first) is not nn.Linear or type(second) is not nn.Linear:
        return
    activation, factor = fused
    setattr(module, names[0], Int8Linear.from_linear(first, activation, factor, kernel, workspace))
    setattr(module, names[1], nn.Identity())
    setattr(module, names[2], Int8Linear.from_linear(second, None, 1.0 / factor, kernel, workspace))


def _quantize_linears(module: nn.Module, kernel: str, workspace: Workspace) -> None:
    for name, child in module.named_children():
        if isinstance(child, _KEEP_FP32):
            continue
        if type(child) is Attention:
            child = ProjectedAttention.convert(child)
        if type(child) is nn.Linear:
            setattr(module, name, Int8Linear.from_linear(child, kernel=kernel, workspace=workspace))
        else:
            _quantize_linears(child, kernel, workspace)


def _to_int8(model: nn.Module, kernel: str) -> None:
    # The MLPs outside the fp32 subtrees fused first, then every remaining plain nn.Linear
    # outside them; one scratch workspace for all (a forward runs its layers one after another).
    workspace = Workspace()
    for module in _outside_fp32(model):
        _fuse_mlp(module, kernel, workspace)
    _quantize_linears(model, kernel, workspace)


def _outside_fp32(module: nn.Module) -> list[nn.Module]:
    """``module`` and its descendants that are not inside a :data:`_KEEP_FP32` module."""
    if isinstance(module, _KEEP_FP32):
        return []
    return [module, *(m for child in module.children() for m in _outside_fp32(child))]


def _run_in_fp32(module: nn.Module) -> None:
    """Make ``module`` compute in fp32 under autocast: its floating inputs cast up, autocast off
    inside (an instance attribute, so its class and its place in the model stay)."""
    forward = module.forward

    def fp32_forward(*args: object, **kwargs: object) -> object:
        args = tuple(a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)
        with torch.autocast(next(module.parameters()).device.type, enabled=False):
            return forward(*args, **kwargs)

    module.forward = fp32_forward


def _to_bf16(model: nn.Module) -> None:
    # The matrix-product weights only: norms, embeddings, prompts and the SSM's A and D stay fp32
    # (autocast runs norms in fp32 arithmetic; the scan casts its inputs up). The SSM and the
    # readout run in fp32 as in int8: the SSM's Δ, B and C drive a recurrence over hundreds of
    # steps, and the readout's output is the feature itself, whose per-identity differences are
    # small beside its common part (bf16's 8-bit mantissa cost the trained demo model a cosine
    # of 0.95 against fp32 on some test images; after the BNNeck's BatchNorm even more).
    keep = [m for m in model.modules() if isinstance(m, (SelectiveSSM, ModalityReadout))]
    kept = {id(p) for m in keep for p in m.parameters()}
    for module in keep:
        _run_in_fp32(module)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            params = module._parameters.items()
        elif type(module) is Attention:
            params = ((n, p) for n, p in module._parameters.items() if n.startswith("in_proj"))
        else:
            continue
        for _, p in params:
            if p is not None and p.is_floating_point() and id(p) not in kept:
                p.data = p.data.to(torch.bfloat16)


def apply_precision(model: nn.Module, precision: str, kernel: str = "auto") -> nn.Module:
    """Convert ``model`` (in eval mode, on its device) to ``precision`` in place and return it.

    ``fp32`` leaves it as it is; ``bf16`` casts the matrix-product weights (run it under
    :func:`autocast_dtype`); ``int8`` replaces the linear layers that hold the FLOPs by
    :class:`Int8Linear` (``kernel``: one of :data:`INT8_KERNELS`). A model already converted, or
    one this machine cannot run at ``precision`` (:func:`check_precision_supported`), raises.
    """
    device = next(model.parameters()).device
    check_precision_supported(precision, device)
    done = model_precision(model)
    if done != "fp32":
        if done == precision:
            return model
        raise ValueError(f"the model is already converted to {done}; load it again for {precision}")
    if precision == "fp32":
        return model
    model.eval()
    with torch.no_grad():
        if precision == "bf16":
            _to_bf16(model)
        else:
            _to_int8(model, int8_kernel(kernel))
    model.precision = precision
    return model
