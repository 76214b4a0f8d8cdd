"""The three modalities and the vocabulary of missing-modality settings (one place for both).

A sample is a pixel-aligned triplet in the fixed order :data:`MODALITIES` (RGB, near-infrared,
thermal-infrared). A missing-modality setting names the modalities that are absent at test time
by their letters: ``full`` (none missing), ``R``, ``N``, ``T``, ``RN``, ``RT``, ``NT``;
its table label is ``full`` or ``-R``, ``-RN``, ...

Any-to-any retrieval names a subset by the modalities *present* instead (``RGB``, ``NI+TI``,
``RGB+NI+TI``), and a query/gallery pair as ``QUERY:GALLERY`` (``TI:RGB+NI``: a thermal-only
query against an RGB+NIR gallery); :func:`parse_present` and :func:`present_label` convert.
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
    "parse_missing_request",
    "parse_pair",
    "parse_present",
    "present_label",
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


def present_label(setting: str) -> str:
    """The modalities a setting keeps, joined by ``+`` (``full`` -> ``RGB+NI+TI``, ``R`` -> ``NI+TI``)."""
    gone = missing_modalities(setting)
    return "+".join(m for m in MODALITIES if m not in gone)


def parse_present(text: str) -> str:
    """The missing-modality setting of a subset named by its present modalities (``NI+TI`` ->
    ``R``; any case and order); :class:`ConfigError` for an empty subset, an unknown name or a
    name given twice."""
    typed = [part.strip() for part in str(text).split("+")]
    names = [name.upper() for name in typed]
    if not any(names) or "" in names:
        raise ConfigError(
            f"modality subset {text!r} is empty or has an empty name; name the modalities present, "
            f"joined by '+' (e.g. RGB+NI), from {', '.join(MODALITIES)}"
        )
    unknown = [t for t, n in zip(typed, names) if n not in MODALITIES]
    if unknown:
        raise ConfigError(
            f"modality subset {text!r}: unknown modality {unknown[0]!r}; choose from {', '.join(MODALITIES)}"
        )
    # RGB+RGB would otherwise pass as RGB: a typo for another subset must not run silently.
    twice = [n for i, n in enumerate(names) if n in names[:i]]
    if twice:
        raise ConfigError(
            f"modality subset {text!r} names {twice[0]} twice; name each modality present once, "
            "joined by '+' (e.g. RGB+NI)"
        )
    gone = "".join(m[0] for m in MODALITIES if m not in names)  # R, N, T: the setting's letters
    return parse_missing(gone or "full")


def parse_pair(text: str) -> tuple[str, str]:
    """``QUERY:GALLERY`` subsets named by their present modalities -> the two missing settings
    (``TI:RGB+NI`` -> (``RN``, ``T``))."""
    sides = str(text).split(":")
    if len(sides) == 1:
        raise ConfigError(f"modality pair {text!r} must look like QUERY:GALLERY, e.g. TI:RGB+NI")
    if len(sides) > 2:
        raise ConfigError(
            f"modality pair {text!r} has {len(sides) - 1} ':'; give one QUERY:GALLERY pair, e.g. TI:RGB+NI"
        )
    settings = []
    for side, subset in zip(("query", "gallery"), sides):
        try:
            settings.append(parse_present(subset))
        except ConfigError as err:  # which side: ':TI' alone would say only "subset ''"
            raise ConfigError(f"modality pair {text!r}, the {side}: {err}") from None
    return settings[0], settings[1]


def parse_missing_request(text: str) -> str | tuple[str, str]:
    """``mambapro test --missing``: ``all`` (the table of seven settings), ``cross`` (the 7 x 7
    any-to-any matrix), ``QUERY:GALLERY`` (one pair, by the modalities present: a tuple of the
    two settings), or one setting for both sides, by the missing letters (``RN``) or by the
    modalities present (``TI``, ``NI+TI``)."""
    key = str(text).strip()
    if key.lower() in ("all", "cross"):
        return key.lower()
    if ":" in key:
        return parse_pair(key)
    if "+" in key or key.upper() in MODALITIES:  # one subset by its present modalities: both sides
        return parse_present(key)
    try:
        return parse_missing(key)
    except ConfigError:
        # parse_missing knows only the seven settings; --missing takes every form above too.
        raise ConfigError(
            f"unknown missing-modality setting {text!r}; choose one of: {', '.join(MISSING_SETTINGS)} "
            "(letters name the missing modalities: R = RGB, N = NI, T = TI; a leading '-' is allowed), "
            "all (the seven settings), cross (the 7 x 7 any-to-any matrix), a subset by the modalities "
            "present (e.g. NI+TI) or QUERY:GALLERY (e.g. TI:RGB+NI)"
        ) from None
