"""Admission control: a bound on the requests one worker serves at once.

Past ``max_in_flight`` a request is refused at once with 503, ``retry-after`` and an OpenAI
error body (``overloaded``), before any body is read or work is queued: a worker that queued
without bound would answer everything late instead of some things now. A request counts from
its arrival until its handler returns — for a stream, until its last chunk is sent or its
client is gone — and a failure releases its slot like a success.

Health, readiness, metrics and status paths are exempt, so that an overloaded worker is seen
as overloaded (and not as dead) by the probes and scrapers that would act on it.
"""

from __future__ import annotations

import json
from collections import Counter

from starlette.types import ASGIApp, Receive, Scope, Send

from dtecho.server.errors import error_body

__all__ = ["EXEMPT_PATHS", "OverloadMiddleware"]

EXEMPT_PATHS = frozenset({"/health/live", "/health/ready", "/metrics", "/status", "/"})


class OverloadMiddleware:
    """Refuse HTTP requests beyond ``max_in_flight`` at once (None: no bound)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_in_flight: int | None,
        retry_after_seconds: float = 1.0,
        metrics: object = None,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.refused: Counter[tuple[str, ...]] = Counter()
        self._retry_after = str(max(1, round(retry_after_seconds))).encode()
        watch = getattr(metrics, "watch_counters", None)
        if watch is not None:
            watch(
                "dtecho_overload_refusals",
                "Requests refused with 503 because max_in_flight requests were in flight.",
                (),
                lambda: dict(self.refused),
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_in_flight is None or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            self.refused[()] += 1
            await self._refuse(send)
            return
        self.in_flight += 1  # one event loop per worker: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _refuse(self, send: Send) -> None:
        body = error_body(
            f"The server is serving its limit of {self.max_in_flight} requests at once "
            "(work_limits.max_in_flight); retry after the time in retry-after.",
            "server_error",
            None,
            "overloaded",
        )
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"retry-after", self._retry_after),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
