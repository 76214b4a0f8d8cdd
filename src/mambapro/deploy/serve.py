"""``mambapro serve``: a search service over a gallery index (FastAPI + uvicorn).

:class:`SearchService` holds one model (from a checkpoint) and one gallery index (``mambapro
index build``); :func:`create_app` puts it behind HTTP:

* ``POST /search``: ``multipart/form-data`` with the query's modality images as the file
  fields ``RGB``, ``NI``, ``TI`` (any non-empty subset: the absent ones are zero-filled after
  normalisation, exactly as ``mambapro test --missing`` does) and the optional fields ``k``
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
which extra to install when they are missing.
"""

from __future__ import annotations

import html
import io
import json
import os
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
from mambapro.deploy.serve_options import MAX_K, ServeOptions
from mambapro.errors import UserError
from mambapro.modalities import MODALITIES, missing_label, parse_missing, present_label
from mambapro.retrieval.identity import check_same_model, model_identity
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
_FIELDS = ("k", "camid")


class ServeMissingError(UserError, ImportError):
    """fastapi or uvicorn is not installed."""


class RequestError(Exception):
    """A request the service refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _web() -> tuple[Any, Any]:
    try:
        import fastapi
        import uvicorn
    except ImportError as err:
        raise ServeMissingError(
            f"{err.name or 'fastapi'} is not installed: pip install 'mambapro[deploy]'"
        ) from None
    return fastapi, uvicorn


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _real(path: str, folders: dict[str, str]) -> str:
    """``os.path.realpath(path)``; ``folders`` caches resolved folders, so a gallery costs one
    ``realpath`` per folder and one ``lstat`` per file (only a file that is a link is followed)."""
    folder, name = os.path.split(path)
    if name in ("", ".", ".."):
        return os.path.realpath(path)
    real = folders.get(folder)
    if real is None:
        real = folders[folder] = os.path.realpath(folder or ".")
    full = os.path.join(real, name)
    return os.path.realpath(full) if os.path.islink(full) else full


def _resolved_captures(paths: list[str], dataset: str) -> list[tuple[str, ...] | None]:
    """Per index row, every file of its capture (all modalities) with symlinks resolved, as
    :meth:`SearchService.gallery_image` resolves them; ``None`` for a row not in the layout,
    which is never served. Relative paths are read from the current folder."""
    folders: dict[str, str] = {}
    captures: list[tuple[str, ...] | None] = []
    for path in paths:
        try:
            files = triplet_paths(path, dataset)
        except DatasetError:
            captures.append(None)
            continue
        captures.append(tuple(_real(f, folders) for f in files))
    return captures


def _default_root(captures: list[tuple[str, ...] | None]) -> Path:
    """The deepest folder holding every existing file of every servable capture, symlinks
    resolved (the request check resolves them too, so a gallery of links is served from where
    they point); if none exists, of all of them; the working folder if no row is servable."""
    files = [f for fs in captures if fs is not None for f in fs]
    # A stale row (a file since deleted) must not widen what may be served.
    dirs = {os.path.dirname(f) for f in files if os.path.isfile(f)} or {os.path.dirname(f) for f in files}
    if not dirs:
        return Path.cwd().resolve()
    return Path(os.path.commonpath(sorted(dirs)))


def _missing_reason(
    path: str, files: tuple[str, ...] | None, root: str, dataset: str
) -> tuple[str, str] | None:
    """Why the capture of index path ``path`` cannot be served from ``root`` (a kind and a
    phrase); ``None`` if it can."""
    if files is None:
        return "layout", f"not a {dataset} modality file"
    prefix = root if root.endswith(os.sep) else root + os.sep
    for f in files:
        if not os.path.isfile(f):
            if os.path.isabs(path):
                return "absent", f"{f} does not exist"
            return "relative", f"{f} does not exist (relative paths are read from the current folder)"
        if f != root and not f.startswith(prefix):
            return "outside", f"it resolves to {f}, outside the root"
    return None


# What to do when the root holds none of the captures, by the first capture's problem.
_ROOT_HINTS = {
    "relative": "start it from the folder extract ran in",
    "absent": "the images are not where extract read them: serve on the machine that has them, "
    "or extract and build the index again from where they are now",
    "outside": "pass a --gallery-root that holds the files the index lists (symlinks resolved)",
    "layout": "build the index from features of this dataset",
}


def _gallery_root_warning(
    root: Path, paths: list[str], captures: list[tuple[str, ...] | None], dataset: str
) -> str | None:
    """One line when ``root`` holds none or only some of the captures the index lists."""
    held, first = 0, None
    for path, files in zip(paths, captures):
        reason = _missing_reason(path, files, str(root), dataset)
        if reason is None:
            held += 1
        elif first is None:
            first = (path, *reason)
    if first is None:
        return None
    path, kind, why = first
    if held:
        return (
            f"gallery root {root} holds {held} of the {len(paths)} captures the index lists (first "
            f"missing: {path}: {why}); the others show no gallery images"
        )
    return (
        f"gallery root {root} holds none of the {len(paths)} captures the index lists (first: "
        f"{path}: {why}); the service answers searches but shows no gallery images; {_ROOT_HINTS[kind]}"
    )


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
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: Any,
        index: GalleryIndex,
        gallery_root: str | Path | None = None,
        options: ServeOptions | None = None,
        checkpoint: str | Path | None = None,
    ) -> None:
        self.options = options or ServeOptions()  # validated when it was built
        self.model = model.eval()
        self.cfg = cfg
        self.index = index
        self.dataset = cfg.data.dataset
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.device = next(model.parameters()).device
        self.amp = eval_amp(cfg, self.device)
        self.img_size = tuple(int(x) for x in cfg.img_size())
        self.transform = build_test_transform(cfg.data, self.img_size)
        backbone = model.backbone
        self.num_cameras = backbone.num_cameras if backbone.camera_embedding is not None else None
        captures = _resolved_captures(index.paths, self.dataset)
        if gallery_root is None:
            self.gallery_root = _default_root(captures)
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
        self._blanks = {m: Image.new("RGB", (w, h)) for m in MODALITIES}
        check_same_model(
            index.identity,
            f"--index {index.source}" if index.source is not None else "the index",
            model_identity(model, self.img_size, checkpoint or "the served model"),
            f"--checkpoint {checkpoint} with these test.* settings",
        )
        dim = self.embed(self._tensors(self._blanks, "full"), None).shape[0]
        if dim != index.dim:
            where = f" {index.source}" if index.source is not None else ""
            raise UserError(
                f"--index{where} holds {index.dim}-d features but the checkpoint gives {dim}-d features; "
                "build the index from features of this checkpoint (mambapro extract + index build)"
            )
        # Searches still work without the images, so a root that misses them is said, not refused.
        problem = _gallery_root_warning(self.gallery_root, index.paths, captures, self.dataset)
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
        tensors = self.transform([images[m] for m in MODALITIES])
        return apply_missing(tensors, missing) if missing != "full" else tensors

    def _forward(self, items: list[_Pending]) -> np.ndarray:
        """One model call over ``items`` (all with or all without a camera id): (len, F)."""
        batch: dict[str, Any] = {
            m: torch.stack([it.tensors[i] for it in items]).to(self.device) for i, m in enumerate(MODALITIES)
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
        try:
            value = int(str(k).strip())
        except ValueError:
            raise RequestError(400, f"k={k!r}: must be an integer in 1..{MAX_K}") from None
        if not 1 <= value <= MAX_K:
            raise RequestError(400, f"k={value}: must be in 1..{MAX_K}")
        return value

    def check_camid(self, camid: Any) -> int | None:
        if camid is None or str(camid).strip() == "":
            return None
        if self.num_cameras is None:
            raise RequestError(400, f"camid={camid!r}: this model has no camera embedding; leave camid out")
        try:
            value = int(str(camid).strip())
        except ValueError:
            raise RequestError(
                400, f"camid={camid!r}: must be an integer in 0..{self.num_cameras - 1}"
            ) from None
        if not 0 <= value < self.num_cameras:
            raise RequestError(400, f"camid={value}: the model knows cameras 0..{self.num_cameras - 1}")
        return value

    def search(self, uploads: dict[str, bytes], k: Any = None, camid: Any = None) -> dict[str, Any]:
        """Rank the gallery for one query: ``uploads`` maps modality names to encoded images.

        Returns the JSON answer of ``POST /search``; raises :class:`RequestError` on bad input.
        """
        start = time.perf_counter()
        unknown = sorted(set(uploads) - set(MODALITIES))
        if unknown:
            raise RequestError(400, f"unknown image field(s) {unknown}: send {', '.join(MODALITIES)}")
        if not uploads:
            raise RequestError(400, f"no image: send at least one of the file fields {', '.join(MODALITIES)}")
        k = self.options.k if k is None else self.check_k(k)
        cam = self.check_camid(camid)
        images = dict(self._blanks)
        notes = []
        for m, data in uploads.items():
            images[m] = self.decode(m, data)
            note = tiny_image_note(images[m].size, self.img_size)
            if note is not None:
                notes.append(f"{m} {note}: the ranking carries little information")
        missing = parse_missing("".join(m[0] for m in MODALITIES if m not in uploads) or "full")
        feature = self.embed(self._tensors(images, missing), cam)
        # FAISS searches a read-only index safely from several threads.
        dist, rows = self.index.search(feature[None], k, self.cfg.test.distance)
        with self._queue_lock:
            self.requests += 1
        matches = []
        for d, j in zip(dist[0], rows[0]):
            if j < 0:  # an approximate index may return fewer than k rows
                continue
            j = int(j)
            matches.append(
                {
                    "rank": len(matches) + 1,
                    "row": j,
                    "distance": float(d),
                    "pid": int(self.index.pids[j]),
                    "camid": int(self.index.camids[j]),
                    "path": self.index.paths[j],
                    "images": {m: f"/gallery/{j}/{m}" for m in MODALITIES},
                }
            )
        identities: list[int] = []
        for m in matches:
            if m["pid"] not in identities:
                identities.append(m["pid"])
        return {
            "query": {"present": present_label(missing), "missing": missing_label(missing), "camid": cam},
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
        if modality not in MODALITIES:
            raise RequestError(404, f"unknown modality {modality!r}: one of {', '.join(MODALITIES)}")
        if not 0 <= row < len(self.index.paths):
            raise RequestError(404, f"no gallery row {row} (the index has {len(self.index.paths)})")
        try:
            files = triplet_paths(self.index.paths[row], self.dataset)
        except DatasetError:
            raise RequestError(
                404, f"gallery row {row}: its files are not in the {self.dataset} layout"
            ) from None
        resolved = [Path(f).resolve() for f in files]
        if not all(_inside(p, self.gallery_root) for p in resolved):
            raise RequestError(404, f"gallery row {row}: its files lie outside the gallery root")
        try:
            images = read_triplet(tuple(str(p) for p in resolved), self.dataset)
        except DatasetError:
            raise RequestError(404, f"gallery row {row}: its image files cannot be read") from None
        buf = io.BytesIO()
        images[MODALITIES.index(modality)].save(buf, format="PNG")
        return buf.getvalue()

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "checkpoint": self.checkpoint,
            "dataset": self.dataset,
            "device": str(self.device),
            "image_size": list(self.img_size),
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


# ---------------------------------------------------------------------- HTTP

# Where FastAPI found a parameter (the first item of an error's ``loc``), in the client's words.
_PLACES = {
    "path": "path parameter",
    "query": "query parameter",
    "body": "field",
    "header": "header",
    "cookie": "cookie",
}
# Pydantic's reasons for the error types a client meets most, said as the other refusals say them.
_REASONS = {
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "bool_parsing": "must be true or false",
}


def _validation_detail(errors: Any) -> str:
    """FastAPI's request-validation error list as one line naming each field and its value."""
    parts = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ())]
        place = _PLACES.get(loc[0], loc[0]) if loc else "request"
        name = ".".join(loc[1:]) if len(loc) > 1 else None
        what = f"{place} {name}" if name else place
        if err.get("type") == "missing":
            parts.append(f"{what} is missing")
            continue
        value = repr(err.get("input"))
        if len(value) > 60:  # a client's value is echoed, not a whole body
            value = value[:57] + "..."
        reason = _REASONS.get(err.get("type", ""), " ".join(str(err.get("msg", "is invalid")).split()))
        parts.append(f"{what}{'=' if name else ' '}{value}: {reason[:1].lower()}{reason[1:]}")
    return "; ".join(parts) or "the request is invalid"


def create_app(service: SearchService) -> Any:
    """The FastAPI application of ``service`` (see the module docstring for the routes)."""
    fastapi, _ = _web()
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException

    app = fastapi.FastAPI(title="mambapro search", version="1", docs_url=None, redoc_url=None)
    # Three images and two short fields, with room for the multipart framing.
    body_limit = 3 * service.options.max_upload_bytes + 64 * 1024

    def refuse(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    # Every route's parameter errors (a row that is not an integer, ...) as one line, not
    # FastAPI's list of pydantic records.
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, exc: Any) -> JSONResponse:
        return refuse(422, _validation_detail(exc.errors()))

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(_page(service))

    @app.get("/health")
    def health() -> dict:
        return service.health()

    # A plain Starlette route: the form is parsed here, under the limits above, rather than by
    # FastAPI's parameter validation (whose errors would name pydantic types, not our fields).
    async def search(request: Any) -> Any:
        if request.query_params:  # k and camid are form fields: a k in the URL would be ignored
            key = next(iter(request.query_params))
            return refuse(
                400,
                f"query parameter {key!r} is not read: send {', '.join((*MODALITIES, *_FIELDS))} "
                "as multipart form fields",
            )
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            return refuse(415, f"send multipart/form-data with the file fields {', '.join(MODALITIES)}")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > body_limit:
            return refuse(413, f"the request has {length} bytes, more than the limit of {body_limit}")
        try:
            async with request.form(max_files=len(MODALITIES), max_fields=len(_FIELDS)) as form:
                uploads: dict[str, bytes] = {}
                fields: dict[str, str] = {}
                for key, value in form.multi_items():
                    if key in uploads or key in fields:
                        return refuse(400, f"field {key!r} is given twice")
                    if isinstance(value, UploadFile):
                        if value.size is not None and value.size > service.options.max_upload_bytes:
                            return refuse(
                                413,
                                f"{key}: the upload has {value.size} bytes, more than the limit of "
                                f"{service.options.max_upload_bytes}",
                            )
                        data = await value.read(service.options.max_upload_bytes + 1)
                        if key not in MODALITIES:
                            return refuse(400, f"unknown file field {key!r}: send {', '.join(MODALITIES)}")
                        uploads[key] = data
                    elif key in _FIELDS:
                        fields[key] = value
                    elif key in MODALITIES:
                        return refuse(400, f"{key}: send the image as a file, not as a text field")
                    else:
                        return refuse(
                            400, f"unknown field {key!r}: send {', '.join((*MODALITIES, *_FIELDS))}"
                        )
        except MultiPartException as err:
            return refuse(400, f"malformed multipart body: {err.message}")
        try:
            answer = await run_in_threadpool(service.search, uploads, fields.get("k"), fields.get("camid"))
        except RequestError as err:
            return refuse(err.status, err.detail)
        return JSONResponse(answer)

    app.add_route("/search", search, methods=["POST"])

    @app.get("/gallery/{row}/{modality}")
    def gallery(row: int, modality: str) -> Response:
        try:
            data = service.gallery_image(row, modality)
        except RequestError as err:
            return refuse(err.status, err.detail)
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    return app


def _page(service: SearchService) -> str:
    """The upload page: one self-contained HTML document (inline style and script only)."""
    info = html.escape(
        f"{service.dataset}: {service.index.ntotal} gallery captures ({service.index.kind} index), "
        f"distance {service.cfg.test.distance}"
    )
    camid_hint = (
        f"0..{service.num_cameras - 1}, optional"
        if service.num_cameras is not None
        else "no camera embedding"
    )
    inputs = "\n".join(
        f'<label>{m} <input type="file" name="{m}" accept="image/*"></label>' for m in MODALITIES
    )
    config = json.dumps({"modalities": list(MODALITIES), "k": service.options.k, "maxK": MAX_K})
    return _PAGE.format(
        info=info,
        inputs=inputs,
        k=service.options.k,
        max_k=MAX_K,
        camid_hint=html.escape(camid_hint),
        camid_disabled="" if service.num_cameras is not None else " disabled",
        config=config,
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mambapro search</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
form {{ display: flex; flex-wrap: wrap; gap: 1em; align-items: end; margin-bottom: 1em; }}
label {{ display: flex; flex-direction: column; font-size: 0.9em; }}
#status {{ margin: 0.5em 0; color: #555; }}
#status.error {{ color: #b00; }}
#results {{ display: flex; flex-wrap: wrap; gap: 0.6em; }}
.match {{ border: 3px solid #ccc; padding: 4px; text-align: center; font-size: 0.8em; }}
.match img {{ display: block; height: 96px; margin: 2px auto; }}
.query {{ border-color: #2860dc; }}
</style></head>
<body>
<h1>mambapro search</h1>
<p>{info}. Upload any non-empty subset of the three modality images of one capture; the
missing ones are zero-filled as in <code>mambapro test --missing</code>.</p>
<form id="query">
{inputs}
<label>k <input type="number" name="k" min="1" max="{max_k}" value="{k}"></label>
<label>camid ({camid_hint}) <input type="number" name="camid" min="0"{camid_disabled}></label>
<button type="submit">Search</button>
</form>
<div id="status"></div>
<div id="results"></div>
<script>
const CONFIG = {config};
const form = document.getElementById("query");
const status = document.getElementById("status");
const results = document.getElementById("results");
function cell(title, images, cls) {{
  const div = document.createElement("div");
  div.className = "match " + cls;
  const caption = document.createElement("div");
  caption.textContent = title;
  div.appendChild(caption);
  for (const src of images) {{
    const img = document.createElement("img");
    if (src) {{ img.src = src; }} else {{ img.alt = "missing"; }}
    div.appendChild(img);
  }}
  return div;
}}
form.addEventListener("submit", async (event) => {{
  event.preventDefault();
  const data = new FormData();
  const query = [];
  for (const m of CONFIG.modalities) {{
    const file = form.elements[m].files[0];
    if (file) {{ data.append(m, file); query.push(URL.createObjectURL(file)); }} else {{ query.push(null); }}
  }}
  for (const key of ["k", "camid"]) {{
    const value = form.elements[key].value;
    if (value !== "" && !form.elements[key].disabled) {{ data.append(key, value); }}
  }}
  status.className = ""; status.textContent = "searching ...";
  results.replaceChildren();
  const response = await fetch("/search", {{ method: "POST", body: data }});
  const answer = await response.json();
  if (!response.ok) {{
    status.className = "error"; status.textContent = response.status + ": " + answer.detail; return;
  }}
  status.textContent = "query " + answer.query.present + ": " + answer.matches.length +
    " matches in " + answer.took_ms + " ms" +
    (answer.warnings.length ? " (warning: " + answer.warnings.join("; ") + ")" : "");
  results.appendChild(cell("query", query, "query"));
  for (const m of answer.matches) {{
    const title = m.rank + ": id " + m.pid + ", d " + m.distance.toPrecision(3);
    results.appendChild(cell(title, CONFIG.modalities.map((x) => m.images[x]), ""));
  }}
}});
</script>
</body></html>
"""


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
) -> None:
    """The ``serve`` command: load the checkpoint and the index, then serve until interrupted."""
    options = options or ServeOptions()
    _, uvicorn = _web()
    gallery_index = GalleryIndex.load(index)  # a bad index is refused before the model loads
    _check_port_free(options.host, options.port)
    model, cfg, _ = load_model(checkpoint, None, overrides)
    service = SearchService(model, cfg, gallery_index, gallery_root, options, checkpoint=checkpoint)
    app = create_app(service)
    if not options.is_loopback:
        print(
            f"warning: serving on {options.host}: other machines can reach this service, "
            "which has no authentication"
        )
    print(f"gallery: {gallery_index.summary()}; images from {service.gallery_root}")
    print(f"serving http://{options.host}:{options.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning" if quiet else "info")
