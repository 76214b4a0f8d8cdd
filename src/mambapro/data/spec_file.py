"""Dataset spec files: a user's own dataset described in YAML, no code.

``data.dataset: path/to/mydata.yaml`` (any value ending in ``.yaml`` or ``.yml``) names a spec
file instead of a registered benchmark; :func:`load_spec_file` reads it into a
:class:`~mambapro.data.spec_type.DatasetSpec`. ``docs/own-dataset.md`` walks through one and
``examples/dual_spectrum.yaml`` is a complete file::

    name: DualSpectrum
    folder: dual_spectrum            # under data.root (or an absolute path); default: the name
    splits: {train: train, query: query, gallery: gallery}
    structure: modality_folders      # or side_by_side, id_folders
    modalities:                      # 2 to 4, in batch order (side_by_side: panels left to right)
      - {key: RGB, folder: visible}  # optional: letter, name; folder defaults to the key
      - {key: TI, folder: thermal}
    name_pattern: '^(?P<pid>\\d{4})_c(?P<cam>\\d)_'   # named groups pid, cam (and scene)
    camera_base: 1
    max_cameras: 6
    img_size: [256, 128]             # [H, W] of one modality
    protocol: same_camera            # or same_scene (needs a scene group)
    subject: person                  # or vehicle: what `mambapro synth` draws

Every problem is a one-line :class:`~mambapro.errors.ConfigError` naming the file and the field.
Loaded specs are cached per resolved path, size and modification time.

A checkpoint trained on a spec file stores the file's text (:func:`spec_file_record`), so that
the model still loads on a machine without that file: :func:`adopt_spec_record` makes the stored
copy answer for the path while no file exists there (a file that exists always wins).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..modalities import KNOWN_MODALITIES, MAX_MODALITIES, MIN_MODALITIES, ModalitySet
from .spec_type import STRUCTURES, DatasetSpec
from .synth_names import derive_synth_name, synth_file_name, synth_name_problem

__all__ = [
    "FIELDS",
    "MODALITY_FIELDS",
    "PROTOCOLS",
    "SUBJECTS",
    "adopt_spec_record",
    "is_spec_file",
    "load_spec_file",
    "spec_file_record",
]

#: The fields of a spec file, in the order the documentation lists them: what each holds.
FIELDS: dict[str, str] = {
    "name": "the dataset's name in reports (letters, digits, '_', '-', '.')",
    "folder": "the dataset's folder under data.root, or an absolute path (default: the name)",
    "splits": "the train, query and gallery folders under the dataset's folder",
    "structure": f"the folder structure: {', '.join(STRUCTURES)}",
    "modalities": f"{MIN_MODALITIES} to {MAX_MODALITIES} entries (key, letter, name, folder) in batch order",
    "name_pattern": "a regular expression with the named groups pid and cam (and scene)",
    "name_rule": "the naming rule in words, for error messages (default: from the pattern)",
    "camera_base": "the first camera number in file names (0 or 1, ...)",
    "max_cameras": "the number of cameras the naming allows",
    "img_size": "[H, W] of one modality as the model sees it",
    "protocol": "junk gallery matches: same_camera (default) or same_scene",
    "subject": "person (default) or vehicle: what the synthetic generator draws",
    "junk_pids": "pids that mark junk images, left out (default: [-1])",
    "published_splits": "split -> [identities, captures, cameras] as the dataset's paper gives them",
    "synth_name": "file-name template of synthetic captures (default: derived from name_pattern)",
    "source": "where the layout and counts come from (default: this file's path)",
}
REQUIRED = (
    "name",
    "splits",
    "structure",
    "modalities",
    "name_pattern",
    "camera_base",
    "max_cameras",
    "img_size",
)
#: The fields of one entry of ``modalities``.
MODALITY_FIELDS = ("key", "letter", "name", "folder")
PROTOCOLS = ("same_camera", "same_scene")
SUBJECTS = ("person", "vehicle")
SPLITS = ("train", "query", "gallery")
#: The fields a ``synth_name`` template may use.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

_CACHE: dict[Path, tuple[int, int, DatasetSpec]] = {}
#: Specs read from checkpoints' stored copies, by the path they were trained from: used only
#: while no file exists at that path.
_ADOPTED: dict[Path, DatasetSpec] = {}


def is_spec_file(name: str | Path) -> bool:
    """Whether ``name`` names a spec file (ends in ``.yaml`` or ``.yml``) rather than a benchmark."""
    return str(name).lower().endswith((".yaml", ".yml"))


def load_spec_file(path: str | Path) -> DatasetSpec:
    """The spec the YAML file at ``path`` describes (relative paths: from the current folder).

    Cached per resolved path, size and modification time: an edited file is read again.
    :class:`~mambapro.errors.ConfigError` naming the file and the field for anything wrong.
    """
    shown = str(path)
    resolved = Path(path).expanduser().resolve()
    try:
        st = resolved.stat()
    except FileNotFoundError:
        if resolved in _ADOPTED:
            return _ADOPTED[resolved]
        raise ConfigError(f"dataset spec file not found: {shown} ({resolved})") from None
    except OSError as err:
        raise ConfigError(f"dataset spec file {shown}: cannot read it ({err.strerror})") from None
    if not resolved.is_file():
        raise ConfigError(f"dataset spec file {shown} is a folder, not a file")
    hit = _CACHE.get(resolved)
    if hit is not None and hit[:2] == (st.st_mtime_ns, st.st_size):
        return hit[2]
    try:
        text = resolved.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"dataset spec file {shown}: cannot read it ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"dataset spec file {shown}: not a text file (not UTF-8)") from None
    spec = _Reader(shown, resolved).spec(_parse_yaml(text, shown))
    _CACHE[resolved] = (st.st_mtime_ns, st.st_size, spec)
    return spec


def spec_file_record(path: str | Path) -> dict[str, str]:
    """``{"path": absolute path, "text": the file's text}`` of a spec file, for a checkpoint to
    store (plain strings: it loads with ``weights_only=True``)."""
    resolved = Path(path).expanduser().resolve()
    load_spec_file(resolved)  # the text stored is one that reads as a spec
    return {"path": str(resolved), "text": resolved.read_text(encoding="utf-8")}


def adopt_spec_record(record: dict[str, str], origin: str) -> bool:
    """Let the spec text in ``record`` (from :func:`spec_file_record`, stored in ``origin``)
    answer for its path while no file exists there; True when it was adopted (the file is
    absent), False when the file exists and is used as it is. A stored text that no longer
    reads as a spec is a :class:`~mambapro.errors.ConfigError` naming ``origin``."""
    try:
        resolved = Path(record["path"])
        text = record["text"]
    except (KeyError, TypeError):
        raise ConfigError(f"{origin}: its stored dataset spec is damaged (no path or text)") from None
    if resolved.exists():
        return False
    shown = f"{resolved} (the copy stored in {origin})"
    _ADOPTED[resolved] = _Reader(shown, resolved).spec(_parse_yaml(text, shown))
    return True


def _parse_yaml(text: str, shown: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark is not None else shown
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        hint = " (write regular expressions in single quotes)" if "escape" in problem else ""
        raise ConfigError(f"dataset spec file {where}: not valid YAML: {problem}{hint}") from None
    if not isinstance(data, dict):
        got = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(
            f"dataset spec file {shown}: must be a mapping of fields ({', '.join(FIELDS)}), it is {got}"
        )
    return data


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class _Reader:
    """Reads the fields of one parsed file; every error names the file and the field."""

    def __init__(self, shown: str, resolved: Path) -> None:
        self.shown = shown
        self.resolved = resolved

    def error(self, field: str, message: str) -> ConfigError:
        return ConfigError(f"dataset spec file {self.shown}: {field}: {message}")

    def text(self, data: dict[str, Any], field: str, where: str | None = None) -> str:
        value = data[field]
        if not isinstance(value, str) or not value.strip():
            raise self.error(where or field, f"must be a non-empty text, got {value!r}")
        return value.strip()

    def integer(self, data: dict[str, Any], field: str, low: int) -> int:
        value = data[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise self.error(field, f"must be an integer >= {low}, got {value!r}")
        return value

    def choice(self, data: dict[str, Any], field: str, choices: tuple[str, ...], default: str) -> str:
        value = data.get(field, default)
        if value not in choices:
            raise self.error(field, f"{value!r} is not one of: {', '.join(choices)}")
        return value

    def spec(self, data: dict[str, Any]) -> DatasetSpec:
        unknown = [str(k) for k in data if k not in FIELDS]
        if unknown:
            raise self.error(unknown[0], f"unknown field; the fields are: {', '.join(FIELDS)}")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise self.error(missing[0], f"missing ({FIELDS[missing[0]]}); required: {', '.join(REQUIRED)}")
        name = self.text(data, "name")
        if not _NAME.match(name):
            raise self.error("name", f"{name!r} must be 1-64 letters, digits, '_', '-' or '.'")
        self._refuse_registered(name)
        structure = self.choice(data, "structure", STRUCTURES, "")
        protocol = self.choice(data, "protocol", PROTOCOLS, "same_camera")
        has_scenes = protocol == "same_scene"
        modalities, folders = self._modalities(data["modalities"], structure)
        pattern = self._pattern(data, has_scenes)
        camera_base = self.integer(data, "camera_base", 0)
        max_cameras = self.integer(data, "max_cameras", 1)
        published_splits = self._published(data.get("published_splits"))
        geometry = {
            "pattern": pattern,
            "camera_base": camera_base,
            "max_cameras": max_cameras,
            "has_scenes": has_scenes,
        }
        if "synth_name" in data:
            synth_name = self.text(data, "synth_name")
            problem = synth_name_problem(synth_name, **geometry)
            if problem:
                raise self.error("synth_name", f"{synth_name!r} {problem}")
        else:
            synth_name = derive_synth_name(**geometry)
        if "name_rule" in data:
            name_rule = self.text(data, "name_rule")
        else:
            # The parsers say "name does not parse as <rule>".
            example = f"e.g. {synth_file_name(synth_name, 1, 0, 0, 0)}; " if synth_name else ""
            name_rule = f"{pattern} ({example}camera {camera_base}..{camera_base + max_cameras - 1})"
        train = (published_splits or {}).get("train")
        fields = dict(
            name=name,
            folder=self.text(data, "folder") if "folder" in data else name,
            splits=self._splits(data["splits"]),
            structure=structure,
            modality_folders=folders,
            name_pattern=pattern,
            name_rule=name_rule,
            camera_base=camera_base,
            max_cameras=max_cameras,
            img_size=self._img_size(data["img_size"]),
            has_scenes=has_scenes,
            subject=self.choice(data, "subject", SUBJECTS, "person"),
            synth_name=synth_name,
            # Training identities and cameras as published; unknown: 0 identities.
            published=(train[0], train[2]) if train else (0, max_cameras),
            modalities=modalities,
            junk_pids=self._junk_pids(data.get("junk_pids", [-1])),
            published_splits=published_splits,
            source=self.text(data, "source") if "source" in data else str(self.resolved),
        )
        try:
            return DatasetSpec(**fields)
        except ValueError as err:  # what the checks above do not foresee, still one line
            raise ConfigError(f"dataset spec file {self.shown}: {' '.join(str(err).split())}") from None

    def _refuse_registered(self, name: str) -> None:
        from .specs import dataset_names  # specs imports this module

        taken = {n.lower(): n for n in dataset_names()}
        if name.lower() in taken:
            raise self.error(
                "name", f"{name!r} is the registered dataset {taken[name.lower()]}; give yours another name"
            )

    def _splits(self, value: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            raise self.error("splits", f"must map {', '.join(SPLITS)} to their folders, got {_kind(value)}")
        unknown = [str(k) for k in value if k not in SPLITS]
        if unknown:
            raise self.error(f"splits.{unknown[0]}", f"unknown split; give {', '.join(SPLITS)}")
        missing = [k for k in SPLITS if k not in value]
        if missing:
            raise self.error(f"splits.{missing[0]}", f"missing; give the folders of {', '.join(SPLITS)}")
        return {k: self.text(value, k, f"splits.{k}") for k in SPLITS}

    def _modalities(self, value: Any, structure: str) -> tuple[ModalitySet, tuple[str, ...]]:
        if not isinstance(value, list):
            raise self.error(
                "modalities",
                f"must be a list of {MIN_MODALITIES} to {MAX_MODALITIES} entries, got {_kind(value)}",
            )
        if not MIN_MODALITIES <= len(value) <= MAX_MODALITIES:
            raise self.error(
                "modalities",
                f"a dataset has {MIN_MODALITIES} to {MAX_MODALITIES} modalities, got {len(value)}",
            )
        entries = [self._modality(i, entry, structure) for i, entry in enumerate(value)]
        keys = [e["key"] for e in entries]
        known = [KNOWN_MODALITIES.get(k, (k[:1].upper(), k)) for k in keys]  # ModalitySet.of's defaults
        letters = [e.get("letter", c) for e, (c, _) in zip(entries, known)]
        names = [e.get("name", n) for e, (_, n) in zip(entries, known)]
        for what, values in (("key", [k.upper() for k in keys]), ("letter", letters)):
            twice = [i for i, v in enumerate(values) if v in values[:i]]
            if twice:
                i = twice[0]
                first = values.index(values[i])
                hint = "; give one of them another 'letter'" if what == "letter" else ""
                raise self.error(
                    f"modalities[{i}].{what}",
                    f"{keys[first]} and {keys[i]} have the same {what} {values[i]!r}{hint}",
                )
        try:
            modalities = ModalitySet(tuple(keys), tuple(letters), tuple(names))
        except ConfigError as err:
            raise self.error("modalities", str(err)) from None
        if structure == "side_by_side":
            return modalities, ()
        folders = [e.get("folder", e["key"]) for e in entries]
        twice = [i for i, f in enumerate(folders) if f in folders[:i]]
        if twice:
            i = twice[0]
            raise self.error(
                f"modalities[{i}].folder",
                f"{keys[folders.index(folders[i])]} and {keys[i]} have the same folder {folders[i]!r}",
            )
        return modalities, tuple(folders)

    def _modality(self, i: int, entry: Any, structure: str) -> dict[str, str]:
        where = f"modalities[{i}]"
        if isinstance(entry, str):
            entry = {"key": entry}
        if not isinstance(entry, dict):
            raise self.error(
                where, f"must be a mapping with a key (and letter, name, folder), got {_kind(entry)}"
            )
        unknown = [str(k) for k in entry if k not in MODALITY_FIELDS]
        if unknown:
            raise self.error(
                f"{where}.{unknown[0]}", f"unknown field; the fields are: {', '.join(MODALITY_FIELDS)}"
            )
        if "key" not in entry:
            raise self.error(f"{where}.key", "missing (the modality's batch key, e.g. RGB, NI, TI)")
        out = {k: self.text(entry, k, f"{where}.{k}") for k in entry}
        if "letter" in out:
            out["letter"] = out["letter"].upper()
            if len(out["letter"]) != 1 or not out["letter"].isalpha():
                raise self.error(f"{where}.letter", f"{entry['letter']!r} must be one letter")
        if "folder" in out and structure == "side_by_side":
            raise self.error(
                f"{where}.folder",
                "a side_by_side dataset has no modality folders (the list order is the panel order)",
            )
        return out

    def _pattern(self, data: dict[str, Any], has_scenes: bool) -> str:
        pattern = data["name_pattern"]
        if not isinstance(pattern, str) or not pattern:
            raise self.error("name_pattern", f"must be a regular expression (text), got {pattern!r}")
        try:
            groups = set(re.compile(pattern).groupindex)
        except re.error as err:
            raise self.error("name_pattern", f"'{pattern}' is not a regular expression: {err}") from None
        needed = ["pid", "cam"] + (["scene"] if has_scenes else [])
        lacking = [g for g in needed if g not in groups]
        if lacking:
            why = " (protocol same_scene)" if lacking == ["scene"] else ""
            named = ", ".join(f"(?P<{g}>...)" for g in lacking)
            raise self.error("name_pattern", f"'{pattern}' lacks the named group(s) {named}{why}")
        return pattern

    def _img_size(self, value: Any) -> tuple[int, int]:
        ok = isinstance(value, list) and len(value) == 2
        if not ok or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value):
            raise self.error("img_size", f"{value!r} must be [H, W], two positive integers")
        return (value[0], value[1])

    def _junk_pids(self, value: Any) -> tuple[int, ...]:
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise self.error("junk_pids", f"{value!r} must be a list of integers (e.g. [-1])")
        return tuple(value)

    def _published(self, value: Any) -> dict[str, tuple[int, int, int]] | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.error(
                "published_splits", f"must map splits to [identities, captures, cameras], got {_kind(value)}"
            )
        out = {}
        for split, counts in value.items():
            where = f"published_splits.{split}"
            if split not in SPLITS:
                raise self.error(where, f"unknown split; give some of {', '.join(SPLITS)}")
            ok = isinstance(counts, list) and len(counts) == 3
            if not ok or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
                raise self.error(where, f"{counts!r} must be [identities, captures, cameras], integers >= 0")
            out[split] = (counts[0], counts[1], counts[2])
        return out
