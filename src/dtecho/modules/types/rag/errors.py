"""The module's errors as OpenAI error bodies: ``{"error": {message, type, param, code}}``.

The module is served inside the front door but answers for itself, so it maps errors the way
``dtecho.server.errors`` does (which it may not import): our exception classes by their own
status, validation errors as 400 naming the field, anything else as a 500 with no detail.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from dtecho.errors import DtechoError, InvalidRequest

__all__ = ["error_response", "field_path", "validation_error"]

logger = logging.getLogger("dtecho.modules.rag")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def field_path(loc: Sequence[int | str], prefix: str = "") -> str | None:
    """A validation location as a field path: ``messages[0].content``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def validation_error(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    """The first problem of ``exc`` as a 400 naming its field."""
    errors = exc.errors()
    if not errors:
        return InvalidRequest("Invalid request body.")
    first = errors[0]
    param = field_path(first.get("loc", ()), prefix)
    kind = first.get("type", "")
    if kind == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{param}'.", param=param, code="missing_required"
        )
    if kind == "extra_forbidden":
        return InvalidRequest(
            f"Unrecognized request argument supplied: '{param}'.", param=param,
            code="unknown_parameter",
        )  # fmt: skip
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    where = f"'{param}'" if param else "the request body"
    return InvalidRequest(f"Invalid value for {where}: {message}.", param=param)


def _body(message: str, error_type: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(exc: BaseException, request_id: str = "") -> JSONResponse:
    """The answer to ``exc``; unexpected exceptions are logged here and answered 500."""
    if isinstance(exc, ValidationError):
        exc = validation_error(exc)
    if isinstance(exc, DtechoError):
        return JSONResponse(
            _body(exc.message, exc.error_type, exc.param, exc.code),
            status_code=exc.status_code,
            headers=exc.headers or None,
        )
    if isinstance(exc, HTTPException):
        error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = _HTTP_CODES.get(exc.status_code, "invalid_request")
        return JSONResponse(
            _body(str(exc.detail), error_type, None, code),
            status_code=exc.status_code,
            headers=dict(exc.headers or {}) or None,
        )
    logger.exception("rag module: unhandled error (request id %s)", request_id or "-")
    where = f" (request id {request_id})" if request_id else ""
    return JSONResponse(
        _body(
            f"The server had an error while processing your request{where}.",
            "server_error", None, "internal_error",
        ),
        status_code=500,
    )  # fmt: skip
