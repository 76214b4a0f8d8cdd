"""Test-time precision of a model: ``fp32`` (as trained), ``bf16`` or ``int8``, for inference on
CPUs near their hardware limit (``extract``, ``search``, ``serve``, ``export``, ``test``
``--precision``).

* ``bf16``: the weights of the linear and convolution layers are cast to bf16 once, and the model
  runs under ``torch.autocast(dtype=torch.bfloat16)`` (:func:`autocast_dtype`): matrix products in
  bf16 (AMX or AVX-512-BF16 kernels through oneDNN), norms accumulating in fp32, the selective
  scan's state in fp32 (``ops/scan_torch.py`` casts its inputs up with autocast off). Casting the
  weights ahead of time matters: autocast alone re-casts every weight on every call, which took a
  third of a ViT-B forward at batch 1. Refused on a CPU without native bf16 (torch would emulate
  it, slower than fp32).
* ``int8``: the linear layers that hold the FLOPs (the encoder's attention and MLP projections,
  the adapters, the prompt projections, MA's input and output projections, a Transformer
  aggregator's projections) become :class:`Int8Linear`: weights int8 per output channel
  (symmetric), activations quantized to int8 per call with one scale per tensor (symmetric,
  dynamic: no calibration data), int32 accumulation, the output dequantized to fp32 with the
  bias added. Everything else stays fp32: norms, attention's softmax, the depth-wise convs, the
  selective scan and the SSM's own small projections (Δ, B, C feed the recurrence), the readout.

Why this int8 path. ``torch.ao.quantization.quantize_dynamic`` (fbgemm) is deprecated in this
torch (it warns it will be removed) and ran a ViT-B projection at half the speed of the oneDNN
kernel on an AMX CPU; torchao is its maintained successor but is built around ``torch.compile``
(its eager CPU path quantizes activations in several Python-level passes). The kernels used here
are core ATen operators on plain int8 tensors (no quantized tensor types, which are deprecated
too): ``onednn::qlinear_pointwise`` (the operator Inductor's x86 int8 lowering emits; AMX-int8 or
VNNI) where oneDNN is built in, else ``torch._int_mm``, which every CPU build has and
``torch.export`` records (the pt2 export uses it).

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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mambapro.aggregation.base import ModalityReadout
from mambapro.aggregation.ma import SelectiveSSM
from mambapro.errors import UserError
from mambapro.models.adapters import MlpAdapter
from mambapro.models.clip_vit import Attention, Mlp, QuickGELU
from mambapro.models.mambapro import BNNeckHead
from mambapro.options import PRECISIONS, check_precision, precision_support_error

__all__ = [
    "INT8_KERNELS",
    "PRECISIONS",
    "Int8Linear",
    "ProjectedAttention",
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
#: and C (the recurrence amplifies their errors), the readout and the heads are a few vectors.
_KEEP_FP32 = (SelectiveSSM, ModalityReadout, BNNeckHead, nn.MultiheadAttention)


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


def _quantize_per_tensor(x: Tensor, portable: bool = False) -> tuple[Tensor, Tensor]:
    """``x`` (M, K) float as int8 with one symmetric scale: ``(q, scale)``, ``x ≈ q · scale``.
    ``portable``: the largest magnitude by ``abs().max()`` (one more pass than ``aminmax``, which
    the ONNX exporter cannot convert)."""
    if portable:
        amax = x.abs().max()
    else:
        lo, hi = torch.aminmax(x)
        amax = torch.maximum(-lo, hi)
    # An all-zero input gets a tiny positive scale rather than 0 (whose inverse is inf, 0·inf NaN).
    scale = amax.clamp_min(1e-30) / 127.0
    # |x| / scale <= 127 by construction, so the conversion needs no clamp.
    return torch.mul(x, 1.0 / scale).round_().to(torch.int8), scale


class Int8Linear(nn.Module):
    """``y = act(x Wᵀ + b)`` with ``W`` int8 per output channel (symmetric) and ``x`` quantized
    to int8 at each call with one symmetric scale per tensor; int32 accumulation, fp32 output.

    Args:
        weight: the fp32 weight ``(out, in)``.
        bias: the fp32 bias ``(out,)`` or None.
        activation: ``None``, ``"silu"`` or ``"gelu"`` (exact), applied to the output.
        kernel: one of :data:`INT8_KERNELS`.

    Buffers ``weight_int8`` ``(out, in)``, ``weight_scale`` ``(out,)`` and ``bias`` hold the layer;
    the oneDNN kernel also keeps its own packed copy of the weight (not saved).
    """

    def __init__(
        self, weight: Tensor, bias: Tensor | None, activation: str | None = None, kernel: str = "auto"
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
            self._x_zero_point = torch.zeros((), dtype=torch.int64)
        else:
            self.register_buffer("_weight_t", self.weight_int8.t().contiguous(), persistent=False)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        activation: str | None = None,
        scale: float = 1.0,
        kernel: str = "auto",
    ) -> Int8Linear:
        """The int8 layer of ``linear`` with its weight and bias multiplied by ``scale`` (a factor
        folded in from a neighbouring activation)."""
        bias = None if linear.bias is None else linear.bias * scale
        return cls(linear.weight * scale, bias, activation, kernel)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()
        q, x_scale = _quantize_per_tensor(x2, portable=self.kernel == "int_mm")
        if self.kernel == "onednn":
            post_op, algorithm = {None: ("none", ""), "silu": ("swish", ""), "gelu": ("gelu", "none")}[
                self.activation
            ]
            y = torch.ops.onednn.qlinear_pointwise.tensor(
                q,
                x_scale,
                self._x_zero_point,
                self._packed,
                self.weight_scale,
                self._zero_points,
                self.bias,
                1.0,
                0,
                torch.float32,
                post_op,
                [],
                algorithm,
            )
        else:
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


def _fuse_mlps(root: nn.Module, kernel: str) -> None:
    """Linear -> activation -> Linear blocks (the encoder's MLPs, PFA/BNA adapters, the prompt
    projections) as two :class:`Int8Linear`, the activation inside the first."""
    for module in root.modules():
        if type(module) is Mlp:
            names = ("c_fc", "gelu", "c_proj")
        elif type(module) is MlpAdapter:
            names = ("fc1", "act", "fc2")
        else:
            continue
        first, act, second = (getattr(module, n) for n in names)
        fused = _fused_activation(act)
        if fused is None or type(first) is not nn.Linear or type(second) is not nn.Linear:
            continue
        activation, factor = fused
        setattr(module, names[0], Int8Linear.from_linear(first, activation, factor, kernel))
        setattr(module, names[1], nn.Identity())
        setattr(module, names[2], Int8Linear.from_linear(second, None, 1.0 / factor, kernel))


def _quantize_linears(module: nn.Module, kernel: str) -> None:
    for name, child in module.named_children():
        if isinstance(child, _KEEP_FP32):
            continue
        if type(child) is Attention:
            child = ProjectedAttention.convert(child)
        if type(child) is nn.Linear:
            setattr(module, name, Int8Linear.from_linear(child, kernel=kernel))
        else:
            _quantize_linears(child, kernel)


def _to_int8(model: nn.Module, kernel: str) -> None:
    # Fused MLPs first (outside the fp32 subtrees: none of them holds one), then every remaining
    # plain nn.Linear outside those subtrees.
    _fuse_mlps(model, kernel)
    _quantize_linears(model, kernel)


def _to_bf16(model: nn.Module) -> None:
    # The matrix-product weights only: norms, embeddings, prompts and the SSM's A and D stay fp32
    # (autocast runs norms in fp32 arithmetic; the scan casts its inputs up).
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            params = module._parameters.items()
        elif type(module) is Attention:
            params = ((n, p) for n, p in module._parameters.items() if n.startswith("in_proj"))
        else:
            continue
        for _, p in params:
            if p is not None and p.is_floating_point():
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
