"""The exception hierarchy every layer raises.

Services and engines raise these without knowing about HTTP; ``dtecho.server.errors`` maps
each class to a status and an OpenAI error body in one place. Each class carries the
OpenAI ``type`` and a default ``code``; ``param`` names the offending request field.
"""

from __future__ import annotations

import re

__all__ = [
    "AuthenticationFailed",
    "Conflict",
    "DeadlineExceeded",
    "DtechoError",
    "EngineUnavailable",
    "InvalidRequest",
    "ModelNotFound",
    "NotAcceptable",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "RequestTooCostly",
    "UpstreamError",
]


class DtechoError(Exception):
    """Base class: an error with an HTTP status and an OpenAI-shaped description."""

    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}


class InvalidRequest(DtechoError):
    """The request is malformed or a parameter is out of range (400)."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_value"


class RequestTooCostly(InvalidRequest):
    """The request's estimated work exceeds the configured budget (400, ``request_too_costly``).

    A 400 rather than a 413: the body is small, its *settings* ask for too much work, as
    OpenAI's ``context_length_exceeded`` is a 400. ``limit`` and ``estimate`` are in the
    budget's units (reference seconds, ``dtecho.services.budget``); ``setting`` names the
    limit that refused it.
    """

    default_code = "request_too_costly"

    def __init__(
        self, message: str, *, limit: float, estimate: float, setting: str, **kwargs: object
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.limit, self.estimate, self.setting = limit, estimate, setting

    def renamed(self, names: dict[str, str]) -> RequestTooCostly:
        """The same refusal with ``param`` (and the fields in the message) spelled as another
        request names them (the DTESN chat route's ``dtesn_esn_size``)."""
        message = self.message
        for old, new in names.items():
            message = re.sub(rf"\b{re.escape(old)}\b", new, message)
        param = names.get(self.param, self.param) if self.param else None
        return RequestTooCostly(message, param=param, limit=self.limit,
                                estimate=self.estimate, setting=self.setting)  # fmt: skip


class NotFound(DtechoError):
    """The addressed resource does not exist (404)."""

    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    """The requested model is not served here (404, ``model_not_found``)."""

    default_code = "model_not_found"

    def __init__(self, model: str, *, param: str | None = "model") -> None:
        super().__init__(f"The model '{model}' does not exist.", param=param)


class AuthenticationFailed(DtechoError):
    """Missing, malformed, expired or revoked credentials (401 with ``WWW-Authenticate``)."""

    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"

    def __init__(self, message: str, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.headers.setdefault("www-authenticate", 'Bearer realm="dtecho"')


class PermissionDenied(DtechoError):
    """A valid principal asked for a model, project or operation it may not use (403)."""

    status_code = 403
    error_type = "permission_error"
    default_code = "forbidden"


class RateLimited(DtechoError):
    """A request, token, concurrency or budget limit refused the request (429)."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class Conflict(DtechoError):
    """The resource is not in a state that allows the request (409)."""

    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class NotAcceptable(DtechoError):
    """No representation matches the request's ``Accept`` header (406)."""

    status_code = 406
    error_type = "invalid_request_error"
    default_code = "not_acceptable"


class PayloadTooLarge(DtechoError):
    """The request body or one of its inputs exceeds a configured limit (413)."""

    status_code = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class Overloaded(DtechoError):
    """Capacity is exhausted; the client should retry later (503 with ``retry-after``)."""

    status_code = 503
    error_type = "server_error"
    default_code = "overloaded"

    def __init__(self, message: str, *, retry_after_seconds: float = 1.0, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.headers.setdefault("retry-after", str(max(1, round(retry_after_seconds))))


class EngineUnavailable(DtechoError):
    """An engine is not loaded or not healthy (503)."""

    status_code = 503
    error_type = "server_error"
    default_code = "engine_unavailable"


class DeadlineExceeded(DtechoError):
    """The request's wall-clock deadline passed before its answer started (504)."""

    status_code = 504
    error_type = "server_error"
    default_code = "deadline_exceeded"


class UpstreamError(DtechoError):
    """An upstream model server failed or could not be reached (502 unless it said otherwise)."""

    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_error"

    def __init__(self, message: str, *, status_code: int | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        if status_code is not None:
            self.status_code = status_code
