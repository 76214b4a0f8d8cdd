"""Decoded-image cache (``data.cache``): every image decoded and resized once, then served as uint8.

A :class:`DecodedCache` holds one ``(N, M, 3, H, W)`` uint8 array, the images of the M modalities
of ``N`` samples (M = 3: RGB, NI, TI for the paper's datasets), each already resized to the size
the pipeline resizes to. What it serves equals,
byte for byte, what the uncached pipeline's resize step produces (``tests/test_input_pipeline.py``):

* **decoding**: JPEG files are decoded with ``torchvision.io.decode_jpeg`` (libjpeg-turbo; faster
  than PIL, see ``benchmarks/bench_input.py``), everything else with PIL exactly as
  :func:`~mambapro.data.io.read_image`. Before a build the first JPEG is decoded both ways: when
  the two decoders disagree on its pixels (another libjpeg build), or torchvision warns about a
  file (e.g. a truncated one, which PIL refuses), PIL decodes instead, so the cache never differs
  from the uncached path;
* **resizing**: with PIL and the same :mod:`torchvision.transforms.v2` ``Resize`` the train
  (bicubic) or test (``data.test_interpolation``) transform uses; an image already at the size is
  kept as it is (PIL's resize is then the identity too).

``mode="memory"`` builds the array in RAM; a cache that would not fit (its size against the
available memory) is refused before anything is decoded, naming the ``disk`` alternative.
``mode="disk"`` writes a ``.npy`` file under ``cache_dir`` once (to a temporary name, renamed
when complete, so an interrupted build leaves no half file) and memory-maps it afterwards. Its
name holds a hash of each file's path, size and modification time, the image size, the
interpolation, the decoder and the dataset's modalities (other than the paper's three, which
leave the hash as it always was): a changed dataset gets a new file. The pixels are not hashed, so
an image edited in place that keeps both its size and its modification time is served stale;
deleting the cache file (or touching the image) forces a rebuild. A cache file whose header,
shape, dtype or byte count is not what it should hold (truncated, empty, overwritten) is rebuilt
the same atomic way, with one warning naming it and what was wrong; it is checked from its header
and size before numpy maps it.

Files that fail to decode are all collected and reported in one :class:`DatasetError` before
training starts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from tqdm.auto import tqdm

from ..errors import DatasetError, check_output_dir, short_reason
from ..modalities import RGB_NI_TI
from .io import DatasetRef, ImageReadError, Sample, panel_size, read_image
from .spec_file import is_spec_file
from .specs import dataset_spec
from .transforms import resize_transform

__all__ = [
    "CACHE_VERSION",
    "DecodedCache",
    "available_memory",
    "build_cache",
    "default_cache_dir",
    "decode_file",
]

CACHE_VERSION = 1
_JPEG = (".jpg", ".jpeg")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mambapro`` (``~/.cache/mambapro``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mambapro"


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (psutil, else /proc/meminfo), or None."""
    try:
        import psutil  # noqa: PLC0415 (optional dependency)

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _tv_decode(path: str) -> np.ndarray:
    """HWC uint8 RGB via torchvision; raises on any warning (a damaged file)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # torchvision 0.29 deprecates its decoders (in favour of torchcodec); they still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        img = decode_jpeg(read_file(path), mode=ImageReadMode.RGB)
    return img.permute(1, 2, 0).numpy()


def decode_file(path: str, decoder: str = "torchvision") -> np.ndarray:
    """Decode ``path`` into an (H, W, 3) uint8 RGB array, or raise :class:`ImageReadError`.

    ``decoder="torchvision"`` uses ``torchvision.io.decode_jpeg`` for JPEG files and falls back
    to PIL (:func:`read_image`, which names the file in its error) when it fails or warns.
    """
    if decoder == "torchvision" and path.lower().endswith(_JPEG):
        try:
            return _tv_decode(path)
        except Exception:  # noqa: BLE001 - PIL decides, and names the file if it is broken
            pass
    return np.asarray(read_image(path))


def choose_decoder(paths: Sequence[str]) -> str:
    """``torchvision`` when it decodes the first JPEG of ``paths`` exactly as PIL does, else ``pil``."""
    first = next((p for p in paths if p.lower().endswith(_JPEG)), None)
    if first is None:
        return "pil"
    try:
        tv = _tv_decode(first)
        pil = np.asarray(read_image(first))
    except Exception:  # noqa: BLE001 - an unreadable first file is reported by the build
        return "pil"
    return "torchvision" if tv.shape == pil.shape and np.array_equal(tv, pil) else "pil"


def _fit(arr: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Resize an (H, W, 3) uint8 array exactly as the pipeline's PIL resize step; CHW out."""
    if arr.shape[:2] != tuple(size):
        arr = np.asarray(resize_transform(size, interpolation)(Image.fromarray(arr)))
    return arr.transpose(2, 0, 1)


def decode_triplet(
    sample: Sample, dataset_name: DatasetRef, size: tuple[int, int], interpolation: str, decoder: str
) -> np.ndarray:
    """(M, 3, H, W) uint8: the sample's images of the dataset's M modalities (RGB, NI, TI),
    decoded and resized."""
    spec = dataset_spec(dataset_name)
    if spec.side_by_side:
        m = len(spec.modalities)
        whole = decode_file(sample.paths[0], decoder)
        p, _ = panel_size((whole.shape[1], whole.shape[0]), sample.paths[0], m)
        panels = [np.ascontiguousarray(whole[:, i * p : (i + 1) * p]) for i in range(m)]
    else:
        panels = [decode_file(path, decoder) for path in sample.paths]
    return np.stack([_fit(a, size, interpolation) for a in panels])


def _name(dataset: DatasetRef) -> str:
    """The dataset's name in cache keys and file names: a registered name as given, else the
    spec's name."""
    return dataset if isinstance(dataset, str) and not is_spec_file(dataset) else dataset_spec(dataset).name


def cache_key(
    samples: Sequence[Sample],
    dataset_name: DatasetRef,
    size: tuple[int, int],
    interpolation: str,
    decoder: str,
) -> str:
    """Hash of the file list (paths, sizes, mtimes) and everything that shapes the pixels; the
    modalities are part of it unless they are the paper's three (whose keys stay as they were)."""
    modalities = dataset_spec(dataset_name).modalities
    sensors = "" if modalities == RGB_NI_TI else f"|{modalities}"
    h = hashlib.sha256(
        f"v{CACHE_VERSION}|{_name(dataset_name)}|{size}|{interpolation}|{decoder}{sensors}".encode()
    )
    for s in samples:
        for path in s.paths:
            try:
                st = os.stat(path)
                h.update(f"|{path}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"|{path}|missing".encode())
    return h.hexdigest()


class DecodedCache:
    """Decoded, resized uint8 images of a sample list; ``cache[i]`` -> one tensor per modality."""

    def __init__(self, array: np.ndarray, key: str, decoder: str, path: Path | None = None) -> None:
        self.array = array
        self.key = key
        self.decoder = decoder
        self.path = path

    def __len__(self) -> int:
        return len(self.array)

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        item = self.array[index]
        if not item.flags.writeable:  # a read-only memory map: torch wants its own copy
            item = np.array(item)
        t = torch.from_numpy(item)
        return tuple(t[i] for i in range(len(t)))

    def __repr__(self) -> str:
        where = f"disk {self.path}" if self.path else "memory"
        return f"DecodedCache({len(self)} triplets, {_gib(self.nbytes)}, {self.decoder}, {where})"


def _fill(
    out: np.ndarray,
    samples: Sequence[Sample],
    dataset_name: DatasetRef,
    size: tuple[int, int],
    interpolation: str,
    decoder: str,
    progress: bool,
) -> None:
    broken: list[str] = []
    bar = tqdm(
        samples,
        desc="caching decoded images",
        unit="triplet",
        disable=None if progress else True,
        leave=False,
    )
    for i, s in enumerate(bar):
        try:
            out[i] = decode_triplet(s, dataset_name, size, interpolation, decoder)
        except ImageReadError as err:
            broken.append(str(err))
    bar.close()
    if broken:
        shown = "; ".join(broken[:20]) + (f"; ... ({len(broken) - 20} more)" if len(broken) > 20 else "")
        raise DatasetError(
            f"data.cache: {len(broken)} image file(s) cannot be decoded: {shown} "
            "(fix or remove them, or set data.skip_broken=true with data.verify=true)"
        )


def _damage(path: Path, shape: tuple[int, ...]) -> str | None:
    """What is wrong with the cache file at ``path`` for a uint8 array of ``shape``; None if nothing.

    Read from the header and the file size alone, so no memory map of a broken file is ever
    opened (mapping a truncated file fails in np.load or, worse, faults on first access).
    """
    want = int(np.prod(shape))
    size = path.stat().st_size
    if size == 0:
        return "it is empty (0 bytes)"
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                got_shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                got_shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return f"its .npy format version {version[0]}.{version[1]} is not one this cache writes"
            offset = fh.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as err:
        return f"it has no readable .npy header ({size} bytes: {short_reason(err)[:160]})"
    if tuple(got_shape) != tuple(shape) or dtype != np.uint8 or fortran:
        order = ", Fortran order" if fortran else ""
        return (
            f"it holds a {dtype} array of shape {tuple(got_shape)}{order}, "
            f"not the uint8 array of shape {tuple(shape)} of this dataset"
        )
    if size != offset + want:
        kind = "truncated" if size < offset + want else "longer than its array"
        return f"it is {kind} ({size} of {offset + want} bytes)"
    return None


def build_cache(
    samples: Sequence[Sample],
    dataset_name: DatasetRef,
    size: tuple[int, int],
    interpolation: str = "bicubic",
    mode: str = "memory",
    cache_dir: str | Path | None = None,
    progress: bool = False,
    decoder: str | None = None,
) -> DecodedCache:
    """Decode and resize every sample once (``mode`` ``memory`` or ``disk``); see the module doc.
    ``dataset_name``: the dataset (spec, registered name or spec-file path)."""
    if mode not in ("memory", "disk"):
        raise ValueError(f"cache mode {mode!r}: use memory or disk")
    spec = dataset_spec(dataset_name)
    m = len(spec.modalities)
    h, w = (int(x) for x in size)
    samples = list(samples)
    n = len(samples)
    need = n * m * 3 * h * w
    if decoder is None:
        decoder = choose_decoder([p for s in samples[:1] for p in s.paths])
    key = cache_key(samples, dataset_name, (h, w), interpolation, decoder)
    shape = (n, m, 3, h, w)
    if mode == "memory":
        avail = available_memory()
        if avail is not None and need > avail:
            raise DatasetError(
                f"data.cache=memory needs {_gib(need)} for {n} decoded triplets at {h}x{w}, but only "
                f"{_gib(avail)} of memory is available; use data.cache=disk (a memory-mapped file "
                "under data.cache_dir) or data.cache=none"
            )
        array = np.empty(shape, dtype=np.uint8)
        _fill(array, samples, spec, (h, w), interpolation, decoder, progress)
        return DecodedCache(array, key, decoder)
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    # The CLI checks an explicit data.cache_dir before the run starts; this covers the default
    # folder and library callers, with the same one-line message instead of mkdir's "File exists".
    check_output_dir(folder, "data.cache_dir")
    path = folder / f"{_name(dataset_name).lower()}-{h}x{w}-{interpolation}-{key[:20]}.npy"
    if path.is_dir():  # os.replace cannot put the rebuilt file there
        raise DatasetError(f"data.cache: {path} is a folder, not a cache file; remove it")
    if path.is_file():
        problem = _damage(path, shape)
        if problem is None:
            try:
                return DecodedCache(np.load(path, mmap_mode="r"), key, decoder, path)
            except (ValueError, OSError, EOFError) as err:
                problem = f"numpy cannot map it ({short_reason(err)[:160]})"
        warnings.warn(f"data.cache: rebuilding {path}: {problem}", stacklevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise DatasetError(
            f"data.cache=disk needs {_gib(need)} under {folder} for {n} decoded triplets at {h}x{w}, "
            f"but only {_gib(free)} is free there; choose another data.cache_dir or data.cache=none"
        )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        _fill(array, samples, spec, (h, w), interpolation, decoder, progress)
        array.flush()
        del array
        os.replace(tmp, path)  # atomic: readers see no file or the complete one
    finally:
        tmp.unlink(missing_ok=True)
    return DecodedCache(np.load(path, mmap_mode="r"), key, decoder, path)
