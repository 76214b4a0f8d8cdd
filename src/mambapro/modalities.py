"""Modality sets and the vocabulary of missing-modality settings (one place for both).

A dataset names its modalities (2 to 4) as a :class:`ModalitySet`: the keys a batch carries, in
the fixed order every module uses, each with a one-letter code and a display name. The paper's
benchmarks use :data:`RGB_NI_TI` (RGB, near-infrared, thermal-infrared); RGBN300 uses RGB and
NI; a dual-spectrum camera network RGB and TI.

A missing-modality setting names the modalities absent at test time by their letters: ``full``
(none missing) and every non-empty proper subset, smallest first, letters in the set's order
(for RGB/NI/TI: ``full``, ``R``, ``N``, ``T``, ``RN``, ``RT``, ``NT``; for two modalities
three settings, for four fifteen); its table label is ``full`` or ``-R``, ``-RN``, ...

Any-to-any retrieval names a subset by the modalities *present* instead (``RGB``, ``NI+TI``,
``RGB+NI+TI``), and a query/gallery pair as ``QUERY:GALLERY`` (``TI:RGB+NI``: a thermal-only
query against an RGB+NIR gallery); :meth:`ModalitySet.parse_present` and
:meth:`ModalitySet.present_label` convert.

The module-level functions and constants are those of :data:`RGB_NI_TI`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from mambapro.errors import ConfigError

__all__ = [
    "KNOWN_MODALITIES",
    "MAX_MODALITIES",
    "MIN_MODALITIES",
    "MISSING_SETTINGS",
    "MODALITIES",
    "NUM_MODALITIES",
    "RGB_NI_TI",
    "ModalitySet",
    "missing_label",
    "missing_modalities",
    "parse_missing",
    "parse_missing_request",
    "parse_pair",
    "parse_present",
    "present_label",
]

MIN_MODALITIES, MAX_MODALITIES = 2, 4

#: Letter and display name of the modality keys the field uses; other keys take their first letter.
KNOWN_MODALITIES: dict[str, tuple[str, str]] = {
    "RGB": ("R", "visible (RGB)"),
    "NI": ("N", "near-infrared"),
    "TI": ("T", "thermal-infrared"),
    "D": ("D", "depth"),
}

_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,15}$")


@dataclass(frozen=True)
class ModalitySet:
    """The modalities of a dataset, in batch order.

    Attributes:
        keys: batch keys (``RGB``, ``NI``, ``TI``): letters, digits and ``_``, a letter first.
        letters: one upper-case letter per modality, distinct: the missing-setting alphabet.
        names: display names (``near-infrared``).
    """

    keys: tuple[str, ...]
    letters: tuple[str, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.keys)
        if not MIN_MODALITIES <= n <= MAX_MODALITIES:
            raise ConfigError(
                f"a dataset has {MIN_MODALITIES} to {MAX_MODALITIES} modalities, "
                f"got {n}: {', '.join(self.keys)}"
            )
        if len(self.letters) != n or len(self.names) != n:
            raise ConfigError("modality keys, letters and names must have the same length")
        for key in self.keys:
            if not _KEY.match(key):
                raise ConfigError(
                    f"modality key {key!r} must be 1-16 letters, digits or '_', starting with a letter"
                )
        for what, values in (("key", [k.upper() for k in self.keys]), ("letter", list(self.letters))):
            twice = [v for i, v in enumerate(values) if v in values[:i]]
            if twice:
                raise ConfigError(f"modalities {', '.join(self.keys)}: two have the {what} {twice[0]!r}")
        bad = [c for c in self.letters if len(c) != 1 or not c.isalpha() or not c.isupper()]
        if bad:
            raise ConfigError(f"modality letter {bad[0]!r} must be one upper-case letter")

    @classmethod
    def of(
        cls, keys: Sequence[str], letters: Sequence[str] | None = None, names: Sequence[str] | None = None
    ) -> ModalitySet:
        """The set of ``keys``; letters and names default to :data:`KNOWN_MODALITIES`' (else the
        key's first letter, upper case, and the key itself)."""
        keys = tuple(str(k) for k in keys)
        known = [KNOWN_MODALITIES.get(k, (k[:1].upper(), k)) for k in keys]
        return cls(
            keys,
            tuple(letters) if letters is not None else tuple(k[0] for k in known),
            tuple(names) if names is not None else tuple(k[1] for k in known),
        )

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def __str__(self) -> str:
        return "+".join(self.keys)

    @cached_property
    def settings(self) -> tuple[str, ...]:
        """Missing-modality settings in table order: ``full``, then the absent letters of every
        non-empty proper subset, smallest first (2 modalities: 3 settings, 3: 7, 4: 15)."""
        subsets = ("".join(c) for k in range(1, len(self)) for c in itertools.combinations(self.letters, k))
        return ("full", *subsets)

    def _legend(self) -> str:
        return ", ".join(f"{c} = {k}" for c, k in zip(self.letters, self.keys))

    def parse_missing(self, text: str) -> str:
        """The canonical setting of ``text``: any case, letters in any order, an optional leading
        ``-`` (``-nt``, ``TN`` and ``NT`` are all ``NT``); :class:`ConfigError` (a ``ValueError``)
        naming the choices else."""
        key = str(text).strip()
        if key.lower() == "full":
            return "full"
        letters = key.removeprefix("-").upper()
        canon = "".join(c for c in self.letters if c in letters)
        if len(canon) != len(letters) or canon not in self.settings:
            raise ConfigError(
                f"unknown missing-modality setting {text!r}; choose one of: {', '.join(self.settings)} "
                f"(letters name the missing modalities: {self._legend()}; a leading '-' is allowed)"
            )
        return canon

    def missing(self, setting: str) -> tuple[str, ...]:
        """Modality keys removed by a setting (``full`` -> (), ``RN`` -> ("RGB", "NI"))."""
        canon = self.parse_missing(setting)
        return () if canon == "full" else tuple(k for c, k in zip(self.letters, self.keys) if c in canon)

    def missing_label(self, setting: str) -> str:
        """Table label of a setting: ``full`` or ``-R``, ``-RN``, ..."""
        canon = self.parse_missing(setting)
        return canon if canon == "full" else f"-{canon}"

    def present_label(self, setting: str) -> str:
        """The modalities a setting keeps, joined by ``+`` (``full`` -> ``RGB+NI+TI``, ``R`` -> ``NI+TI``)."""
        gone = self.missing(setting)
        return "+".join(m for m in self.keys if m not in gone)

    def parse_present(self, text: str) -> str:
        """The missing-modality setting of a subset named by its present modalities (``NI+TI`` ->
        ``R``; any case and order); :class:`ConfigError` for an empty subset, an unknown name or a
        name given twice."""
        typed = [part.strip() for part in str(text).split("+")]
        names = [name.upper() for name in typed]
        upper = {k.upper(): c for k, c in zip(self.keys, self.letters)}
        if not any(names) or "" in names:
            raise ConfigError(
                f"modality subset {text!r} is empty or has an empty name; name the modalities present, "
                f"joined by '+' (e.g. {'+'.join(self.keys[:2])}), from {', '.join(self.keys)}"
            )
        unknown = [t for t, n in zip(typed, names) if n not in upper]
        if unknown:
            raise ConfigError(
                f"modality subset {text!r}: unknown modality {unknown[0]!r}; "
                f"choose from {', '.join(self.keys)}"
            )
        # RGB+RGB would otherwise pass as RGB: a typo for another subset must not run silently.
        twice = [n for i, n in enumerate(names) if n in names[:i]]
        if twice:
            raise ConfigError(
                f"modality subset {text!r} names {twice[0]} twice; name each modality present once, "
                f"joined by '+' (e.g. {'+'.join(self.keys[:2])})"
            )
        gone = "".join(c for k, c in upper.items() if k not in names)
        return self.parse_missing(gone or "full")

    def _pair_example(self) -> str:
        return f"{self.keys[-1]}:{'+'.join(self.keys[:-1])}"

    def parse_pair(self, text: str) -> tuple[str, str]:
        """``QUERY:GALLERY`` subsets named by their present modalities -> the two missing settings
        (``TI:RGB+NI`` -> (``RN``, ``T``))."""
        sides = str(text).split(":")
        example = self._pair_example()
        if len(sides) == 1:
            raise ConfigError(f"modality pair {text!r} must look like QUERY:GALLERY, e.g. {example}")
        if len(sides) > 2:
            raise ConfigError(
                f"modality pair {text!r} has {len(sides) - 1} ':'; "
                f"give one QUERY:GALLERY pair, e.g. {example}"
            )
        settings = []
        for side, subset in zip(("query", "gallery"), sides):
            try:
                settings.append(self.parse_present(subset))
            except ConfigError as err:  # which side: ':TI' alone would say only "subset ''"
                raise ConfigError(f"modality pair {text!r}, the {side}: {err}") from None
        return settings[0], settings[1]

    def parse_setting(self, text: str) -> str:
        """One setting, by the missing letters (``RN``, ``-t``, ``full``) or by the modalities
        present (``TI``, ``NI+TI``): its canonical form; :class:`ConfigError` naming both forms."""
        key = str(text).strip()
        if "+" in key or key.upper() in {k.upper() for k in self.keys}:
            return self.parse_present(key)
        try:
            return self.parse_missing(key)
        except ConfigError:
            raise ConfigError(
                f"{self._unknown_setting(text)} or a subset by the {self._present_example()}"
            ) from None

    def _unknown_setting(self, text: str) -> str:
        return (
            f"unknown missing-modality setting {text!r}; choose one of: {', '.join(self.settings)} "
            f"(letters name the missing modalities: {self._legend()}; a leading '-' is allowed)"
        )

    def _present_example(self) -> str:
        return f"modalities present (e.g. {'+'.join(self.keys[1:])})"

    def parse_request(self, text: str) -> str | tuple[str, str]:
        """``mambapro test --missing``: ``all`` (the table of every setting), ``cross`` (the
        settings x settings any-to-any matrix), ``QUERY:GALLERY`` (one pair, by the modalities
        present: a tuple of the two settings), or one setting for both sides
        (:meth:`parse_setting`)."""
        key = str(text).strip()
        if key.lower() in ("all", "cross"):
            return key.lower()
        if ":" in key:
            return self.parse_pair(key)
        try:
            return self.parse_setting(key)
        except ConfigError as err:
            if "+" in key:
                raise  # names the subset's problem
            # --missing takes the table, the matrix and pairs too.
            n = len(self.settings)
            raise ConfigError(
                f"{self._unknown_setting(text)}, all (the {n} settings), cross (the {n} x {n} "
                f"any-to-any matrix), a subset by the {self._present_example()} "
                f"or QUERY:GALLERY (e.g. {self._pair_example()})"
            ) from err

    def to_dict(self) -> dict[str, list[str]]:
        """``{"keys": [...], "letters": [...], "names": [...]}`` (checkpoints, results.json)."""
        return {"keys": list(self.keys), "letters": list(self.letters), "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict[str, Sequence[str]]) -> ModalitySet:
        """The inverse of :meth:`to_dict`."""
        return cls(tuple(data["keys"]), tuple(data["letters"]), tuple(data["names"]))


#: The paper's modalities: RGB, near-infrared, thermal-infrared.
RGB_NI_TI = ModalitySet.of(("RGB", "NI", "TI"))

#: Modality keys of the paper's batches, in the order every module uses (r, n, t).
MODALITIES: tuple[str, ...] = RGB_NI_TI.keys
NUM_MODALITIES = len(MODALITIES)

#: The paper's seven missing-modality settings in table order.
MISSING_SETTINGS: tuple[str, ...] = RGB_NI_TI.settings


def parse_missing(text: str, modalities: ModalitySet = RGB_NI_TI) -> str:
    """:meth:`ModalitySet.parse_missing` of ``modalities``."""
    return modalities.parse_missing(text)


def missing_modalities(setting: str, modalities: ModalitySet = RGB_NI_TI) -> tuple[str, ...]:
    """:meth:`ModalitySet.missing` of ``modalities``."""
    return modalities.missing(setting)


def missing_label(setting: str, modalities: ModalitySet = RGB_NI_TI) -> str:
    """:meth:`ModalitySet.missing_label` of ``modalities``."""
    return modalities.missing_label(setting)


def present_label(setting: str, modalities: ModalitySet = RGB_NI_TI) -> str:
    """:meth:`ModalitySet.present_label` of ``modalities``."""
    return modalities.present_label(setting)


def parse_present(text: str, modalities: ModalitySet = RGB_NI_TI) -> str:
    """:meth:`ModalitySet.parse_present` of ``modalities``."""
    return modalities.parse_present(text)


def parse_pair(text: str, modalities: ModalitySet = RGB_NI_TI) -> tuple[str, str]:
    """:meth:`ModalitySet.parse_pair` of ``modalities``."""
    return modalities.parse_pair(text)


def parse_missing_request(text: str, modalities: ModalitySet = RGB_NI_TI) -> str | tuple[str, str]:
    """:meth:`ModalitySet.parse_request` of ``modalities``."""
    return modalities.parse_request(text)
