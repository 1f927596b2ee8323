"""The router's part of a trace: a CLIENT span per upstream attempt, events for the decisions.

Kept apart from the routing logic so that it reads as routing; every function here costs a
global read and nothing else when tracing is off (``dtecho.observability.tracing``).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from dtecho.errors import DtechoError
from dtecho.observability import semconv
from dtecho.observability import tracing as tr

if TYPE_CHECKING:
    from dtecho.router.router import Deployment

__all__ = ["attempt_span", "end_attempt_span", "event", "record_answer", "span_current"]

_OPERATIONS = {
    "chat/completions": semconv.OP_CHAT,
    "completions": semconv.OP_TEXT_COMPLETION,
    "embeddings": semconv.OP_EMBEDDINGS,
}
_EVENTS = {
    "retry": semconv.EVENT_RETRY,
    "retry_budget_exhausted": semconv.EVENT_RETRY,
    "hedge": semconv.EVENT_HEDGE,
    "hedge_refused": semconv.EVENT_HEDGE,
    "all_open": semconv.EVENT_BREAKER,
    "fallback": semconv.EVENT_FALLBACK,
}


def attempt_span(
    deployment: Deployment,
    endpoint: str,
    body: dict[str, Any],
    stream: bool,
    number: int,
    hedge: bool,
) -> trace.Span:
    """A started (not current) CLIENT span for one attempt; non-recording when untraced."""
    if tr.active() is None:
        return trace.INVALID_SPAN
    operation = _OPERATIONS.get(endpoint, endpoint)
    model = deployment.engine.upstream_model
    attributes = tr.genai_attributes(
        operation,
        model,
        semconv.PROVIDER_OPENAI,
        max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        stream=stream,
    )
    host, port = _address(deployment.spec.base_url)
    attributes[semconv.SERVER_ADDRESS] = host
    if port is not None:
        attributes[semconv.SERVER_PORT] = port
    attributes[semconv.DEPLOYMENT] = deployment.name
    attributes[semconv.ATTEMPT] = number
    if hedge:
        attributes[semconv.HEDGE] = True
    return tr.start_span(tr.genai_span_name(operation, model), attributes, kind=SpanKind.CLIENT)


@functools.lru_cache(maxsize=256)
def _address(base_url: str) -> tuple[str, int | None]:
    """A deployment's host and port, parsed once per base URL rather than per attempt."""
    url = urlsplit(base_url)
    return url.hostname or "", url.port


@contextlib.contextmanager
def span_current(span: trace.Span) -> Iterator[None]:
    """Make ``span`` current for the block (the upstream call, whose headers the engine fills
    from the current span), without ending it."""
    if not span.is_recording():
        yield
        return
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)


def end_attempt_span(span: trace.Span, error: BaseException | None = None) -> None:
    """End an attempt's span: failed for ``error`` (its status code too), cancelled for a
    hedge's loser or a client that left."""
    if not span.is_recording():
        return
    if isinstance(error, DtechoError):
        span.set_attribute(semconv.HTTP_RESPONSE_STATUS_CODE, error.status_code)
    tr.end_span(span, error)


def record_answer(span: trace.Span, body: bytes | None) -> None:
    """The GenAI response attributes (model, id, tokens, finish reasons) of a whole answer."""
    if not span.is_recording() or not body:
        return
    try:
        data = json.loads(body)
    except ValueError:
        return
    if not isinstance(data, dict):
        return
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    choices = data.get("choices") if isinstance(data.get("choices"), list) else []
    tr.record_genai_response(
        span,
        response_model=data.get("model") if isinstance(data.get("model"), str) else None,
        response_id=data.get("id") if isinstance(data.get("id"), str) else None,
        input_tokens=_count(usage.get("prompt_tokens")),
        output_tokens=_count(usage.get("completion_tokens")),
        finish_reasons=[c.get("finish_reason") for c in choices if isinstance(c, dict)] or None,
    )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def event(name: str, **details: Any) -> None:
    """A routing decision as an event on the current span: ``retry`` (attempt, error, delay),
    ``retry_budget_exhausted``, ``hedge`` / ``hedge_refused`` (deployment, delay), ``all_open``
    (every breaker open), ``fallback`` (model, failure class)."""
    if tr.active() is None:
        return
    attributes: dict[str, Any] = {"dtecho.decision": name}
    for key, value in details.items():
        if value is None:
            continue
        if isinstance(value, DtechoError):
            attributes[semconv.ERROR_TYPE] = value.code or str(value.status_code)
        elif key == "delay":
            attributes["dtecho.delay_seconds"] = float(value)
        elif key == "attempt":
            attributes[semconv.ATTEMPT] = int(value)
        elif key == "deployment":
            attributes[semconv.DEPLOYMENT] = str(value)
        else:
            attributes[f"dtecho.{key}"] = str(value)
    tr.add_event(_EVENTS[name], attributes)
