"""The small HTTP toolkit of the module's own ASGI app: routing, errors, negotiation.

The module is one ASGI app with five routes; a table of patterns is all the routing it needs,
and owning it keeps the answers for unknown paths and methods in the OpenAI error shape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dtecho.errors import DtechoError, InvalidRequest

__all__ = [
    "MethodNotAllowed",
    "Route",
    "UnknownPath",
    "error_response",
    "internal_error_response",
    "prefers_html",
    "query_int",
    "read_json",
    "resolve",
]

Handler = Callable[..., Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """``method`` on paths matching ``pattern`` (named groups become keyword arguments)."""

    method: str
    pattern: re.Pattern[str]
    handler: Handler


def resolve(routes: list[Route], method: str, path: str) -> tuple[Handler, dict[str, str]]:
    """The handler and path arguments for a request; 404 or 405 (with ``allow``) otherwise."""
    allowed: set[str] = set()
    for route in routes:
        match = route.pattern.fullmatch(path)
        if match is None:
            continue
        if route.method == method or (method == "HEAD" and route.method == "GET"):
            return route.handler, match.groupdict()
        allowed.add(route.method)
    if allowed:
        methods = sorted(allowed | ({"HEAD"} if "GET" in allowed else set()))
        raise MethodNotAllowed(
            f"Method {method} is not allowed for {path}.", headers={"allow": ", ".join(methods)}
        )
    raise UnknownPath(f"Unknown request URL: {method} {path}.")


class UnknownPath(DtechoError):
    """No route of the module serves the path (404)."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowed(DtechoError):
    """A route serves the path, not with this method (405 with ``allow``)."""

    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


def error_response(exc: DtechoError) -> JSONResponse:
    """The OpenAI error body of ``exc`` with its status and headers."""
    body = {"error": {"message": exc.message, "type": exc.error_type, "param": exc.param,
                      "code": exc.code}}  # fmt: skip
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers or None)


def internal_error_response(request_id: str | None) -> JSONResponse:
    """A 500 that says nothing of the exception (the log has it, under the request id)."""
    where = f" (request id {request_id})" if request_id else ""
    message = f"The server had an error while processing your request{where}."
    body = {"error": {"message": message, "type": "server_error", "param": None,
                      "code": "internal_error"}}  # fmt: skip
    return JSONResponse(body, status_code=500)


async def read_json(request: Request) -> Any:
    """The request body as JSON, or a 400 ``invalid_json``."""
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("A JSON request body is required.", code="missing_body")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc}.", code="invalid_json"
        ) from None


def _quality(accept: str, media: str) -> float:
    """The q-value ``accept`` gives ``media`` (its most specific matching range)."""
    kind = media.split("/", 1)[0]
    best, specificity = 0.0, -1
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        if not fields[0]:
            continue
        rank = {media: 2, f"{kind}/*": 1, "*/*": 0}.get(fields[0].lower())
        if rank is None or rank < specificity:
            continue
        q = 1.0
        for parameter in fields[1:]:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best, specificity = q, rank
    return best


def prefers_html(request: Request) -> bool:
    """Whether the caller asked for HTML over JSON (a browser does; ``*/*`` means JSON)."""
    accept = request.headers.get("accept", "")
    return bool(accept) and _quality(accept, "text/html") > _quality(accept, "application/json")


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high], or a 400 naming it."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be an integer.", param=name) from None
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low} and {high}.", param=name)
    return value
