"""The outer ASGI layer every HTTP request passes through.

One pure-ASGI middleware (no ``BaseHTTPMiddleware``: it would buffer streams and cost a task
per request) that gives every request an id, enforces the body-size limit, adds security
headers, answers unhandled exceptions with a bare 500, and on the way out records metrics and
writes the access-log line. It also sets the garbage collector up for serving once the app
has started (see :func:`_tuning_gc`).
"""

from __future__ import annotations

import gc
import json
import os
import re
import time
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


def _genai_attributes(request_span: Any, model: str, usage: tuple[int, int] | None) -> None:
    """The model a request asked for and the tokens it used, on its server span."""
    request_span.set_attribute("gen_ai.request.model", model)
    if usage is not None:
        request_span.set_attribute("gen_ai.usage.input_tokens", usage[0])
        request_span.set_attribute("gen_ai.usage.output_tokens", usage[1])


def _new_request_id() -> str:
    """A random UUID4 as 32 hex digits, as ``uuid.uuid4().hex`` (without its ~2 µs object)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


def _request_headers(scope: Scope) -> tuple[bytes | None, bytes | None]:
    """The first ``x-request-id`` and ``content-length`` values, in one pass over the headers."""
    request_id = length = None
    seen_id = seen_length = False
    for name, value in scope["headers"]:
        if name == b"x-request-id" and not seen_id:
            request_id, seen_id = value, True
        elif name == b"content-length" and not seen_length:
            length, seen_length = value, True
    return request_id, length


_YOUNG_THRESHOLD = 10_000  # tracked allocations between young collections (CPython: 700)


def _tuning_gc(send: Send) -> Send:
    """The lifespan's ``send``, setting the garbage collector up for serving once started.

    Everything the app allocated while starting (modules, settings, engines, pools) lives as
    long as the app, yet every full collection walked all of it again (about 80 ms each); and
    the more requests in flight, the more of their objects survive young collections into the
    older generations, so the more often those came. Measured per relayed request: about
    50 µs of collector time at c=8 and 240 µs (of about 600 µs of CPU) at c=128 — the whole
    fall of requests/s with concurrency. So, just before start-up completes, ``gc.freeze``
    moves the start-up heap out of the collector's sight (a constant-time move, no
    collection), and the young generation grows from 700 to 10,000 net allocations (objects
    of in-flight requests are then rarely scanned at all): collector time fell to none at
    c=8 and c=32 and about 10 µs at c=128. At shutdown both are undone, so that an embedding
    process (tests) collects what the stopped app leaves.
    """
    thresholds = gc.get_threshold()

    async def lifespan_send(message: Message) -> None:
        if message["type"] == "lifespan.startup.complete":
            gc.freeze()
            gc.set_threshold(max(thresholds[0], _YOUNG_THRESHOLD), *thresholds[1:])
        elif message["type"] == "lifespan.shutdown.complete":
            gc.set_threshold(*thresholds)
            gc.unfreeze()
        await send(message)

    return lifespan_send


class ServingMiddleware:
    """Request id, body limit, security headers, ``Server-Timing``, 500 fallback, metrics,
    the request's trace span and access log.

    ``llm_metrics`` (:class:`~dtecho.observability.llm.LlmMetrics`) is fed once per model
    request: one whose ``scope["state"]`` names a ``model`` when it is done (the security
    layer sets it, and ``usage`` — prompt and completion tokens — once the answer is sent).
    ``tracing`` (:class:`~dtecho.observability.tracing.Tracing`, None when off) opens the
    SERVER span every layer below adds to; the access-log line is written inside it.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: HttpMetrics,
        max_body_bytes: int,
        llm_metrics: Any = None,
        tracing: Any = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.llm_metrics = llm_metrics
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                send = _tuning_gc(send)
            await self.app(scope, receive, send)
            return

        started_at = time.perf_counter()
        incoming, length = _request_headers(scope)
        if incoming is not None and _REQUEST_ID.match(incoming):
            request_id = incoming.decode("ascii")
        else:
            request_id = _new_request_id()
        scope_state = scope.setdefault("state", {})
        scope_state["request_id"] = request_id
        status = 500
        response_started = False
        first_body_at: float | None = None  # for a stream, its time to first chunk
        streamed = False
        request_span = self.tracing.start_request(scope) if self.tracing is not None else None
        failure: BaseException | None = None

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started, first_body_at, streamed
            if first_body_at is None and message["type"] == "http.response.body":
                first_body_at = time.perf_counter()
                streamed = message.get("more_body", False)
            elif message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                # Server-Timing (W3C): time in the app until the response starts, so a client
                # can tell server time from network and queueing time.
                elapsed_ms = (time.perf_counter() - started_at) * 1000.0
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode("ascii")),
                    *SECURITY_HEADERS,
                    (b"server-timing", b"app;dur=%.3f" % elapsed_ms),
                ]
            await send(message)

        limit = self.max_body_bytes
        try:
            declared = int(length) if length is not None else None
        except ValueError:
            declared = None
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        # A declared length within the limit is the body's length (the HTTP/1.1 server frames
        # the body by it), so only bodies without one are counted as they arrive.
        app_receive = receive if declared is not None and declared >= 0 else receive_limited
        self.metrics.in_flight.inc()
        try:
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
                await self.app(scope, app_receive, send_with_headers)
        except Exception as exc:
            failure = exc
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
            model = scope_state.get("model")
            if model is not None and self.llm_metrics is not None:
                ttft = first_body_at - started_at if streamed and first_body_at else None
                self._observe_model(model, scope_state, status, duration, ttft, request_span)
            if request_span is not None:
                request_span.set_route(template)
                if model is not None:
                    _genai_attributes(request_span, model, scope_state.get("usage"))
            _log.info(
                "request",
                request_id=request_id,
                method=scope["method"],
                route=template,
                path=scope["path"],
                status=status,
                duration_ms=round(duration * 1000, 3),
            )
            if request_span is not None:
                request_span.end(status, error=failure)

    def _observe_model(
        self,
        model: str,
        scope_state: dict[str, Any],
        status: int,
        duration: float,
        ttft: float | None,
        request_span: Any,
    ) -> None:
        principal = scope_state.get("principal")
        usage = scope_state.get("usage") or (None, None)
        sampled = request_span is not None and request_span.span.is_recording()
        self.llm_metrics.observe(
            model,
            getattr(principal, "id", None),
            status,
            duration,
            ttft_seconds=ttft,
            prompt_tokens=usage[0],
            completion_tokens=usage[1],
            trace_id=request_span.trace_id if sampled else None,  # an exemplar to a kept trace
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
