"""The HTTP side of ``mambapro serve``: the FastAPI application of a search service.

:func:`create_app` puts a :class:`~mambapro.deploy.serve.SearchService` behind the routes that
``serve.py``'s docstring lists; the form is parsed here, under the service's limits, and every
refusal is a 4xx with a one-line ``detail``. fastapi and uvicorn come with the ``deploy`` extra
(:func:`web_modules` names it when they are missing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mambapro.deploy.page import upload_page
from mambapro.deploy.validation import RequestError, validation_detail
from mambapro.errors import UserError
from mambapro.extras import import_extra

if TYPE_CHECKING:
    from mambapro.deploy.serve import SearchService

__all__ = ["FORM_FIELDS", "ServeMissingError", "create_app", "web_modules"]

#: The form fields of ``POST /search`` besides the modality images.
FORM_FIELDS = ("k", "camid")


class ServeMissingError(UserError, ImportError):
    """fastapi or uvicorn is not installed."""


def web_modules() -> tuple[Any, Any]:
    """fastapi and uvicorn, or :class:`ServeMissingError` naming the extra to install."""
    fastapi, uvicorn = import_extra("fastapi", "uvicorn", error=ServeMissingError)
    return fastapi, uvicorn


def create_app(service: SearchService) -> Any:
    """The FastAPI application of ``service`` (see the module docstring for the routes)."""
    fastapi, _ = web_modules()
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException

    app = fastapi.FastAPI(title="mambapro search", version="1", docs_url=None, redoc_url=None)
    keys = service.modalities.keys  # the upload fields
    # One image per modality and two short fields, with room for the multipart framing.
    body_limit = len(keys) * service.options.max_upload_bytes + 64 * 1024

    def refuse(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    # Every route's parameter errors (a row that is not an integer, ...) as one line, not
    # FastAPI's list of pydantic records.
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, exc: Any) -> JSONResponse:
        return refuse(422, validation_detail(exc.errors()))

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        return HTMLResponse(upload_page(service))

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
                f"query parameter {key!r} is not read: send {', '.join((*keys, *FORM_FIELDS))} "
                "as multipart form fields",
            )
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            return refuse(415, f"send multipart/form-data with the file fields {', '.join(keys)}")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > body_limit:
            return refuse(413, f"the request has {length} bytes, more than the limit of {body_limit}")
        try:
            async with request.form(max_files=len(keys), max_fields=len(FORM_FIELDS)) as form:
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
                        if key not in keys:
                            return refuse(400, f"unknown file field {key!r}: send {', '.join(keys)}")
                        uploads[key] = data
                    elif key in FORM_FIELDS:
                        fields[key] = value
                    elif key in keys:
                        return refuse(400, f"{key}: send the image as a file, not as a text field")
                    else:
                        return refuse(400, f"unknown field {key!r}: send {', '.join((*keys, *FORM_FIELDS))}")
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
