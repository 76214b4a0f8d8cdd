"""``mambapro export``: the test-time model as a file that runs without this package's code.

Two formats: ``onnx`` (``torch.onnx.export``'s dynamo exporter; run it with onnxruntime) and
``pt2`` (``torch.export``'s ExportedProgram; ``torch.export.load`` runs it with bare torch).
The file takes one image per modality of the model's set (``rgb``, ``ni``, ``ti`` for the
paper's models: each modality key in lower case), ``(B, 3, H, W)`` float32 after the test
transform (resize + normalise; a missing modality is an all-zero tensor, as in ``--missing``),
and, when the model has a camera embedding, ``camids`` ``(B,)`` int64 (0-based); it returns the
test feature ``(B, F)``. The batch dimension is dynamic. What a caller needs to prepare the
inputs (image size, mean/std, interpolation, the modality keys and the input names) is stored in
the file: ONNX metadata property ``mambapro``, the pt2 archive's extra file ``mambapro.json``.

The selective scan is written in standard operators for export (``--scan``; see
:mod:`mambapro.ops.scan_export`): the default, ``parallel``, was chosen by
``benchmarks/bench_export.py`` (docs/benchmarks.md). Before writing, the exported file is run on synthetic
inputs at two batch sizes and compared with the PyTorch model (its own scan backend); a file
whose features differ by more than ``tolerance`` relative to the largest feature value is not
written.

``precision`` (:mod:`mambapro.models.precision`) exports the model at bf16 or int8: bf16 as
pt2 only (the graph runs under autocast; onnxruntime's CPU provider has no bf16 matrix kernels),
int8 in both formats with the portable kernel (``torch._int_mm``, written as ONNX
``MatMulInteger``). There the check is the feature cosine against the fp32 PyTorch model on the
same synthetic triplets, refused below ``min_cosine``; the file records its precision and the
cosine (``precision``, ``feature_cosine_vs_fp32``).
"""

from __future__ import annotations

import inspect
import io
import json
import keyword
import logging
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mambapro import __version__
from mambapro.errors import UserError
from mambapro.extras import import_extra
from mambapro.files import atomic_write
from mambapro.modalities import ModalitySet
from mambapro.models.precision import apply_precision, autocast_dtype, check_precision_supported
from mambapro.ops.scan_export import EXPORT_FORMS
from mambapro.options import EXPORT_FORMATS, check_export_options
from mambapro.retrieval.identity import model_modalities
from mambapro.train.checkpoint import load_model

__all__ = [
    "EXPORT_FORMATS",
    "ExportError",
    "ExportedFile",
    "ExportMissingError",
    "TestTimeModel",
    "export_model",
    "input_names",
    "load_exported",
    "run_export",
]

DEFAULT_SCAN = "parallel"
TOLERANCE = 1e-4
MIN_COSINE = 0.99
METADATA_KEY = "mambapro"
PT2_EXTRA = "mambapro.json"
CHECK_BATCHES = (3, 1)  # not the tracing batch (2): a file that fixed its batch size fails here


def input_names(modalities: ModalitySet) -> tuple[str, ...]:
    """The image inputs of an exported file, one per modality in the set's order: the key in lower
    case (``rgb``, ``ni``, ``ti``), with a ``_`` appended where that is a Python keyword or
    ``camids``."""
    names = []
    for key in modalities:
        name = key.lower()
        names.append(f"{name}_" if keyword.iskeyword(name) or name in ("camids", "self") else name)
    return tuple(names)


class ExportError(UserError, RuntimeError):
    """The model could not be exported, or the exported file does not reproduce it."""


class ExportMissingError(UserError, ImportError):
    """The ONNX packages are not installed (they are the ``deploy`` extra)."""


def _onnx_modules() -> tuple[Any, Any]:
    # onnxscript: the dynamo exporter's dependency, imported by torch.onnx itself.
    onnx, onnxruntime, _ = import_extra(
        "onnx",
        "onnxruntime",
        "onnxscript",
        error=ExportMissingError,
        why="ONNX export needs onnx, onnxscript and onnxruntime",
    )
    return onnx, onnxruntime


class TestTimeModel(nn.Module):
    """The model as ``extract`` runs it, with positional tensor inputs for export.

    Args:
        model: a :class:`mambapro.models.MambaPro` in eval mode.
        camids: take a ``camids`` input (only meaningful with a camera embedding).

    forward(rgb, ni, ti[, camids]) for the paper's models, one input per modality of the model's
    set in general (named by :func:`input_names`: the exporters name the file's inputs after the
    signature): (B, 3, H, W) float tensors[, (B,) int64] -> (B, F).
    """

    __test__ = False  # not a pytest class

    def __init__(self, model: nn.Module, camids: bool) -> None:
        super().__init__()
        self.model = model
        self.takes_camids = camids
        # A bf16 model runs under autocast (its weights are bf16): recorded in the exported graph.
        self.amp = autocast_dtype(model)
        self.modalities = model_modalities(model)
        self.input_names = (*input_names(self.modalities), *(["camids"] if camids else []))
        # The set's input names as the signature of this instance's forward (inspect, and with it
        # torch.export and the ONNX exporter, read it), the body being the generic one below.
        param = inspect.Parameter
        params = [param(n, param.POSITIONAL_OR_KEYWORD) for n in ("self", *input_names(self.modalities))]
        params.append(param("camids", param.POSITIONAL_OR_KEYWORD, default=None))

        def forward(self: TestTimeModel, *inputs: Tensor | None) -> Tensor:
            return TestTimeModel.forward(self, *inputs)

        forward.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        self.forward = types.MethodType(forward, self)

    def forward(self, *inputs: Tensor | None) -> Tensor:
        n = len(self.modalities)
        if not n <= len(inputs) <= n + 1:
            raise TypeError(
                f"expected {n} images ({', '.join(input_names(self.modalities))}) and optionally "
                f"camids, got {len(inputs)} inputs"
            )
        batch: dict[str, Tensor | None] = dict(zip(self.modalities, inputs[:n]))
        if self.takes_camids:
            batch["camids"] = inputs[n] if len(inputs) > n else None
        if self.amp is None:
            return self.model(batch)
        with torch.autocast("cpu", dtype=self.amp):
            return self.model(batch).float()


def _uses_cameras(model: nn.Module) -> bool:
    return getattr(model.backbone, "camera_embedding", None) is not None


def _example(
    cfg: Any, batch: int, num_cameras: int, camids: bool, seed: int, modalities: ModalitySet
) -> tuple[Tensor, ...]:
    """Synthetic normalised images, one per modality (and camera ids): the inputs' shapes and
    value range."""
    gen = torch.Generator().manual_seed(seed)
    h, w = cfg.img_size()
    images = tuple(torch.randn(batch, 3, h, w, generator=gen) for _ in modalities)
    if not camids:
        return images
    return (*images, torch.randint(0, max(1, num_cameras), (batch,), generator=gen))


def _metadata(
    cfg: Any,
    ckpt: dict,
    checkpoint: Path,
    fmt: str,
    scan: str,
    wrapper: TestTimeModel,
    dim: int,
    precision: dict,
) -> dict:
    return {
        "format": "mambapro-export",
        "format_version": 1,
        "mambapro": __version__,
        "export_format": fmt,
        "checkpoint": str(checkpoint),
        "dataset": cfg.data.dataset,
        "inputs": list(wrapper.input_names),
        "modalities": list(wrapper.modalities.keys),
        "image_size": list(cfg.img_size()),
        "mean": cfg.data.mean,
        "std": cfg.data.std,
        "interpolation": cfg.data.test_interpolation,
        "missing_modality": "an all-zero tensor after normalisation",
        "num_cameras": int(ckpt["num_cameras"]),
        "feature_dim": dim,
        "feature": f"{cfg.test.feature} ({cfg.test.neck_feat} the BNNeck)",
        "scan": scan,
        **precision,
    }


@dataclass
class ExportedFile:
    """An exported model loaded back: ``run(inputs)`` maps numpy inputs to the (B, F) features."""

    path: Path
    fmt: str
    metadata: dict
    runner: Any

    def run(self, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        if self.fmt == "onnx":
            names = [i.name for i in self.runner.get_inputs()]
            return self.runner.run(None, dict(zip(names, inputs)))[0]
        with torch.no_grad():
            return self.runner(*(torch.from_numpy(x) for x in inputs)).numpy()


def _onnx_session(source: bytes | str, what: str) -> Any:
    _, ort = _onnx_modules()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # no per-node warnings on stderr
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise ExportError(f"{what}: onnxruntime cannot load it: {err}") from err


def load_exported(path: str | Path) -> ExportedFile:
    """Load a file of ``mambapro export`` (format from its content) with its metadata."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):  # a pt2 archive is a zip file
        extra = {PT2_EXTRA: ""}
        try:
            program = torch.export.load(path, extra_files=extra)
        except Exception as err:
            raise ExportError(f"{path}: not a loadable pt2 file: {err}") from err
        return ExportedFile(path, "pt2", json.loads(extra[PT2_EXTRA] or "{}"), program.module())
    onnx, _ = _onnx_modules()
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise ExportError(f"{path}: neither a pt2 nor an ONNX file: {err}") from err
    meta = {p.key: p.value for p in proto.metadata_props}
    return ExportedFile(
        path, "onnx", json.loads(meta.get(METADATA_KEY, "{}")), _onnx_session(str(path), str(path))
    )


def _export_program(wrapper: TestTimeModel, example: tuple[Tensor, ...]) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = {n: {0: batch} for n in wrapper.input_names}
    return torch.export.export(wrapper, example, dynamic_shapes=dynamic)


def _to_bytes_pt2(program: torch.export.ExportedProgram, metadata: dict) -> bytes:
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={PT2_EXTRA: json.dumps(metadata)})
    return buf.getvalue()


def _to_bytes_onnx(wrapper: TestTimeModel, example: tuple[Tensor, ...], metadata: dict) -> bytes:
    batch = torch.export.Dim("batch", min=1, max=4096)
    names = list(wrapper.input_names)
    (onnxscript,) = import_extra("onnxscript", error=ExportMissingError, why="ONNX export needs onnxscript")
    opset = onnxscript.opset18

    def int_mm(a: Any, b: Any) -> Any:  # the int8 layers' product: int8 x int8 -> int32
        return opset.MatMulInteger(a, b)

    # The exporter reports each step with print() and warns about its internals: neither is ours.
    with warnings.catch_warnings(), _quiet_loggers("torch.onnx", "onnxscript"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            example,
            input_names=names,
            output_names=["features"],
            dynamic_shapes={n: {0: batch} for n in names},
            dynamo=True,
            verbose=False,
            custom_translation_table={torch.ops.aten._int_mm.default: int_mm},
        )
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    if proto.ByteSize() >= 2**31:
        raise ExportError("the ONNX model is over 2 GB, beyond a single protobuf file")
    return proto.SerializeToString()


class _quiet_loggers:
    def __init__(self, *names: str) -> None:
        self.loggers = [logging.getLogger(n) for n in names]

    def __enter__(self) -> None:
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)


def _onnx_metadata(data: bytes, metadata: dict) -> bytes:
    """An ONNX file's bytes with its ``mambapro`` metadata property replaced by ``metadata``."""
    onnx, _ = _onnx_modules()
    proto = onnx.load_from_string(data)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            entry.value = json.dumps(metadata)
    return proto.SerializeToString()


def _runner(fmt: str, data: bytes) -> Any:
    if fmt == "onnx":
        return _onnx_session(data, "the exported ONNX model")
    return torch.export.load(io.BytesIO(data)).module()


def export_model(
    checkpoint: str | Path,
    fmt: str,
    scan: str = DEFAULT_SCAN,
    camids: bool = True,
    tolerance: float = TOLERANCE,
    overrides: list[str] | None = None,
    precision: str = "fp32",
    min_cosine: float = MIN_COSINE,
) -> tuple[bytes, dict, float]:
    """Export a checkpoint's test-time model at ``precision``; returns (file bytes, metadata,
    max relative difference to the fp32 PyTorch model).

    The bytes are checked (run and compared) before they are returned; raises :class:`ExportError`
    when, in fp32, the relative difference exceeds ``tolerance``, or, in bf16 or int8, the
    smallest feature cosine against the fp32 model is below ``min_cosine`` (recorded in the
    metadata as ``feature_cosine_vs_fp32``).
    """
    if precision == "bf16" and fmt == "onnx":
        raise ExportError(
            "--precision bf16 --format onnx: onnxruntime's CPU provider has no bf16 matrix kernels; "
            "export bf16 as pt2, or int8 as onnx"
        )
    check_precision_supported(precision)
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"--format {fmt!r} is not one of: {', '.join(EXPORT_FORMATS)}")
    if scan not in EXPORT_FORMS:
        raise ExportError(f"--scan {scan!r} is not one of: {', '.join(EXPORT_FORMS)}")
    if fmt == "onnx":
        if scan == "hop":
            raise ExportError(
                "--scan hop: the ONNX exporter cannot lower torch's scan operator with a dynamic "
                "batch; use parallel or unrolled"
            )
        _onnx_modules()
    checkpoint = Path(checkpoint)
    cpu = torch.device("cpu")
    reference, cfg, ckpt = load_model(checkpoint, overrides=overrides, device=cpu)
    model, _, _ = load_model(
        checkpoint, overrides=[*(overrides or []), f"model.scan_backend={scan}"], device=cpu
    )
    # The portable int8 kernel: torch.export records torch._int_mm, oneDNN's packed weights not.
    model = apply_precision(model, precision, kernel="int_mm")
    takes = camids and _uses_cameras(model)
    wrapper = TestTimeModel(model, takes).eval()
    ref_wrapper = TestTimeModel(reference, takes).eval()
    num_cameras = int(ckpt["num_cameras"])
    modalities = wrapper.modalities
    example = _example(cfg, 2, num_cameras, takes, 0, modalities)
    checks = [_example(cfg, b, num_cameras, takes, 1 + i, modalities) for i, b in enumerate(CHECK_BATCHES)]
    with torch.no_grad():
        dim = int(ref_wrapper(*example).shape[1])
        wants = [ref_wrapper(*inputs).numpy() for inputs in checks]
        if precision != "fp32":
            # The PyTorch model at this precision first: seconds, where the export takes minutes.
            eager = [wrapper(*inputs).numpy() for inputs in checks]
            _check_cosine(min(map(_min_cosine, eager, wants)), min_cosine, f"{precision} PyTorch")
    metadata = _metadata(cfg, ckpt, checkpoint, fmt, scan, wrapper, dim, {"precision": precision})
    program = None
    try:
        if fmt == "pt2":
            program = _export_program(wrapper, example)
            data = _to_bytes_pt2(program, metadata)
        else:
            data = _to_bytes_onnx(wrapper, example, metadata)
    except UserError:
        raise
    except Exception as err:
        raise ExportError(f"{checkpoint}: {fmt} export failed: {type(err).__name__}: {err}") from err
    runner = _runner(fmt, data)
    exported = ExportedFile(Path("<memory>"), fmt, metadata, runner)
    worst, cosine = 0.0, 1.0
    for b, inputs, want in zip(CHECK_BATCHES, checks, wants):
        got = exported.run(tuple(x.numpy() for x in inputs))
        if got.shape != want.shape:
            raise ExportError(
                f"the exported {fmt} model returns {got.shape} for batch {b}, expected {want.shape}"
            )
        rel = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
        worst = max(worst, rel)
        cosine = min(cosine, _min_cosine(got, want))
    if precision != "fp32":
        _check_cosine(cosine, min_cosine, f"exported {precision} {fmt}")
        # The file records what its check measured.
        metadata = {**metadata, "feature_cosine_vs_fp32": cosine, "min_cosine": min_cosine}
        data = _to_bytes_pt2(program, metadata) if program is not None else _onnx_metadata(data, metadata)
    elif not worst <= tolerance:
        raise ExportError(
            f"the exported {fmt} model differs from the PyTorch model by {worst:.2e} (relative), "
            f"above the tolerance {tolerance:.0e}; nothing written"
        )
    return data, metadata, worst


def _check_cosine(cosine: float, bound: float, what: str) -> None:
    if not cosine >= bound:
        raise ExportError(
            f"the {what} model's features have a cosine of {cosine:.4f} with the fp32 model's on "
            f"synthetic triplets, below --min-cosine {bound}; nothing written"
        )


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest row-wise cosine of two (B, F) feature arrays."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    dots = (a * b).sum(axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min(dots / np.maximum(norms, 1e-300)))


def run_export(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path,
    scan: str = DEFAULT_SCAN,
    camids: bool = True,
    tolerance: float = TOLERANCE,
    overrides: list[str] | None = None,
    quiet: bool = False,
    precision: str = "fp32",
    min_cosine: float = MIN_COSINE,
) -> Path:
    """Export, check and write ``out`` atomically (the ``mambapro export`` command)."""
    check_export_options(checkpoint, out, fmt, tolerance, precision, min_cosine)
    data, metadata, worst = export_model(
        checkpoint, fmt, scan, camids, tolerance, overrides, precision, min_cosine
    )
    out = Path(out)
    with atomic_write(out) as fh:
        fh.write(data)
    if not quiet:
        inputs = ", ".join(metadata["inputs"])
        h, w = metadata["image_size"]
        print(
            f"wrote {out} ({fmt}, {len(data) / 2**20:.1f} MiB): inputs {inputs} "
            f"(B, 3, {h}, {w}) normalised with mean {metadata['mean']} std {metadata['std']}"
            f"{', camids (B,) int64' if 'camids' in metadata['inputs'] else ''}; "
            f"output features (B, {metadata['feature_dim']})"
        )
        if precision == "fp32":
            print(
                f"checked against the PyTorch model at batch sizes {list(CHECK_BATCHES)}: "
                f"max relative difference {worst:.2e}"
            )
        else:
            print(
                f"{precision}: checked against the fp32 PyTorch model on {sum(CHECK_BATCHES)} synthetic "
                f"triplets: feature cosine >= {metadata['feature_cosine_vs_fp32']:.4f} (bound "
                f"{min_cosine}), max relative difference {worst:.2e}"
            )
    return out
