"""One trace from a client through dtecho to an upstream dtecho, received by a real OTLP/HTTP
collector (``tests/otlp_receiver.py``, protobuf decoded with ``opentelemetry-proto``)."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
from openai import OpenAI

from otlp_receiver import OTLPHTTPReceiver, ReceivedSpan
from support import ServerProcess

pytestmark = pytest.mark.e2e

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"


def tracing(receiver: OTLPHTTPReceiver, service: str) -> dict[str, Any]:
    return {
        "enabled": True,
        "exporter": "otlp_http",
        "endpoint": receiver.endpoint,
        "service_name": service,
        "schedule_delay_seconds": 0.1,
    }


def only(spans: list[ReceivedSpan], **match: Any) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (
        match,
        [(s.name, s.kind, s.resource.get("service.name")) for s in spans],
    )
    return found[0]


def service(span: ReceivedSpan) -> str:
    return str(span.resource.get("service.name"))


def test_a_streamed_relayed_chat_is_one_trace_from_client_to_upstream(
    server_factory: Any,
) -> None:
    with OTLPHTTPReceiver() as receiver:
        upstream: ServerProcess = server_factory(
            {"tracing": tracing(receiver, "upstream")}, name="upstream"
        )
        relayed = {
            "name": "relayed",
            "engine": "openai",
            "base_url": f"{upstream.base_url}/v1",
            "upstream_model": "dtesn-echo",
        }
        front: ServerProcess = server_factory(
            {"tracing": tracing(receiver, "front"), "models": [relayed]}, name="front"
        )
        client = OpenAI(base_url=f"{front.base_url}/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model="relayed",
            messages=[{"role": "user", "content": "Trace me."}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={
                "traceparent": f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01",
                "tracestate": "vendor=value",
            },
        )
        chunks = list(stream)
        usage = chunks[-1].usage
        assert usage is not None and usage.completion_tokens > 0
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text

        # front: SERVER + CLIENT (the attempt); upstream: SERVER and its generation.
        receiver.wait_for_spans(3, timeout=30)
        front.stop()
        upstream.stop()  # shutdown flushes what is still queued
        spans = receiver.trace(CLIENT_TRACE_ID)

    front_server = only(spans, kind="SERVER", name="POST /v1/chat/completions",
                        parent_span_id=CLIENT_SPAN_ID)  # fmt: skip
    assert service(front_server) == "front"
    assert front_server.trace_state == "vendor=value"
    attributes = front_server.attributes
    assert attributes["http.route"] == "/v1/chat/completions"
    assert attributes["http.response.status_code"] == 200
    assert attributes["gen_ai.request.model"] == "relayed"
    assert attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens

    # Authentication and admission, each a child of the request's span.
    auth = only(spans, name="dtecho.auth", parent_span_id=front_server.span_id)
    assert auth.attributes["dtecho.principal"]
    limits = only(spans, name="dtecho.limits", parent_span_id=front_server.span_id)
    assert limits.attributes["dtecho.limits.decision"] == "admitted"

    attempt = only(spans, kind="CLIENT", parent_span_id=front_server.span_id)
    assert service(attempt) == "front"
    assert attempt.name == "chat dtesn-echo"
    assert attempt.attributes["gen_ai.operation.name"] == "chat"
    assert attempt.attributes["gen_ai.request.model"] == "dtesn-echo"
    assert attempt.attributes["gen_ai.request.stream"] is True
    assert attempt.attributes["gen_ai.request.max_tokens"] == 12
    assert attempt.attributes["server.port"] == int(upstream.base_url.rsplit(":", 1)[1])

    # The upstream's server span continues the trace under the attempt: traceparent went on.
    upstream_server = only(spans, kind="SERVER", parent_span_id=attempt.span_id)
    assert service(upstream_server) == "upstream"
    assert upstream_server.attributes["gen_ai.request.model"] == "dtesn-echo"
    assert upstream_server.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    # Its generation is a GenAI span of its own, with the same token counts.
    generation = only(spans, parent_span_id=upstream_server.span_id, name="chat dtesn-echo")
    assert generation.attributes["gen_ai.provider.name"] == "dtecho"
    assert generation.attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert generation.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert generation.attributes["gen_ai.response.finish_reasons"]
    assert all(s.trace_id == CLIENT_TRACE_ID for s in spans)

    # Every log line of the request carries its trace and span ids.
    lines = [json.loads(line) for line in front.logs().splitlines() if line.startswith("{")]
    access = [
        x for x in lines if x.get("event") == "request" and x.get("route") == "/v1/chat/completions"
    ]
    assert access and access[0]["trace_id"] == CLIENT_TRACE_ID
    assert access[0]["span_id"] == front_server.span_id
    assert os.environ.get("OTEL_SDK_DISABLED") != "true"


def test_dtesn_processing_and_the_cache_show_in_the_trace(server_factory: Any) -> None:
    body = {"input": "Membranes within membranes.", "membrane_depth": 3, "esn_size": 64,
            "integrator": "rk4"}  # fmt: skip
    with OTLPHTTPReceiver() as receiver:
        server: ServerProcess = server_factory({"tracing": tracing(receiver, "dtesn")})
        traces = []
        for attempt in range(2):  # computed, then answered from the cache
            trace_id = f"{attempt + 1:032x}"
            answer = httpx.post(
                f"{server.base_url}/v1/dtesn/process",
                json=body,
                headers={"traceparent": f"00-{trace_id}-{CLIENT_SPAN_ID}-01"},
                timeout=30,
            )
            assert answer.status_code == 200
            traces.append((trace_id, answer.headers["x-cache"], answer.json()))
        server.stop()
        computed = receiver.trace(traces[0][0])
        cached = receiver.trace(traces[1][0])

    assert traces[0][1] == "MISS" and traces[1][1].startswith("HIT")
    root = only(computed, kind="SERVER")
    lookup = only(computed, name="dtecho.cache.lookup", parent_span_id=root.span_id)
    assert lookup.attributes["dtecho.cache.hit"] is False
    process = only(computed, name="dtecho.dtesn.process", parent_span_id=lookup.span_id)
    result = traces[0][2]
    assert process.attributes["dtecho.dtesn.units"] == 64
    assert process.attributes["dtecho.dtesn.integrator"] == "rk4"
    assert process.attributes["dtecho.dtesn.steps"] == result["steps"]
    assert process.attributes["dtecho.dtesn.membranes"] == len(result["membranes"])
    hit_root = only(cached, kind="SERVER")
    assert hit_root.attributes["dtecho.cache.hit"] is True
    assert hit_root.attributes["dtecho.cache.tier"] == "l1"
    assert not [s for s in cached if s.name == "dtecho.dtesn.process"]
