"""W3C Trace Context in and out: ``traceparent``/``tracestate`` from a client, onto upstream calls.

The parser is ours rather than the SDK propagator's for two reasons: it reads the ASGI scope's
raw ``(bytes, bytes)`` headers without building a carrier, and it treats every header as hostile
input (bounded lengths, bounded member counts, no log line per bad value, no exception), so a
client can neither spam the log nor make parsing expensive. Baggage is not propagated.

Rules (https://www.w3.org/TR/trace-context/):

- ``traceparent``: ``version-traceid-parentid-flags`` in lowercase hex; version ``ff``, an
  all-zero trace or parent id, or a version-00 value of any length but 55 is invalid; a later
  version may be longer (up to :data:`MAX_TRACEPARENT_LENGTH`) if a ``-`` follows its first 55
  characters. Invalid, or sent more than once: the request starts a new trace.
- ``tracestate``: kept only beside a valid ``traceparent``; several headers are joined with
  commas; longer than :data:`MAX_TRACESTATE_LENGTH` characters, more than
  :data:`MAX_TRACESTATE_MEMBERS` members, a malformed member or a repeated key: dropped whole
  (the trace itself continues).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

__all__ = [
    "MAX_TRACEPARENT_LENGTH",
    "MAX_TRACESTATE_LENGTH",
    "MAX_TRACESTATE_MEMBERS",
    "extract",
    "format_traceparent",
    "inject",
    "parse_traceparent",
]

MAX_TRACEPARENT_LENGTH = 256  # version 00 is exactly 55; later versions may append fields
MAX_TRACESTATE_LENGTH = 512  # W3C: propagate at least 512 characters; longer may be dropped
MAX_TRACESTATE_MEMBERS = 32  # W3C's limit on list members

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# A list member: key (simple or multi-tenant "tenant@system") "=" value, as the W3C grammar.
_TRACESTATE_MEMBER = re.compile(
    r"([a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])"
)
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16


def parse_traceparent(value: bytes) -> SpanContext | None:
    """The remote span context a ``traceparent`` value names, or ``None`` if it is invalid."""
    value = value.strip(b" \t")
    if len(value) < 55 or len(value) > MAX_TRACEPARENT_LENGTH:
        return None
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == b"ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if len(value) > 55 and (version == b"00" or value[55:56] != b"-"):
        return None
    return SpanContext(
        trace_id=int(trace_id, 16),
        span_id=int(span_id, 16),
        is_remote=True,
        # Only the sampled bit is defined; the others are not propagated further.
        trace_flags=TraceFlags(int(flags, 16) & TraceFlags.SAMPLED),
    )


def _parse_tracestate(values: list[bytes]) -> TraceState | None:
    if not values:
        return None
    total = sum(len(v) for v in values) + len(values) - 1
    if total > MAX_TRACESTATE_LENGTH:
        return None
    try:
        text = b",".join(values).decode("ascii")
    except UnicodeDecodeError:
        return None
    members = text.split(",")
    if len(members) > MAX_TRACESTATE_MEMBERS * 2:  # empty members are allowed, but not unbounded
        return None
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for member in members:
        member = member.strip(" \t")
        if not member:
            continue
        match = _TRACESTATE_MEMBER.fullmatch(member)
        if match is None or match.group(1) in seen:
            return None
        seen.add(match.group(1))
        pairs.append((match.group(1), match.group(2)))
    if len(pairs) > MAX_TRACESTATE_MEMBERS:
        return None
    return TraceState(pairs) if pairs else None


def extract(headers: Iterable[tuple[bytes, bytes]]) -> Context | None:
    """The parent context a request's headers carry (an ASGI scope's ``headers``), or ``None``
    when they carry no valid ``traceparent`` (the request then starts a new trace).

    Header names must be lowercase bytes, as ASGI servers deliver them.
    """
    parent: list[bytes] = []
    state: list[bytes] = []
    for name, value in headers:
        if name == b"traceparent":
            parent.append(value)
        elif name == b"tracestate":
            state.append(value)
    if len(parent) != 1:
        return None
    span_context = parse_traceparent(parent[0])
    if span_context is None:
        return None
    trace_state = _parse_tracestate(state)
    if trace_state is not None:
        span_context = SpanContext(
            trace_id=span_context.trace_id,
            span_id=span_context.span_id,
            is_remote=True,
            trace_flags=span_context.trace_flags,
            trace_state=trace_state,
        )
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def format_traceparent(span_context: SpanContext) -> str:
    """The version-00 ``traceparent`` value naming ``span_context``."""
    ids = f"{span_context.trace_id:032x}-{span_context.span_id:016x}"
    return f"00-{ids}-{span_context.trace_flags:02x}"


def inject(headers: MutableMapping[str, str], context: Context | None = None) -> None:
    """Write the current span's ``traceparent`` (and ``tracestate``) into ``headers``, the
    header dict of an outgoing request (aiohttp, httpx), so the trace continues upstream.

    ``context`` defaults to the current one. No valid span there: ``headers`` is left as is.
    Call it inside the upstream attempt's span so the upstream's spans are its children.
    """
    span_context = trace.get_current_span(context).get_span_context()
    if not span_context.is_valid:
        return
    headers["traceparent"] = format_traceparent(span_context)
    if span_context.trace_state:
        headers["tracestate"] = span_context.trace_state.to_header()
