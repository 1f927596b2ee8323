"""Tracing through the real SDK to real OTLP receivers (HTTP/protobuf and gRPC) in the test."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dtecho.config import TracingSettings
from dtecho.observability import semconv
from dtecho.observability import tracing as tr
from dtecho.observability.propagation import extract, inject, parse_traceparent
from dtecho.observability.tracing import Tracing
from otlp_receiver import OTLPGRPCReceiver, OTLPHTTPReceiver, by_name
from support import free_port

CLIENT_TRACE = "0af7651916cd76f8ac3c6b3a1a0d6b5e"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


def scope(headers: list[tuple[bytes, bytes]] | None = None, method: str = "POST") -> dict:
    """An ASGI HTTP scope as uvicorn builds it."""
    return {
        "type": "http",
        "method": method,
        "path": "/v1/chat/completions",
        "scheme": "http",
        "headers": headers or [],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 54321),
    }


@pytest.fixture
def receiver() -> Iterator[OTLPHTTPReceiver]:
    with OTLPHTTPReceiver() as r:
        yield r


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_* variable from the machine running the tests leaks into these."""
    import os

    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


def build(clean_env: pytest.MonkeyPatch, **fields: Any) -> Tracing:
    tracing = Tracing.from_settings(TracingSettings(**fields))
    assert tracing is not None
    return tracing


def settled(tracing: Tracing) -> Any:
    """The export counts once nothing is queued or in flight any more. Shutdown returns at its
    bound even while the export thread is still winding down; this waits (never asserts on
    time) for the thread to book its last batch."""
    deadline = time.monotonic() + 30
    while True:
        stats = tracing.stats()
        assert stats is not None
        if (stats.queued == 0 and stats.in_flight == 0) or time.monotonic() > deadline:
            return stats
        time.sleep(0.01)


def flushed(tracing: Tracing, receiver: OTLPHTTPReceiver | OTLPGRPCReceiver, n: int) -> list:
    assert tracing.force_flush()
    return receiver.wait_for_spans(n)


def simulate_request(tracing: Tracing, headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """What the request-path wiring does, through the public API only; returns the headers an
    upstream call would carry."""
    upstream_headers: dict[str, str] = {}
    request = tracing.start_request(scope(headers))
    request.set_route("/v1/chat/completions")
    with tr.span(semconv.SPAN_AUTH, {semconv.AUTH_METHOD: "api_key"}):
        pass
    with tr.span(semconv.SPAN_CACHE_LOOKUP) as cache:
        cache.set_attribute(semconv.CACHE_TIER, "none")
        cache.set_attribute(semconv.CACHE_HIT, False)
    with tr.genai_span(semconv.OP_CHAT, "fast", semconv.PROVIDER_DTECHO) as generation:
        tr.add_event(semconv.EVENT_RETRY, {semconv.ATTEMPT: 1, semconv.ERROR_TYPE: "503"})
        with tr.upstream_span(
            semconv.OP_CHAT,
            "fast-upstream",
            "vllm",
            address="127.0.0.1",
            port=9999,
            deployment="a",
            attempt=2,
        ) as attempt:
            tr.inject(upstream_headers)
            tr.record_genai_response(attempt, response_model="fast-upstream-v1", input_tokens=7)
        tr.record_genai_response(
            generation,
            response_model="fast-upstream-v1",
            input_tokens=7,
            output_tokens=5,
            finish_reasons=["stop"],
            response_id="chatcmpl-1",
        )
    request.end(200)
    return upstream_headers


# --------------------------------------------------------------------------- export


def test_spans_arrive_over_http_with_attributes_and_parents(
    clean_env: pytest.MonkeyPatch, receiver: OTLPHTTPReceiver
) -> None:
    tracing = build(clean_env, enabled=True, endpoint=receiver.base_url)
    try:
        upstream_headers = simulate_request(tracing, [(b"traceparent", TRACEPARENT.encode())])
        spans = flushed(tracing, receiver, 5)
    finally:
        tracing.shutdown()
    named = by_name(spans)
    server = named["POST /v1/chat/completions"]
    assert server.kind == "SERVER"
    assert server.trace_id == CLIENT_TRACE
    assert server.parent_span_id == CLIENT_SPAN  # the client's span is the parent
    assert server.attributes[semconv.HTTP_REQUEST_METHOD] == "POST"
    assert server.attributes[semconv.HTTP_ROUTE] == "/v1/chat/completions"
    assert server.attributes[semconv.URL_PATH] == "/v1/chat/completions"
    assert server.attributes[semconv.HTTP_RESPONSE_STATUS_CODE] == 200
    assert server.resource["service.name"] == "dtecho"
    assert "service.version" in server.resource

    assert {s.trace_id for s in spans} == {CLIENT_TRACE}
    assert named[semconv.SPAN_AUTH].parent_span_id == server.span_id
    cache = named[semconv.SPAN_CACHE_LOOKUP]
    assert cache.parent_span_id == server.span_id
    assert cache.attributes == {semconv.CACHE_TIER: "none", semconv.CACHE_HIT: False}

    generation = named["chat fast"]
    assert generation.parent_span_id == server.span_id
    assert generation.kind == "INTERNAL"
    assert generation.attributes == {
        semconv.GEN_AI_OPERATION_NAME: "chat",
        semconv.GEN_AI_PROVIDER_NAME: "dtecho",
        semconv.GEN_AI_REQUEST_MODEL: "fast",
        semconv.GEN_AI_RESPONSE_MODEL: "fast-upstream-v1",
        semconv.GEN_AI_USAGE_INPUT_TOKENS: 7,
        semconv.GEN_AI_USAGE_OUTPUT_TOKENS: 5,
        semconv.GEN_AI_RESPONSE_FINISH_REASONS: ["stop"],
        semconv.GEN_AI_RESPONSE_ID: "chatcmpl-1",
    }
    assert generation.events == [(semconv.EVENT_RETRY, {"dtecho.attempt": 1, "error.type": "503"})]

    attempt = named["chat fast-upstream"]
    assert attempt.kind == "CLIENT"
    assert attempt.parent_span_id == generation.span_id
    assert attempt.attributes[semconv.SERVER_ADDRESS] == "127.0.0.1"
    assert attempt.attributes[semconv.SERVER_PORT] == 9999
    assert attempt.attributes[semconv.DEPLOYMENT] == "a"
    assert attempt.attributes[semconv.ATTEMPT] == 2
    assert attempt.attributes[semconv.GEN_AI_PROVIDER_NAME] == "vllm"
    # The upstream call carries the attempt's span as its parent: the trace continues there.
    assert upstream_headers == {"traceparent": f"00-{CLIENT_TRACE}-{attempt.span_id}-01"}


def test_spans_arrive_over_grpc_with_headers(clean_env: pytest.MonkeyPatch) -> None:
    with OTLPGRPCReceiver() as receiver:
        tracing = build(
            clean_env,
            enabled=True,
            exporter="otlp_grpc",
            endpoint=receiver.endpoint,
            headers={"x-collector-key": "sesame"},
        )
        try:
            simulate_request(tracing, [])
            spans = flushed(tracing, receiver, 5)
        finally:
            tracing.shutdown()
        assert receiver.request_headers[0]["x-collector-key"] == "sesame"
    server = by_name(spans)["POST /v1/chat/completions"]
    assert server.parent_span_id == ""  # no traceparent: a new root
    assert len({s.trace_id for s in spans}) == 1


def test_headers_setting_reaches_the_http_collector(
    clean_env: pytest.MonkeyPatch, receiver: OTLPHTTPReceiver
) -> None:
    tracing = build(
        clean_env, enabled=True, endpoint=receiver.endpoint, headers={"Authorization": "Bearer t"}
    )
    try:
        tracing.start_request(scope()).end(204)
        flushed(tracing, receiver, 1)
    finally:
        tracing.shutdown()
    assert receiver.request_headers[0]["authorization"] == "Bearer t"
    assert "Bearer t" not in repr(tracing.config)  # credentials stay out of reprs and logs


def test_status_errors_and_cancellation(
    clean_env: pytest.MonkeyPatch, receiver: OTLPHTTPReceiver
) -> None:
    tracing = build(clean_env, enabled=True, endpoint=receiver.base_url)
    try:
        request = tracing.start_request(scope())
        with pytest.raises(ValueError), tr.span("fails"):
            raise ValueError("boom")
        with pytest.raises(asyncio.CancelledError), tr.span("cancelled"):
            raise asyncio.CancelledError
        request.end(503)
        tracing.start_request(scope(method="GET")).end(404)
        tracing.start_request(scope(method="BREW")).end(405)
        spans = by_name(flushed(tracing, receiver, 5))
    finally:
        tracing.shutdown()
    assert spans["fails"].status_code == 2
    assert spans["fails"].attributes[semconv.ERROR_TYPE] == "ValueError"
    assert spans["fails"].events[0][0] == "exception"
    assert spans["cancelled"].status_code == 0  # a hedge's loser is not a failure
    assert spans["cancelled"].attributes[semconv.CANCELLED] is True
    assert spans["POST"].status_code == 2  # 5xx: the server failed
    assert spans["POST"].attributes[semconv.ERROR_TYPE] == "503"
    assert spans["GET"].status_code == 0  # 4xx is the client's error, not the server's
    assert spans["HTTP"].attributes[semconv.HTTP_REQUEST_METHOD] == "_OTHER"
    assert spans["HTTP"].attributes[semconv.HTTP_REQUEST_METHOD_ORIGINAL] == "BREW"


async def test_tasks_started_in_a_request_inherit_its_trace(
    clean_env: pytest.MonkeyPatch, receiver: OTLPHTTPReceiver
) -> None:
    tracing = build(clean_env, enabled=True, endpoint=receiver.base_url)

    async def attempt(n: int) -> None:
        with tr.span(f"attempt {n}"):
            await asyncio.sleep(0)

    try:
        request = tracing.start_request(scope())
        await asyncio.gather(*(asyncio.create_task(attempt(n)) for n in (1, 2)))
        request.end(200)
        spans = by_name(flushed(tracing, receiver, 3))
    finally:
        tracing.shutdown()
    server = spans["POST"]
    assert spans["attempt 1"].parent_span_id == server.span_id
    assert spans["attempt 2"].parent_span_id == server.span_id


def test_unsampled_client_trace_records_nothing_but_still_propagates(
    clean_env: pytest.MonkeyPatch, receiver: OTLPHTTPReceiver
) -> None:
    tracing = build(clean_env, enabled=True, endpoint=receiver.base_url)
    try:
        upstream: dict[str, str] = {}
        request = tracing.start_request(
            scope([(b"traceparent", TRACEPARENT[:-2].encode() + b"00")])
        )
        with tr.span("child") as child:
            assert not child.is_recording()
            tr.inject(upstream)
        request.end(200)
        tracing.start_request(scope()).end(200)  # a sampled root, to know the export ran
        spans = flushed(tracing, receiver, 1)
    finally:
        tracing.shutdown()
    assert [s.trace_id for s in spans] != [CLIENT_TRACE]
    assert len(spans) == 1
    parsed = parse_traceparent(upstream["traceparent"].encode())
    assert parsed is not None and f"{parsed.trace_id:032x}" == CLIENT_TRACE
    assert not parsed.trace_flags.sampled


# --------------------------------------------------------------------------- a dead collector


def test_dead_endpoint_drops_and_counts_spans_and_shutdown_is_bounded(
    clean_env: pytest.MonkeyPatch,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tracing = build(
        clean_env,
        enabled=True,
        endpoint=dead,
        max_queue_size=1000,
        max_export_batch_size=100,
        export_timeout_seconds=30,  # longer than the shutdown bound: shutdown must cut it
    )
    for _ in range(10_000):
        tracing.start_request(scope()).end(200)
    during = tracing.stats()
    assert during is not None
    assert during.exported == 0
    # The queue never holds more than its bound; the rest was dropped at once, and counted.
    assert during.queued <= 1000
    assert during.dropped_queue_full >= 10_000 - 1000 - 100 * 2
    tracing.shutdown(timeout=0.5)
    after = settled(tracing)
    assert after.exported == 0
    assert after.queued == 0
    assert after.in_flight == 0
    assert after.dropped == 10_000  # every span is accounted for: none reached a collector
    assert tracing.dropped() == 10_000
    tracing.start_request(scope()).end(200)  # after shutdown: dropped, never raised
    assert tracing.dropped() == 10_001


@pytest.mark.parametrize("path", ["/wrong/path", None])
def test_misconfigured_endpoint_never_raises_on_the_request_path(
    clean_env: pytest.MonkeyPatch, receiver: OTLPHTTPReceiver, path: str | None
) -> None:
    # A collector answering 404 (wrong path), or port 0 (no connection possible at all).
    endpoint = receiver.base_url + path if path else "http://127.0.0.1:0"
    tracing = build(clean_env, enabled=True, endpoint=endpoint)
    for _ in range(100):
        tracing.start_request(scope()).end(200)
    tracing.shutdown(timeout=0.5)
    stats = settled(tracing)
    assert stats.exported == 0 and stats.dropped == 100


# --------------------------------------------------------------------------- off


def test_off_by_default_builds_nothing(clean_env: pytest.MonkeyPatch) -> None:
    assert Tracing.from_settings(TracingSettings()) is None
    # Outside a traced request every helper is a no-op on the API's invalid span.
    assert tr.active() is None
    with tr.span("x") as s:
        assert s is tr.INVALID_SPAN
        assert not s.is_recording()
    assert tr.start_span("y") is tr.INVALID_SPAN
    tr.add_event("nothing")
    headers: dict[str, str] = {}
    tr.inject(headers)
    assert headers == {}
    assert tr.add_trace_ids(None, "info", {"event": "e"}) == {"event": "e"}


def test_exporter_none_records_nothing_but_gives_ids(clean_env: pytest.MonkeyPatch) -> None:
    tracing = build(clean_env, enabled=True, exporter="none")
    try:
        request = tracing.start_request(scope())
        assert not request.span.is_recording()
        assert request.trace_id != "0" * 32
        line = tr.add_trace_ids(None, "info", {})
        assert line["trace_id"] == request.trace_id
        request.end(200)
        assert tracing.stats() is None and tracing.dropped() == 0
    finally:
        tracing.shutdown()


# --------------------------------------------------------------------------- propagation


def test_extract_gives_the_client_trace_and_parent() -> None:
    ctx = extract([(b"traceparent", TRACEPARENT.encode()), (b"tracestate", b"vendor=abc, x@y=1")])
    assert ctx is not None
    from opentelemetry import trace

    span_context = trace.get_current_span(ctx).get_span_context()
    assert f"{span_context.trace_id:032x}" == CLIENT_TRACE
    assert f"{span_context.span_id:016x}" == CLIENT_SPAN
    assert span_context.is_remote and span_context.trace_flags.sampled
    assert dict(span_context.trace_state) == {"vendor": "abc", "x@y": "1"}
    # ... and injection writes the same values back out.
    out: dict[str, str] = {}
    inject(out, ctx)
    assert out == {"traceparent": TRACEPARENT, "tracestate": "vendor=abc,x@y=1"}


def test_inject_extract_round_trip_through_a_real_span(clean_env: pytest.MonkeyPatch) -> None:
    tracing = build(clean_env, enabled=True, exporter="none")
    try:
        request = tracing.start_request(scope([(b"traceparent", TRACEPARENT.encode())]))
        with tr.span("attempt") as attempt:
            headers: dict[str, str] = {}
            tr.inject(headers)
        request.end(200)
    finally:
        tracing.shutdown()
    ctx = extract([(k.encode(), v.encode()) for k, v in headers.items()])
    from opentelemetry import trace

    span_context = trace.get_current_span(ctx).get_span_context()
    assert span_context.trace_id == attempt.get_span_context().trace_id
    assert span_context.span_id == attempt.get_span_context().span_id


HOSTILE_TRACEPARENTS = [
    b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01" + b"-" + b"x" * 100_000,  # huge
    TRACEPARENT.encode() + b"-extra",  # version 00 must be exactly 55 characters
    TRACEPARENT.upper().encode(),  # uppercase hex
    b"00-" + b"0" * 32 + b"-" + CLIENT_SPAN.encode() + b"-01",  # all-zero trace id
    f"00-{CLIENT_TRACE}-{'0' * 16}-01".encode(),  # all-zero parent id
    f"ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01".encode(),  # version ff
    f"0-{CLIENT_TRACE}-{CLIENT_SPAN}-01".encode(),
    f"00_{CLIENT_TRACE}_{CLIENT_SPAN}_01".encode(),
    "00-ü".encode() + b"a" * 60,
    b"\x00\xff" * 40,
    b"",
]


@pytest.mark.parametrize("value", HOSTILE_TRACEPARENTS, ids=range(len(HOSTILE_TRACEPARENTS)))
def test_hostile_traceparent_starts_a_new_trace(
    clean_env: pytest.MonkeyPatch,
    receiver: OTLPHTTPReceiver,
    caplog: pytest.LogCaptureFixture,
    value: bytes,
) -> None:
    assert extract([(b"traceparent", value)]) is None
    tracing = build(clean_env, enabled=True, endpoint=receiver.base_url)
    try:
        tracing.start_request(scope([(b"traceparent", value)])).end(200)
        (span,) = flushed(tracing, receiver, 1)
    finally:
        tracing.shutdown()
    assert span.parent_span_id == ""
    assert span.trace_id != CLIENT_TRACE
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]


def test_a_later_version_may_be_longer() -> None:
    later = f"01-{CLIENT_TRACE}-{CLIENT_SPAN}-01-future".encode()
    assert extract([(b"traceparent", later)]) is not None


def test_two_traceparents_are_ignored() -> None:
    other = f"00-{'1' * 32}-{'2' * 16}-01".encode()
    assert extract([(b"traceparent", TRACEPARENT.encode()), (b"traceparent", other)]) is None


HOSTILE_TRACESTATES = [
    [b"a=" + b"x" * 600],  # longer than 512 characters
    [",".join(f"k{i}=v" for i in range(33)).encode()],  # more than 32 members
    [b"k=v", b",".join(b"m%d=v" % i for i in range(32))],  # 33 members over two headers
    [b"BAD KEY=v"],
    [b"k=v=w"],
    [b"k=v,k=w"],  # a key twice
    ["k=ü".encode()],
    [b"," * 200],
]


@pytest.mark.parametrize("values", HOSTILE_TRACESTATES, ids=range(len(HOSTILE_TRACESTATES)))
def test_hostile_tracestate_is_dropped_and_the_trace_kept(
    values: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    from opentelemetry import trace

    headers = [(b"traceparent", TRACEPARENT.encode())]
    headers += [(b"tracestate", v) for v in values]
    ctx = extract(headers)
    assert ctx is not None
    span_context = trace.get_current_span(ctx).get_span_context()
    assert f"{span_context.trace_id:032x}" == CLIENT_TRACE
    assert len(span_context.trace_state) == 0
    assert not caplog.records


def test_baggage_is_ignored() -> None:
    ctx = extract([(b"baggage", b"user=alice"), (b"traceparent", TRACEPARENT.encode())])
    out: dict[str, str] = {}
    inject(out, ctx)
    assert "baggage" not in out


# --------------------------------------------------------------------------- logs


def test_log_lines_carry_the_trace_and_span_ids(tmp_path: Any) -> None:
    """In a process of its own: logging configuration is global."""
    script = textwrap.dedent(
        """
        import logging
        from dtecho.config import TracingSettings
        from dtecho.observability.logging import configure_logging, get_logger
        from dtecho.observability.tracing import Tracing

        configure_logging("info")
        tracing = Tracing.from_settings(TracingSettings(enabled=True, exporter="none"))
        scope = {"type": "http", "method": "GET", "path": "/", "headers": [
            (b"traceparent", b"TRACEPARENT")]}
        request = tracing.start_request(scope)
        get_logger("test").info("inside")
        logging.getLogger("stdlib").warning("stdlib inside")
        request.end(200)
        get_logger("test").info("outside")
        """
    ).replace("TRACEPARENT", TRACEPARENT)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    lines = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    inside, stdlib, outside = lines
    assert inside["trace_id"] == CLIENT_TRACE
    assert len(inside["span_id"]) == 16 and inside["span_id"] != CLIENT_SPAN
    assert stdlib["trace_id"] == CLIENT_TRACE
    assert "trace_id" not in outside
