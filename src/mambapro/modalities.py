"""The three modalities and the vocabulary of missing-modality settings (one place for both).

A sample is a pixel-aligned triplet in the fixed order :data:`MODALITIES` (RGB, near-infrared,
thermal-infrared). A missing-modality setting names the modalities that are absent at test time
by their letters (SPEC §2): ``full`` (none missing), ``R``, ``N``, ``T``, ``RN``, ``RT``, ``NT``;
its table label is ``full`` or ``-R``, ``-RN``, ...
"""

from __future__ import annotations

from mambapro.errors import ConfigError

__all__ = [
    "MISSING_SETTINGS",
    "MODALITIES",
    "NUM_MODALITIES",
    "missing_label",
    "missing_modalities",
    "parse_missing",
]

#: Modality keys of a batch, in the order every module uses (r, n, t).
MODALITIES: tuple[str, str, str] = ("RGB", "NI", "TI")
NUM_MODALITIES = len(MODALITIES)

#: Missing-modality settings in table order: the letters of the absent modalities.
MISSING_SETTINGS: tuple[str, ...] = ("full", "R", "N", "T", "RN", "RT", "NT")

_LETTER = {"R": "RGB", "N": "NI", "T": "TI"}


def parse_missing(text: str) -> str:
    """The canonical setting of ``text``: any case, letters in any order, an optional leading
    ``-`` (``-nt``, ``TN`` and ``NT`` are all ``NT``); :class:`ConfigError` (a ``ValueError``)
    naming the choices else."""
    key = str(text).strip()
    if key.lower() == "full":
        return "full"
    letters = key.removeprefix("-").upper()
    canon = "".join(c for c in "RNT" if c in letters)
    if len(canon) != len(letters) or canon not in MISSING_SETTINGS:
        raise ConfigError(
            f"unknown missing-modality setting {text!r}; choose one of: {', '.join(MISSING_SETTINGS)} "
            "(letters name the missing modalities: R = RGB, N = NI, T = TI; a leading '-' is allowed)"
        )
    return canon


def missing_modalities(setting: str) -> tuple[str, ...]:
    """Modality keys removed by a setting (``full`` -> (), ``RN`` -> ("RGB", "NI"))."""
    canon = parse_missing(setting)
    return () if canon == "full" else tuple(_LETTER[c] for c in canon)


def missing_label(setting: str) -> str:
    """Table label of a setting: ``full`` or ``-R``, ``-RN``, ..."""
    canon = parse_missing(setting)
    return canon if canon == "full" else f"-{canon}"
