"""Every error the API answers with: bodies bounded in size (413), error bodies that are short,
valid JSON whatever the input held, and the documented shape of each status."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY, RequestBodyLimitMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

UPLOAD_PATHS = frozenset({"/teachers/upload"})
DETAIL_CHARS = 2000  # an error names the bad value; it never echoes a large input back
INPUT_CHARS = 100


class ErrorPublic(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    input: str | None = None


class ValidationErrorPublic(BaseModel):
    detail: str | list[FieldError]


_DESCRIPTIONS = {
    304: "The client's copy is current",
    400: "The body is not UTF-8 JSON",
    401: "Missing or wrong API token",
    403: "Forbidden",
    404: "Not found",
    409: "Conflicts with the current state",
    413: "The body is larger than allowed",
    415: "Not a supported media type",
    422: "A bad input; the detail names the field and the problem",
    503: "The queue or the storage is unavailable; the detail says what to retry",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route or router that answers ``codes`` besides its success."""
    documented: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"description": _DESCRIPTIONS[code]}
        if code != 304:
            entry["model"] = ValidationErrorPublic if code == 422 else ErrorPublic
        documented[code] = entry
    return documented


BODY = (400, 413)  # routes that read a JSON body


def _text(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, with lone surrogates escaped (no UTF-8 for them)."""
    if len(value) > limit:
        value = f"{value[:limit]}... ({len(value)} characters)"
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _preview(value: Any) -> str | None:
    if value is None:
        return None
    return _text(value if isinstance(value, str) else repr(value), INPUT_CHARS)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = [
        {
            "loc": [_text(str(p), INPUT_CHARS) if isinstance(p, str) else p for p in error["loc"]],
            "msg": _text(error["msg"], DETAIL_CHARS),
            "type": error["type"],
            "input": _preview(error.get("input")),
        }
        for error in exc.errors()[:20]
    ]
    return JSONResponse({"detail": detail}, status_code=422)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    headers = getattr(exc, "headers", None)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)
    detail = exc.detail
    if exc.status_code == 413 and detail == "Content Too Large":  # Starlette's body limit
        limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
        setting = "NST_MAX_UPLOAD_BYTES" if request.url.path in UPLOAD_PATHS else "NST_MAX_BODY_BYTES"
        detail = f"body: larger than the {limit} bytes allowed ({setting})"
    return JSONResponse({"detail": _text(str(detail), DETAIL_CHARS)}, exc.status_code, headers=headers)


class BodyLimits:
    """Starlette's body limit, per request: the upload limit for uploads, the body limit for the
    rest. Counted as the body arrives, so an oversized one is refused before it is all read."""

    def __init__(self, app: ASGIApp, *, body_bytes: int, upload_bytes: int) -> None:
        self.limits = {False: body_bytes, True: upload_bytes}
        self.body = RequestBodyLimitMiddleware(app, body_bytes)
        self.upload = RequestBodyLimitMiddleware(app, upload_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.body(scope, receive, send)
        upload = scope["path"] in UPLOAD_PATHS
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limits[upload]:
            # Refused before a byte is read, in our error shape (Starlette's own answer is text).
            scope[MAX_BODY_SIZE_SCOPE_KEY] = self.limits[upload]
            response = await _http_error(Request(scope, receive), HTTPException(413, "Content Too Large"))
            return await response(scope, receive, send)
        await (self.upload if upload else self.body)(scope, receive, send)


def install(app: FastAPI, *, body_bytes: int, upload_bytes: int) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(BodyLimits, body_bytes=body_bytes, upload_bytes=upload_bytes)
