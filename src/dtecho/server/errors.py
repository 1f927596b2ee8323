"""The one place where errors become HTTP responses with OpenAI error bodies.

Every error the server answers has the body ``{"error": {"message", "type", "param",
"code"}}``: our own :class:`~dtecho.errors.DtechoError` subclasses, the framework's 404/405,
request validation (400, never 422) and unhandled exceptions (500, see
:func:`internal_error_body`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from dtecho.errors import DtechoError

__all__ = [
    "BodyTooLarge",
    "MethodIndex",
    "error_body",
    "error_response",
    "install_error_handlers",
    "internal_error_body",
]

_STATUS_DEFAULTS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    406: ("invalid_request_error", "not_acceptable"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    503: ("server_error", "service_unavailable"),
}


class BodyTooLarge(StarletteHTTPException):
    """Raised while a body is read past the limit.

    It is an ``HTTPException`` on purpose: FastAPI re-raises those from body parsing
    untouched, whereas any other exception there would be turned into a generic 400.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Request body exceeds the limit of {limit} bytes.")


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error envelope."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    error_type: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSON response carrying the OpenAI error envelope; type and code default by status."""
    default_type, default_code = _STATUS_DEFAULTS.get(status, ("server_error", "internal_error"))
    body = error_body(message, error_type or default_type, param, code or default_code)
    return JSONResponse(body, status_code=status, headers=headers)


def internal_error_body(request_id: str) -> dict[str, Any]:
    """The body of a 500: no exception text, no stack trace, just the id to find the log line."""
    return error_body(
        f"The server had an error while processing your request (request id {request_id}).",
        "server_error",
        None,
        "internal_error",
    )


def format_param(loc: Sequence[int | str]) -> str | None:
    """Turn a validation location into an OpenAI-style field path: ``messages[0].content``."""
    parts = list(loc)
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "Invalid request", "type": "value_error"}
    kind = first.get("type", "")
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", "malformed JSON")
        return error_response(
            400, f"The request body is not valid JSON: {detail}.", code="invalid_json"
        )
    param = format_param(first.get("loc", ()))
    if kind == "missing" and param is None:
        return error_response(400, "A JSON request body is required.", code="missing_body")
    message = str(first.get("msg", "Invalid value")).removeprefix("Value error, ")
    if kind == "missing":
        return error_response(
            400, f"Missing required parameter: '{param}'.", param=param, code="missing_required"
        )
    if kind == "extra_forbidden":
        return error_response(
            400, f"Unrecognized request argument supplied: '{param}'.", param=param,
            code="unknown_parameter",
        )  # fmt: skip
    where = f"'{param}'" if param else "the request body"
    return error_response(
        400, f"Invalid value for {where}: {message}.", param=param, code="invalid_value"
    )


async def _handle_dtecho_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DtechoError)
    return error_response(
        exc.status_code,
        exc.message,
        error_type=exc.error_type,
        param=exc.param,
        code=exc.code,
        headers=exc.headers or None,
    )


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _validation_response(exc)


class MethodIndex:
    """The methods served at each path, from the app's routes.

    Starlette's router answers 405 with the methods of the first route whose path matched,
    so a path served by two routes (``GET`` and ``POST /v1/dtesn/models``) listed only one.
    """

    def __init__(self, routes: Sequence[Any]) -> None:
        self._routes = [
            (route.path_regex, frozenset(route.methods))
            for route in routes
            if getattr(route, "methods", None) and getattr(route, "path_regex", None)
        ]

    def allowed(self, path: str) -> list[str]:
        """The methods for ``path``, with OPTIONS; empty if no route serves it."""
        methods: set[str] = set()
        for regex, route_methods in self._routes:
            if regex.match(path):
                methods |= route_methods
        return sorted(methods | {"OPTIONS"}) if methods else []


async def _handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    headers = dict(exc.headers or {})
    if status == 404 and exc.detail == "Not Found":
        message = f"Unknown request URL: {request.method} {request.url.path}."
    elif status == 405:
        index: MethodIndex | None = getattr(request.app.state, "method_index", None)
        allowed = index.allowed(request.url.path) if index is not None else []
        if allowed:  # else Starlette's own (the first matching route's methods)
            headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
            headers["allow"] = ", ".join(allowed)
        if request.method == "OPTIONS":  # RFC 9110 §9.3.7: what the resource supports
            return Response(status_code=204, headers=headers)
        message = f"Method {request.method} is not allowed for {request.url.path}."
    else:
        message = str(exc.detail)
    return error_response(status, message, headers=headers or None)


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping on ``app``. Unhandled exceptions are answered by the middleware."""
    app.add_exception_handler(DtechoError, _handle_dtecho_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
