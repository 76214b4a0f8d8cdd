"""``mambapro serve``: a search service over a gallery index (FastAPI + uvicorn).

:class:`SearchService` holds one model (from a checkpoint) and one gallery index (``mambapro
index build``); :func:`create_app` puts it behind HTTP:

* ``POST /search``: ``multipart/form-data`` with the query's modality images as the file
  fields named by the model's modality keys (``RGB``, ``NI``, ``TI`` for the paper's models; any
  non-empty subset: the absent ones are zero-filled after normalisation, exactly as ``mambapro
  test --missing`` does with the same setting of the model's set) and the optional fields ``k``
  (1..``MAX_K``) and ``camid`` (the 0-based camera id of the index's ``camid`` column; absent: no
  camera term). Returns the top-``k`` gallery entries (rank, row, distance, identity, camera,
  path and the URLs of their images) as JSON, with ``warnings`` naming an upload far smaller
  than the model's input.
* ``GET /health``: the model, the index and the limits.
* ``GET /``: a self-contained HTML page (no external script, style or font) to upload a triplet
  and see the ranked gallery.
* ``GET /gallery/{row}/{modality}``: one modality image of an index row, as PNG. Only files that
  the index lists *and* that lie inside the gallery root (symlinks resolved) are read; the client
  never names a path, so nothing else can be reached. The default root is found from the
  resolved files too, so a gallery of symlinks is served from the folder the links point into;
  start-up warns (one line) when the root holds none or only some of the index's captures.

Bad requests get a 4xx with a one-line ``detail``: a missing or unknown field (400), a ``k`` or
``camid`` out of range (400), an upload over the size limit (413), a file that is not a decodable
image or has too many pixels (415 / 413), a body that is not multipart (415), a query string on
``POST /search`` (400: its fields come in the form), a path parameter that does not parse (422,
naming the parameter and the value). Requests run the model one call at a time (a lock);
queries that arrive while it is busy wait and are embedded together in the next call (up to
``max_batch``), so concurrent load costs fewer, larger forward passes;
``benchmarks/bench_serve.py`` measures latency and throughput under a burst.

fastapi and uvicorn come with the ``deploy`` extra; :func:`create_app` and :func:`run_serve` say
which extra to install when they are missing. The upload page is :mod:`~mambapro.deploy.page`, the
gallery root :mod:`~mambapro.deploy.gallery_root`, the refusals :mod:`~mambapro.deploy.validation`.
"""

from __future__ import annotations

import io
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mambapro.data import DatasetError, apply_missing, build_test_transform, read_triplet, triplet_paths
from mambapro.data.io import tiny_image_note
from mambapro.deploy.gallery_root import default_root, gallery_root_warning, inside, resolved_captures
from mambapro.deploy.serve_app import ServeMissingError, create_app, web_modules
from mambapro.deploy.serve_options import MAX_K, ServeOptions
from mambapro.deploy.validation import RequestError, parse_camid, parse_k
from mambapro.errors import UserError
from mambapro.models.precision import apply_precision, autocast_dtype
from mambapro.options import check_precision, check_serve_options
from mambapro.retrieval.identity import PRECISION_REMEDY, check_same_model, model_identity, model_modalities
from mambapro.retrieval.index import GalleryIndex
from mambapro.runtime import eval_amp
from mambapro.train.checkpoint import load_model

__all__ = [
    "MAX_K",
    "RequestError",
    "SearchService",
    "ServeMissingError",
    "ServeOptions",
    "create_app",
    "run_serve",
]

#: Decoded size limit of one upload (a small PNG can decode to gigabytes).
MAX_PIXELS = 40_000_000


@dataclass(eq=False)
class _Pending:
    """A preprocessed query waiting for the model."""

    tensors: tuple[torch.Tensor, ...]
    camid: int | None
    feature: np.ndarray | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class SearchService:
    """A model and a gallery index answering multi-modal queries.

    Args:
        model: a MambaPro model in eval mode (``load_model``).
        cfg: its config (the test transform, distance and autocast come from it).
        index: the gallery index; its features must come from the same checkpoint.
        gallery_root: the folder gallery images are served from (default: the deepest folder
            holding all modality files of the captures the index lists, symlinks resolved). A
            root that holds none or only some of them is said with a warning.
        options: ``k`` when a request gives none, the largest accepted upload per image and
            ``max_batch``, the most queries embedded in one model call. Queries that arrive
            while the model is busy wait and then run together, so under concurrent load a
            forward pass serves several requests (``benchmarks/bench_serve.py`` measures it);
            ``max_batch=1`` serialises them. Host and port are :func:`run_serve`'s.
        checkpoint: the checkpoint's path, reported by ``/health``.
        precision: the model's test-time precision (``fp32``, ``bf16``, ``int8``;
            :mod:`mambapro.models.precision`): the service converts the fp32 ``model`` after
            taking its identity. An index made at another precision is refused unless
            ``allow_precision_mismatch``.

    The upload fields, the missing-modality settings and the gallery images follow the model's
    modality set (the attribute ``modalities``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: Any,
        index: GalleryIndex,
        gallery_root: str | Path | None = None,
        options: ServeOptions | None = None,
        checkpoint: str | Path | None = None,
        precision: str = "fp32",
        allow_precision_mismatch: bool = False,
    ) -> None:
        self.options = options or ServeOptions()  # validated when it was built
        self.modalities = model_modalities(model)
        self.cfg = cfg
        self.index = index
        self.dataset = cfg.data.dataset
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.img_size = tuple(int(x) for x in cfg.img_size())
        served = checkpoint or "the served model"
        check_same_model(
            index.identity,
            f"--index {index.source}" if index.source is not None else "the index",
            model_identity(model.eval(), self.img_size, served, precision=precision),
            f"--checkpoint {checkpoint} with these test.* settings",
            allow_precision_mismatch=allow_precision_mismatch,
            precision_remedy=PRECISION_REMEDY,
        )
        self.precision = precision
        self.model = apply_precision(model, precision)
        self.device = next(model.parameters()).device
        self.amp = autocast_dtype(self.model, eval_amp(cfg, self.device))
        self.transform = build_test_transform(cfg.data, self.img_size)
        backbone = model.backbone
        self.num_cameras = backbone.num_cameras if backbone.camera_embedding is not None else None
        captures = resolved_captures(index.paths, self.dataset)
        if gallery_root is None:
            self.gallery_root = default_root(captures)
        else:
            root = Path(gallery_root)
            if not root.is_dir():
                raise UserError(
                    f"--gallery-root {root}: {'no such folder' if not root.exists() else 'not a folder'}"
                )
            self.gallery_root = root.resolve()
        self._lock = threading.Lock()  # the model: one forward at a time
        self._queue_lock = threading.Lock()  # the waiting queries and the counters
        self._queue: list[_Pending] = []
        self.requests = 0
        self.batches = 0
        h, w = self.img_size
        # Blank stand-ins for the modalities a query leaves out (zeroed after normalisation, so
        # only their size matters); never modified, so shared by every request.
        self._blanks = {m: Image.new("RGB", (w, h)) for m in self.modalities}
        dim = self.embed(self._tensors(self._blanks, "full"), None).shape[0]
        if dim != index.dim:
            where = f" {index.source}" if index.source is not None else ""
            raise UserError(
                f"--index{where} holds {index.dim}-d features but the checkpoint gives {dim}-d features; "
                "build the index from features of this checkpoint (mambapro extract + index build)"
            )
        # Searches still work without the images, so a root that misses them is said, not refused.
        problem = gallery_root_warning(self.gallery_root, index.paths, captures, self.dataset)
        if problem is not None:
            warnings.warn(problem, stacklevel=2)

    # ------------------------------------------------------------------ queries

    def decode(self, modality: str, data: bytes) -> Image.Image:
        """An uploaded file as an RGB image, or :class:`RequestError` (413 / 415)."""
        if len(data) > self.options.max_upload_bytes:
            raise RequestError(
                413,
                f"{modality}: the upload has {len(data)} bytes, more than the limit of "
                f"{self.options.max_upload_bytes}",
            )
        if not data:
            raise RequestError(400, f"{modality}: the file is empty")
        try:
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise RequestError(
                        413, f"{modality}: the image is {w}x{h}, more than {MAX_PIXELS} pixels"
                    )
                img.load()
                return img.convert("RGB")
        except RequestError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise RequestError(415, f"{modality}: not a decodable image ({type(err).__name__})") from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            raise RequestError(415, f"{modality}: not a decodable image ({reason})") from None

    def _tensors(self, images: dict[str, Image.Image], missing: str) -> tuple[torch.Tensor, ...]:
        tensors = self.transform([images[m] for m in self.modalities])
        return apply_missing(tensors, missing, self.modalities) if missing != "full" else tensors

    def _forward(self, items: list[_Pending]) -> np.ndarray:
        """One model call over ``items`` (all with or all without a camera id): (len, F)."""
        batch: dict[str, Any] = {
            m: torch.stack([it.tensors[i] for it in items]).to(self.device)
            for i, m in enumerate(self.modalities)
        }
        if items[0].camid is not None:
            batch["camids"] = torch.tensor([it.camid for it in items], device=self.device)
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            return self.model(batch).float().cpu().numpy()

    def _run_pending(self) -> None:
        """Take up to ``max_batch`` waiting queries and embed them (caller holds the model lock)."""
        with self._queue_lock:
            items, self._queue = self._queue[: self.options.max_batch], self._queue[self.options.max_batch :]
        for with_camid in (False, True):  # the model takes camera ids for all of a batch or none
            group = [it for it in items if (it.camid is not None) == with_camid]
            if not group:
                continue
            try:
                feats = self._forward(group)
            except Exception as err:  # handed to each waiting request, which re-raises it
                for it in group:
                    it.error = err
            else:
                for it, f in zip(group, feats):
                    it.feature = f
            self.batches += 1
            for it in group:
                it.done.set()

    def embed(self, tensors: tuple[torch.Tensor, ...], camid: int | None) -> np.ndarray:
        """The test feature (F,) of one preprocessed query, computed in a batch with the queries
        that wait at the same time (at most ``max_batch``)."""
        item = _Pending(tensors, camid)
        with self._queue_lock:
            self._queue.append(item)
        while not item.done.is_set():
            with self._lock:  # whoever holds the model runs everything queued, up to max_batch
                if not item.done.is_set():
                    self._run_pending()
        if item.error is not None:
            raise item.error
        return item.feature

    def check_k(self, k: Any) -> int:
        return parse_k(k)

    def check_camid(self, camid: Any) -> int | None:
        return parse_camid(camid, self.num_cameras)

    def search(self, uploads: dict[str, bytes], k: Any = None, camid: Any = None) -> dict[str, Any]:
        """Rank the gallery for one query: ``uploads`` maps modality names to encoded images.

        Returns the JSON answer of ``POST /search``; raises :class:`RequestError` on bad input.
        """
        start = time.perf_counter()
        keys = self.modalities.keys
        unknown = sorted(set(uploads) - set(keys))
        if unknown:
            raise RequestError(400, f"unknown image field(s) {unknown}: send {', '.join(keys)}")
        if not uploads:
            raise RequestError(400, f"no image: send at least one of the file fields {', '.join(keys)}")
        k = self.options.k if k is None else self.check_k(k)
        cam = self.check_camid(camid)
        images = dict(self._blanks)
        notes = []
        for m, data in uploads.items():
            images[m] = self.decode(m, data)
            note = tiny_image_note(images[m].size, self.img_size)
            if note is not None:
                notes.append(f"{m} {note}: the ranking carries little information")
        mods = self.modalities
        absent = "".join(c for c, m in zip(mods.letters, mods) if m not in uploads)
        missing = mods.parse_missing(absent or "full")
        feature = self.embed(self._tensors(images, missing), cam)
        # FAISS searches a read-only index safely from several threads.
        dist, rows = self.index.search(feature[None], k, self.cfg.test.distance)
        with self._queue_lock:
            self.requests += 1
        ranked = self.index.ranking(rows[0], dist[0], k)
        matches = [
            {
                "rank": m.rank,
                "row": m.index,
                "distance": m.distance,
                "pid": m.pid,
                "camid": m.camid,
                "path": m.path,
                "images": {mod: f"/gallery/{m.index}/{mod}" for mod in keys},
            }
            for m in ranked
        ]
        identities = list(dict.fromkeys(m.pid for m in ranked))  # in rank order, once each
        return {
            "query": {
                "present": mods.present_label(missing),
                "missing": mods.missing_label(missing),
                "camid": cam,
            },
            "k": k,
            "distance": self.cfg.test.distance,
            "identities": identities,
            "matches": matches,
            "took_ms": round(1000 * (time.perf_counter() - start), 2),
            "warnings": notes,
        }

    # ------------------------------------------------------------------ gallery images

    def gallery_image(self, row: int, modality: str) -> bytes:
        """PNG bytes of ``modality`` of index row ``row``; :class:`RequestError` 404 otherwise."""
        keys = self.modalities.keys
        if modality not in keys:
            raise RequestError(404, f"unknown modality {modality!r}: one of {', '.join(keys)}")
        if not 0 <= row < len(self.index.paths):
            raise RequestError(404, f"no gallery row {row} (the index has {len(self.index.paths)})")
        try:
            files = triplet_paths(self.index.paths[row], self.dataset)
        except DatasetError:
            raise RequestError(
                404, f"gallery row {row}: its files are not in the {self.dataset} layout"
            ) from None
        resolved = [Path(f).resolve() for f in files]
        if not all(inside(p, self.gallery_root) for p in resolved):
            raise RequestError(404, f"gallery row {row}: its files lie outside the gallery root")
        try:
            images = read_triplet(tuple(str(p) for p in resolved), self.dataset)
        except DatasetError:
            raise RequestError(404, f"gallery row {row}: its image files cannot be read") from None
        buf = io.BytesIO()
        images[keys.index(modality)].save(buf, format="PNG")
        return buf.getvalue()

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "checkpoint": self.checkpoint,
            "dataset": self.dataset,
            "device": str(self.device),
            "precision": self.precision,
            "image_size": list(self.img_size),
            "modalities": list(self.modalities.keys),
            "distance": self.cfg.test.distance,
            "cameras": self.num_cameras,
            "index": {
                "kind": self.index.kind,
                "captures": self.index.ntotal,
                "dim": self.index.dim,
                "recall_at_10": self.index.recall,
            },
            "gallery_root": str(self.gallery_root),
            "max_upload_bytes": self.options.max_upload_bytes,
            "max_k": MAX_K,
            "requests": self.requests,
            "model_calls": self.batches,
            "max_batch": self.options.max_batch,
        }


# ---------------------------------------------------------------------- command


def _check_port_free(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UserError(f"--host {host}: cannot resolve it ({err.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            raise UserError(f"--port {port}: cannot listen on {host} ({err.strerror})") from None


def run_serve(
    checkpoint: str | Path,
    index: str | Path,
    gallery_root: str | Path | None = None,
    options: ServeOptions | None = None,
    overrides: list[str] | None = None,
    quiet: bool = False,
    precision: str = "fp32",
    allow_precision_mismatch: bool = False,
) -> None:
    """The ``serve`` command: load the checkpoint and the index, then serve until interrupted
    (the queries embedded at ``precision``)."""
    options = options or ServeOptions()
    _, uvicorn = web_modules()
    check_serve_options(checkpoint, index, gallery_root)
    check_precision(precision)
    gallery_index = GalleryIndex.load(index)  # a bad index is refused before the model loads
    _check_port_free(options.host, options.port)
    model, cfg, _ = load_model(checkpoint, None, overrides)
    service = SearchService(
        model, cfg, gallery_index, gallery_root, options, checkpoint, precision, allow_precision_mismatch
    )
    app = create_app(service)
    if not options.is_loopback:
        print(
            f"warning: serving on {options.host}: other machines can reach this service, "
            "which has no authentication"
        )
    print(f"gallery: {gallery_index.summary()}; images from {service.gallery_root}")
    print(f"serving http://{options.host}:{options.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning" if quiet else "info")
