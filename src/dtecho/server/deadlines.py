"""Wall-clock deadlines for every request.

A request whose answer has not started within its deadline is cancelled and answered with
504 and an OpenAI error body (``deadline_exceeded``): ``deadline_seconds`` for most routes,
``model_deadline_seconds`` for the OpenAI model routes (a relayed completion may take as long
as its upstream's own timeouts allow, 600 s by default). Once an answer has started only
``stream_deadline_seconds`` applies, and only to ``text/event-stream`` answers: a stream past
it ends with an ``error`` event carrying the same body, never by hanging. Without it a stream
is bounded by its own work — a DTESN stream by its cost budget, a relayed one by its
upstream's between-token timeout, a model's event stream by its training job.

Cancelling the handler stops what it awaits. Work in worker threads cannot be interrupted, so
the deadline is also put in a context variable (:mod:`dtecho.services.deadline`) that DTESN
processing checks between chunks; the rest (a readout's solve) is bounded by the cost budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dtecho.protocol.sse import sse_event
from dtecho.server.admission import MODEL_PATHS
from dtecho.server.errors import error_body
from dtecho.services import deadline

__all__ = ["DEADLINE_OVERRIDE", "DeadlineMiddleware"]

DEADLINE_OVERRIDE = "deadline_seconds"  # scope["state"] key: this request's own deadline

_EVENT_STREAM = b"text/event-stream"


class _Progress:
    """What the handler has sent so far."""

    __slots__ = ("ended", "started", "streaming")

    def __init__(self) -> None:
        self.started = self.streaming = self.ended = False


class DeadlineMiddleware:
    """Cancel and answer (504, or an SSE ``error`` event) requests past their deadline."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        deadline_seconds: float | None,
        model_deadline_seconds: float | None,
        stream_deadline_seconds: float | None,
        model_paths: frozenset[str] = MODEL_PATHS,
    ) -> None:
        self.app = app
        self.deadline_seconds = deadline_seconds
        self.model_deadline_seconds = model_deadline_seconds
        self.stream_deadline_seconds = stream_deadline_seconds
        self.model_paths = model_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        model = scope["path"] in self.model_paths
        first = self.model_deadline_seconds if model else self.deadline_seconds
        # A project's manifest may set its own (routes.timeout_seconds, by the front door).
        override = scope.get("state", {}).get(DEADLINE_OVERRIDE)
        if override is not None:
            first = override
        stream_limit = self.stream_deadline_seconds
        if first is None and stream_limit is None:
            await self.app(scope, receive, send)
            return
        started_at = asyncio.get_running_loop().time()
        timeout = asyncio.timeout(None if first is None else started_at + first)
        progress = _Progress()

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                progress.started = True
                progress.streaming = any(
                    name == b"content-type" and value.startswith(_EVENT_STREAM)
                    for name, value in message.get("headers", ())
                )
                # The answer has started: only a stream's own deadline applies from here.
                if progress.streaming and stream_limit is not None:
                    timeout.reschedule(started_at + stream_limit)
                else:
                    timeout.reschedule(None)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                progress.ended = True
            await send(message)

        token = deadline.set_deadline(first)
        try:
            async with timeout:
                await self.app(scope, receive, watched_send)
        except TimeoutError:
            if not timeout.expired():
                raise  # someone else's timeout, not this deadline
            setting = (
                "routes.timeout_seconds of the project's manifest"
                if override is not None
                else "work_limits.model_deadline_seconds"
                if model
                else "work_limits.deadline_seconds"
            )
            if not progress.started:
                await self._answer_504(send, first, setting)
            elif progress.streaming and not progress.ended:
                await self._end_stream(send, stream_limit)
        finally:
            deadline.reset_deadline(token)

    @staticmethod
    async def _answer_504(send: Send, seconds: float | None, setting: str) -> None:
        body = error_body(
            f"The request did not start its answer within its deadline of {seconds:g} s "
            f"({setting}).",
            "server_error",
            None,
            "deadline_exceeded",
        )
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 504,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    async def _end_stream(send: Send, seconds: float | None) -> None:
        body = error_body(
            f"The stream ran past its deadline of {seconds:g} s "
            "(work_limits.stream_deadline_seconds) and was ended.",
            "server_error",
            None,
            "deadline_exceeded",
        )
        with contextlib.suppress(OSError):  # the client may be gone too
            await send({"type": "http.response.body", "body": sse_event("error", body)})
