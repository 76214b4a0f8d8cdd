"""The refusals of ``mambapro serve``'s requests, each an HTTP status and a one-line ``detail``:
:class:`RequestError`, the form fields ``k`` and ``camid`` parsed and range-checked, and FastAPI's
request-validation errors (a path parameter that does not parse, ...) said the same way, naming
each parameter and its value."""

from __future__ import annotations

from typing import Any

from mambapro.deploy.serve_options import MAX_K

__all__ = ["RequestError", "parse_camid", "parse_k", "validation_detail"]


class RequestError(Exception):
    """A request the service refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def parse_k(k: Any) -> int:
    """The form field ``k`` as an integer in 1..``MAX_K``, or :class:`RequestError` (400)."""
    try:
        value = int(str(k).strip())
    except ValueError:
        raise RequestError(400, f"k={k!r}: must be an integer in 1..{MAX_K}") from None
    if not 1 <= value <= MAX_K:
        raise RequestError(400, f"k={value}: must be in 1..{MAX_K}")
    return value


def parse_camid(camid: Any, num_cameras: int | None) -> int | None:
    """The form field ``camid`` as a camera id of a model with ``num_cameras`` cameras (None: no
    camera embedding), None when absent or blank, or :class:`RequestError` (400)."""
    if camid is None or str(camid).strip() == "":
        return None
    if num_cameras is None:
        raise RequestError(400, f"camid={camid!r}: this model has no camera embedding; leave camid out")
    try:
        value = int(str(camid).strip())
    except ValueError:
        raise RequestError(400, f"camid={camid!r}: must be an integer in 0..{num_cameras - 1}") from None
    if not 0 <= value < num_cameras:
        raise RequestError(400, f"camid={value}: the model knows cameras 0..{num_cameras - 1}")
    return value


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


def validation_detail(errors: Any) -> str:
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
