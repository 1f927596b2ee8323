"""The outer ASGI layer every HTTP request passes through.

One pure-ASGI middleware (no ``BaseHTTPMiddleware``: it would buffer streams and cost a task
per request) that gives every request an id, enforces the body-size limit, adds security
headers, answers unhandled exceptions with a bare 500, and on the way out records metrics and
writes the access-log line.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dtecho.observability.metrics import HttpMetrics
from dtecho.server.errors import BodyTooLarge, error_body, internal_error_body

__all__ = ["SECURITY_HEADERS", "ServingMiddleware"]

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
UNMATCHED_ROUTE = "<unmatched>"

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
)

_log = structlog.get_logger("dtecho.access")
_errors = structlog.get_logger("dtecho.server")


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return value.decode("ascii") if _REQUEST_ID.match(value) else None
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class ServingMiddleware:
    """Request id, body limit, security headers, ``Server-Timing``, 500 fallback, metrics and
    access log."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started_at = time.perf_counter()
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        extra_headers = [(b"x-request-id", request_id.encode("ascii")), *SECURITY_HEADERS]
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                # Server-Timing (W3C): time in the app until the response starts, so a client
                # can tell server time from network and queueing time.
                elapsed_ms = (time.perf_counter() - started_at) * 1000.0
                timing = (b"server-timing", b"app;dur=%.3f" % elapsed_ms)
                message["headers"] = [*message.get("headers", ()), *extra_headers, timing]
            await send(message)

        limit = self.max_body_bytes
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        self.metrics.in_flight.inc()
        try:
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                await self._send_error(
                    send_with_headers,
                    413,
                    error_body(
                        f"Request body exceeds the limit of {limit} bytes.",
                        "invalid_request_error",
                        None,
                        "request_too_large",
                    ),
                )
            else:
                await self.app(scope, receive_limited, send_with_headers)
        except Exception:
            _errors.exception(
                "unhandled_exception",
                request_id=request_id,
                method=scope["method"],
                path=scope["path"],
            )
            if not response_started:
                await self._send_error(send_with_headers, 500, internal_error_body(request_id))
            # A stream already under way cannot change its status; the connection is closed.
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            duration = time.perf_counter() - started_at
            self.metrics.observe(template, scope["method"], status, duration)
            _log.info(
                "request",
                request_id=request_id,
                method=scope["method"],
                route=template,
                path=scope["path"],
                status=status,
                duration_ms=round(duration * 1000, 3),
            )

    @staticmethod
    async def _send_error(send: Send, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
