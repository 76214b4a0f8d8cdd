"""Loading pre-trained encoder weights from a local file, without executing code from it.

Formats (detected from the file's content, not its name):

- **TorchScript archive**, as OpenAI publishes ``ViT-B-16.pt``. ``torch.load(weights_only=True)``
  refuses such archives, and ``torch.jit.load`` restores the archive's TorchScript code and
  may run its ``__setstate__`` methods. We read the archive's ``data.pkl`` with a restricted
  unpickler instead: module objects become inert attribute holders, tensors are rebuilt from the
  zip's raw storages, and any global outside a short allow-list (``torch._utils._rebuild_tensor_v2``,
  ``collections.OrderedDict``, the ``torch.*Storage`` dtype markers) is refused. Nothing from
  the file is ever called.
- **A plain state dict** saved with ``torch.save`` (``torch.load(weights_only=True)``), possibly
  wrapped as ``{"state_dict": ...}`` or ``{"model": ...}`` and with DDP's ``module.`` prefix, as
  open_clip's training checkpoints are.
- **safetensors**.

Key layouts: OpenAI's (``visual.conv1.weight``, ...; also open_clip's, which is the same), the
visual tower alone (``conv1.weight``, ...), and timm's ViT layout (``patch_embed.proj.weight``,
``blocks.{i}.attn.qkv``, ...), converted to OpenAI names. Tensors are cast to fp32 (OpenAI stores
fp16). The CLIP positional grid is resized to the input grid with bilinear interpolation,
``align_corners=False`` and no antialiasing, as the authors' release does
(:func:`resize_pos_embed`); DINOv2's with timm's ``resample_abs_pos_embed`` (bicubic, antialiased),
as timm resamples pre-trained weights for a model made at another image size
(:func:`resample_pos_embed_bicubic`).
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from mambapro.errors import WeightsError

__all__ = [
    "load_clip_state_dict",
    "load_encoder_state_dict",
    "read_checkpoint",
    "read_torchscript_tensors",
    "resample_pos_embed_bicubic",
    "resize_pos_embed",
    "timm_to_openai_layout",
]

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


# --------------------------------------------------------------------------- file formats


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Every tensor of a checkpoint file by name, as stored (dtype unchanged)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    with path.open("rb") as f:
        head = f.read(16)
    if _looks_like_safetensors(head):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return read_torchscript_tensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{path}: not a state dict readable without executing code (torch.load with "
            f"weights_only=True refused it: {str(err).splitlines()[0]})"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise WeightsError(f"{path}: not a readable checkpoint ({err})") from err
    return _unwrap_state_dict(obj, path)


def _looks_like_safetensors(head: bytes) -> bool:
    # 8-byte little-endian header length, then the JSON header, which starts with '{'.
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    # Training checkpoints nest the weights ({"state_dict": ...}, {"model": ...}) next to
    # counters and optimiser state; take the nested mapping that holds tensors.
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, Tensor) for v in obj.values()):
            break
        nested = [obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), Mapping)]
        if not nested:
            break
        obj = nested[0]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    out = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not out:
        raise WeightsError(f"{path}: holds no tensors (keys: {', '.join(map(str, list(obj)[:8]))})")
    return out


class _ScriptObject:
    """Stand-in for a TorchScript class instance: only keeps its pickled attributes."""

    qualname = ""
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _StorageType:
    """Marker for a ``torch.*Storage`` global: only carries its dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _identity(value: Any, *_: Any) -> Any:
    return value


# TorchScript's typed-container helpers only wrap plain data; reading them as the data is exact.
_JIT_CONTAINERS = {
    name: _identity
    for name in (
        "build_intlist",
        "build_floatlist",
        "build_doublelist",
        "build_boollist",
        "build_tensorlist",
        "restore_type_tag",
    )
}


def _rebuild_tensor(
    storage: Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> Tensor:
    return storage.as_strided(size, stride, offset)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl`` into plain objects; refuses every other global."""

    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self._zf, self._prefix = zf, prefix
        self._storages: dict[str, Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            # An inert data holder per TorchScript class; pickle's NEWOBJ/BUILD fill its state.
            return type(name, (_ScriptObject,), {"qualname": f"{module}.{name}"})
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in _JIT_CONTAINERS:
            return _JIT_CONTAINERS[name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(
            f"it references '{module}.{name}', which a weights-only reader does not load"
        )

    def persistent_load(self, pid: Any) -> Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        if key not in self._storages:
            raw = self._zf.read(f"{self._prefix}/data/{key}")
            flat = torch.frombuffer(bytearray(raw), dtype=storage_type.dtype)
            if flat.numel() < numel:
                raise pickle.UnpicklingError(f"storage {key} is truncated")
            self._storages[key] = flat
        return self._storages[key]


def read_torchscript_tensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a TorchScript archive by dotted attribute name, read without running any of
    its code (see the module docstring). For parameters and buffers the names and values are those
    of ``torch.jit.load(path).state_dict()``; other tensor attributes are included too."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    with zipfile.ZipFile(path) as zf:
        data_pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not data_pkl:
            raise WeightsError(
                f"{path}: a zip archive without a top-level data.pkl is not a TorchScript archive"
            )
        prefix = data_pkl[0].split("/")[0]
        byteorder = f"{prefix}/byteorder"
        if byteorder in zf.namelist() and zf.read(byteorder).strip() != b"little":
            raise WeightsError(f"{path}: big-endian archives are not supported")
        try:
            root = _RestrictedUnpickler(zf.read(data_pkl[0]), zf, prefix).load()
        except (pickle.UnpicklingError, KeyError, EOFError) as err:
            raise WeightsError(f"{path}: cannot read the TorchScript archive: {err}") from err
    out: dict[str, Tensor] = {}
    _collect(root, "", out, set())
    if not out:
        raise WeightsError(f"{path}: the TorchScript archive holds no tensors")
    # A tensor that is a part of a storage (shared, or a slice) becomes an independent copy.
    return {k: v if _owns_storage(v) else v.clone() for k, v in out.items()}


def _owns_storage(t: Tensor) -> bool:
    return t.storage_offset() == 0 and t.is_contiguous() and t.untyped_storage().nbytes() == t.nbytes


def _collect(obj: Any, prefix: str, out: dict[str, Tensor], seen: set[int]) -> None:
    if isinstance(obj, Tensor):
        out[prefix.rstrip(".")] = obj
        return
    if not isinstance(obj, _ScriptObject) or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj.state, Mapping):
        for name, value in obj.state.items():
            _collect(value, f"{prefix}{name}.", out, seen)


# --------------------------------------------------------------------------- key layouts


def timm_to_openai_layout(sd: Mapping[str, Tensor], keep_head: bool) -> dict[str, Tensor]:
    """Rename a timm ViT state dict to OpenAI's visual layout.

    ``keep_head=True`` turns timm's bias-free ``head.weight`` ``(C, D)`` into ``proj`` ``(D, C)``
    (timm's OpenAI-CLIP models); ``keep_head=False`` drops the classifier (ImageNet models).
    LayerScale (``ls1.gamma``; ``gamma_1`` in timm's Eva) becomes ``ls_1.gamma``, the register
    tokens ``reg_token`` ``(1, R, D)`` become ``register_tokens`` ``(R, D)``.
    """
    out: dict[str, Tensor] = {}
    block_names = {
        "norm1": "ln_1",
        "attn.qkv.weight": "attn.in_proj_weight",
        "attn.qkv.bias": "attn.in_proj_bias",
        "attn.proj": "attn.out_proj",
        "ls1": "ls_1",
        "gamma_1": "ls_1.gamma",
        "norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "ls2": "ls_2",
        "gamma_2": "ls_2.gamma",
    }
    top_names = {
        "patch_embed.proj": "conv1",
        "norm_pre": "ln_pre",
        "norm": "ln_post",
    }
    for key, value in sd.items():
        if key == "cls_token":
            out["class_embedding"] = value.reshape(-1)
        elif key == "reg_token":
            out["register_tokens"] = value.reshape(-1, value.shape[-1])
        elif key == "pos_embed":
            out["positional_embedding"] = value.reshape(-1, value.shape[-1])
        elif key.startswith("head."):
            if keep_head and key == "head.weight":
                out["proj"] = value.t().contiguous()
            elif keep_head:
                raise WeightsError(f"'{key}': a projection head with a bias has no OpenAI equivalent")
        elif key.startswith("blocks."):
            _, idx, rest = key.split(".", 2)
            for src, dst in block_names.items():
                if rest == src or rest.startswith(src + "."):
                    out[f"transformer.resblocks.{idx}.{dst}{rest[len(src) :]}"] = value
                    break
            else:
                out[key] = value  # reported as unexpected by the loader, naming the key
        else:
            for src, dst in top_names.items():
                if key.startswith(src + "."):
                    out[dst + key[len(src) :]] = value
                    break
            else:
                out[key] = value
    return out


def strip_prefix(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}


def to_fp32(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def load_clip_state_dict(path: str | Path, grid: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """The CLIP image encoder's weights from ``path`` in OpenAI's visual layout, fp32.

    Accepts OpenAI's TorchScript archive, a plain or safetensors state dict with ``visual.*``
    keys (OpenAI, open_clip; ``module.`` prefixes are stripped), the visual tower alone, or timm's
    CLIP layout. ``grid`` (rows, cols) resizes the positional grid to that input grid.
    """
    path = Path(path)
    sd = strip_prefix(read_checkpoint(path), "module.")
    if any(k.startswith("visual.") for k in sd):
        sd = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    elif "patch_embed.proj.weight" in sd:
        sd = timm_to_openai_layout(sd, keep_head=True)
    elif "conv1.weight" not in sd:
        raise WeightsError(
            f"{path}: no CLIP image-encoder weights found (expected 'visual.conv1.weight', "
            f"'conv1.weight' or timm's 'patch_embed.proj.weight'; first keys: {', '.join(list(sd)[:5])})"
        )
    sd = to_fp32(sd)
    if grid is not None:
        sd["positional_embedding"] = resize_pos_embed(sd, grid, path)
    return sd


def _square_positions(
    sd: Mapping[str, Tensor], grid: tuple[int, int], path: str | Path
) -> tuple[Tensor, int]:
    """``sd['positional_embedding']`` ``(1 + N, D)`` and the side of its square grid of N
    positions, or 0 when it already has the input ``grid``'s rows*cols positions; a missing or
    malformed table is a :class:`WeightsError` naming ``path``."""
    key = "positional_embedding"
    if key not in sd:
        raise WeightsError(f"{path}: missing '{key}'")
    pos = sd[key]
    rows, cols = grid
    if pos.ndim != 2:
        raise WeightsError(f"{path}: '{key}' has shape {tuple(pos.shape)}, expected (1 + N, D)")
    if pos.shape[0] == 1 + rows * cols:
        return pos, 0
    n = pos.shape[0] - 1
    side = math.isqrt(n)
    if side * side != n:
        raise WeightsError(
            f"{path}: '{key}' holds {n} grid positions, which is neither a square grid nor the "
            f"input grid {rows}x{cols}"
        )
    return pos, side


def resize_pos_embed(
    sd: Mapping[str, Tensor], grid: tuple[int, int], path: str | Path = "<state dict>"
) -> Tensor:
    """``sd['positional_embedding']`` ``(1 + N, D)`` resized to ``(1 + rows*cols, D)``.

    The cls position is kept; the square ``sqrt(N) x sqrt(N)`` grid is resized with bilinear
    interpolation (``align_corners=False``, no antialias) as the authors' release does. A table that
    already has ``rows*cols`` grid positions is returned unchanged (it is taken to be of that grid).
    """
    pos, side = _square_positions(sd, grid, path)
    if not side:
        return pos
    rows, cols = grid
    g = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    g = F.interpolate(g.float(), size=(rows, cols), mode="bilinear", align_corners=False, antialias=False)
    g = g.permute(0, 2, 3, 1).reshape(rows * cols, -1).to(pos.dtype)
    return torch.cat([pos[:1], g], dim=0)


def resample_pos_embed_bicubic(
    sd: Mapping[str, Tensor], grid: tuple[int, int], path: str | Path = "<state dict>"
) -> Tensor:
    """``sd['positional_embedding']`` ``(1 + N, D)`` resampled to ``(1 + rows*cols, D)`` by timm's
    ``resample_abs_pos_embed`` with its defaults (bicubic, antialiased, the cls row kept): what timm
    does to DINOv2's pre-trained table when a model is made at another image size. A table that
    already has ``rows*cols`` grid positions is returned unchanged (taken to be of that grid)."""
    pos, side = _square_positions(sd, grid, path)
    if not side:
        return pos
    rows, cols = grid
    out = resample_abs_pos_embed(pos[None], new_size=[rows, cols], old_size=[side, side], num_prefix_tokens=1)
    return out[0]


def load_encoder_state_dict(module: nn.Module, sd: Mapping[str, Tensor], path: str | Path) -> None:
    """Load ``sd`` into ``module`` strictly; errors name ``path`` and the first offending key."""
    expected = module.state_dict()
    for key, value in expected.items():
        if key in sd and tuple(sd[key].shape) != tuple(value.shape):
            raise WeightsError(
                f"{path}: '{key}' has shape {tuple(sd[key].shape)} in the file but the encoder "
                f"expects {tuple(value.shape)} (first mismatching key)"
            )
    missing = [k for k in expected if k not in sd]
    if missing:
        raise WeightsError(f"{path}: '{missing[0]}' is missing ({len(missing)} encoder keys missing in all)")
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        raise WeightsError(
            f"{path}: '{unexpected[0]}' is not a key of this encoder "
            f"({len(unexpected)} unexpected keys in all)"
        )
    # A module built on the meta device (no memory, no random init) takes the tensors as they are.
    assign = any(p.is_meta for p in module.parameters())
    module.load_state_dict(sd, strict=True, assign=assign)
    if assign:
        # Buffers that are not saved (a rotary table) are still on the meta device: compute them.
        for sub in module.modules():
            init = getattr(sub, "init_non_persistent_buffers", None)
            if callable(init):
                init()
