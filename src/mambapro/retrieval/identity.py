"""What made a set of embeddings: the identity a features file and a gallery index carry.

Features of two checkpoints, of two test features (``ori``, ``fuse``), before and after the
BNNeck, or at two image sizes may share a width and still live in different spaces: ranking one
against the other gives a meaningless list. So every features file (``mambapro extract``) and
every gallery index records an identity:

* ``weights``: a fingerprint (SHA-256, first 16 hex digits) of the model's state dict, names,
  dtypes, shapes and bytes, so two files of the same checkpoint agree wherever they were made;
* ``feature``: the test feature (``ori`` or ``fuse``, ``test.feature`` resolved);
* ``neck_feat``: before or after the BNNeck (``test.neck_feat``);
* ``img_size``: the (H, W) the images were resized to;
* ``modality_set``: the modalities of the model (``RGB+NI+TI``, ``RGB+TI``, ...); identities
  written before it was recorded are of ``RGB+NI+TI`` models;
* ``modalities``: the modalities present in the images (the whole set unless some were zeroed);
* ``precision``: the test-time precision of the model (``fp32``, ``bf16``, ``int8``:
  :mod:`mambapro.models.precision`); identities written before it was recorded are fp32;
* ``checkpoint``: the file it came from (shown in messages, never compared).

``index add``, ``search`` and ``serve`` compare the identities with :func:`check_same_model` and
refuse a mismatch in one line naming both sides (a gallery of one modality set and a model of
another are refused as such; so are embeddings of two precisions, unless the caller allows it:
``--allow-precision-mismatch``). Files written before identities existed carry
none: they load with one warning and are not checked.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mambapro.errors import UserError
from mambapro.modalities import RGB_NI_TI, ModalitySet

__all__ = [
    "MODEL_KEYS",
    "PRECISION_REMEDY",
    "EmbeddingMismatchError",
    "PrecisionMismatchError",
    "check_same_model",
    "model_identity",
    "model_modalities",
    "stored_identity",
    "weights_fingerprint",
]

#: The fields that make two sets of embeddings comparable (``modalities`` may differ between a
#: query and a gallery: that is any-to-any retrieval).
MODEL_KEYS = ("modality_set", "weights", "feature", "neck_feat", "img_size", "precision")
#: The end of the line refusing a gallery made at another precision than the queries (search,
#: serve); ``{a}``: the gallery's precision, ``{b}``: the queries'.
PRECISION_REMEDY = (
    "give --precision {a}, extract the gallery again with --precision {b}, or pass --allow-precision-mismatch"
)
_LABELS = {
    "modality_set": "modality set",
    "weights": "weights",
    "feature": "test.feature",
    "neck_feat": "test.neck_feat",
    "img_size": "image size",
    "modalities": "modalities",
    "precision": "precision",
}


class EmbeddingMismatchError(UserError, ValueError):
    """Two sets of embeddings were made by different models or settings."""


class PrecisionMismatchError(EmbeddingMismatchError):
    """Two sets of embeddings of the same model were made at different test-time precisions."""


def weights_fingerprint(state: Mapping[str, Tensor]) -> str:
    """SHA-256 (first 16 hex digits) of a state dict: every entry's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def model_modalities(model: nn.Module) -> ModalitySet:
    """The modalities ``model`` takes, in batch order (``model.modalities``; a model that does not
    say takes the paper's RGB, NI and TI)."""
    modalities = getattr(model, "modalities", None)
    return modalities if isinstance(modalities, ModalitySet) else RGB_NI_TI


def model_identity(
    model: nn.Module,
    img_size: tuple[int, int],
    checkpoint: str | Path,
    missing: str = "full",
    precision: str = "fp32",
) -> dict[str, Any]:
    """The identity of the embeddings ``model`` (a :class:`~mambapro.models.MambaPro` in eval
    mode, fp32: before :func:`~mambapro.models.precision.apply_precision`, so that the weights
    fingerprint is the checkpoint's at any precision) makes from images of ``img_size`` with the
    ``missing`` modalities (a setting of the model's modality set) zeroed, once converted to
    ``precision``."""
    converted = getattr(model, "precision", "fp32")
    if converted != "fp32":
        raise ValueError(
            f"model_identity needs the fp32 model (this one is converted to {converted}): take the "
            "identity before apply_precision and pass precision="
        )
    modalities = model_modalities(model)
    return {
        "weights": weights_fingerprint(model.state_dict()),
        "feature": model.test_feature,
        "neck_feat": model.neck_feat,
        "img_size": [int(img_size[0]), int(img_size[1])],
        "modality_set": str(modalities),
        "modalities": modalities.present_label(missing),
        "precision": precision,
        "checkpoint": str(checkpoint),
    }


def _value(identity: Mapping[str, Any], key: str) -> str:
    v = identity.get(key)
    if key == "modality_set" and v is None:  # recorded since models of other sets exist
        return str(RGB_NI_TI)
    if key == "precision" and v is None:  # recorded since reduced precisions exist
        return "fp32"
    if key == "img_size" and isinstance(v, (list, tuple)) and len(v) == 2:
        return f"{v[0]}x{v[1]}"
    return str(v)


def check_same_model(
    a: Mapping[str, Any] | None,
    a_name: str,
    b: Mapping[str, Any] | None,
    b_name: str,
    keys: tuple[str, ...] = MODEL_KEYS,
    allow_precision_mismatch: bool = False,
    precision_remedy: str = "extract both with the same --precision",
) -> None:
    """Raise :class:`EmbeddingMismatchError` when ``a`` and ``b`` differ in one of ``keys``,
    naming each side and the differing values; nothing to check when either is None.

    Embeddings of the same model at two precisions raise :class:`PrecisionMismatchError` (its
    line ends with ``precision_remedy``, where ``{a}`` and ``{b}`` stand for each side's
    precision) unless ``allow_precision_mismatch``."""
    if a is None or b is None:
        return
    if allow_precision_mismatch:
        keys = tuple(k for k in keys if k != "precision")
    diff = [k for k in keys if _value(a, k) != _value(b, k)]
    if not diff:
        return
    made = f"made from {a.get('checkpoint', '?')} vs {b.get('checkpoint', '?')}"
    if "modality_set" in diff:
        raise EmbeddingMismatchError(
            f"{a_name} and {b_name} hold embeddings of models of different modalities "
            f"({_value(a, 'modality_set')} vs {_value(b, 'modality_set')}; {made}): a gallery is "
            "searched only with a model of its modalities; extract both with the same checkpoint"
        )
    if diff == ["precision"]:
        raise PrecisionMismatchError(
            f"{a_name} holds embeddings made at {_value(a, 'precision')} and {b_name} at "
            f"{_value(b, 'precision')} (--precision): the rounding error shifts every distance; "
            f"{precision_remedy.format(a=_value(a, 'precision'), b=_value(b, 'precision'))}"
        )
    shown = "; ".join(f"{_LABELS.get(k, k)} {_value(a, k)} vs {_value(b, k)}" for k in diff)
    hint = (
        "extract both with the same checkpoint"
        if "weights" in diff
        else "extract both with the same test.* settings"
    )
    raise EmbeddingMismatchError(
        f"{a_name} and {b_name} hold embeddings of different models ({shown}; {made}): their "
        f"distances mean nothing; {hint}"
    )


def stored_identity(
    identity: Any, path: str | Path, what: str, remedy: str, error: type[UserError]
) -> dict | None:
    """The identity read from a file's record: a mapping, or None (one warning: a file written
    before identities were recorded); anything else raises ``error`` naming the file.

    ``what`` names the file's kind ("features file"), ``remedy`` how to get a checked one.
    """
    if identity is None:
        warnings.warn(
            f"{path} was written by an older mambapro and does not record the model that made it: "
            f"it cannot be checked against the checkpoint; {remedy}",
            stacklevel=3,
        )
        return None
    if not isinstance(identity, dict):
        raise error(f"{path}: damaged {what} (its model identity is not a mapping)")
    return identity
