"""Real OTLP trace receivers for tests and benchmarks: HTTP/protobuf and gRPC.

``OTLPHTTPReceiver`` is a ``ThreadingHTTPServer`` accepting ``POST /v1/traces`` (protobuf,
optionally gzip), ``OTLPGRPCReceiver`` a grpcio ``TraceServiceServicer``; both decode each
``ExportTraceServiceRequest`` with ``opentelemetry-proto`` into :class:`ReceivedSpan` rows::

    with OTLPHTTPReceiver() as receiver:              # listens on 127.0.0.1:<free port>
        ... export to receiver.endpoint ...           # http://127.0.0.1:PORT/v1/traces
        spans = receiver.wait_for_spans(3)            # polls; raises after `timeout`
        trace = receiver.trace(spans[0].trace_id)

As a script (``python tests/otlp_receiver.py --port N``) it runs the HTTP receiver in the
foreground and also answers ``GET /stats`` with ``{"requests": n, "spans": n, "bytes": n}``, so a
benchmark can use it as a live collector in a process of its own.
"""

from __future__ import annotations

import argparse
import gzip
import json
import threading
import time
import zlib
from collections.abc import Iterable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

__all__ = ["OTLPGRPCReceiver", "OTLPHTTPReceiver", "ReceivedSpan", "decode_request"]

SPAN_KIND_NAMES = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER",
                   5: "CONSUMER"}  # fmt: skip


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived, ids in lowercase hex (``parent_span_id`` empty for a root)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: str  # SERVER, CLIENT, INTERNAL, ...
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int  # 0 unset, 1 ok, 2 error
    trace_state: str
    resource: dict[str, Any] = field(repr=False)
    scope: str = ""
    start_ns: int = 0
    end_ns: int = 0


def decode_request(payload: bytes) -> list[ReceivedSpan]:
    """The spans of one serialized ``ExportTraceServiceRequest``."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(payload)
    return _spans(request)


def _spans(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    out = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                out.append(
                    ReceivedSpan(
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        kind=SPAN_KIND_NAMES.get(s.kind, str(s.kind)),
                        attributes={kv.key: _value(kv.value) for kv in s.attributes},
                        events=[
                            (e.name, {kv.key: _value(kv.value) for kv in e.attributes})
                            for e in s.events
                        ],
                        status_code=s.status.code,
                        trace_state=s.trace_state,
                        resource=resource,
                        scope=scope_spans.scope.name,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                    )
                )
    return out


class _Store:
    """What a receiver got, shared with the threads that receive it."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.span_count = 0
        self.bytes = 0
        self.headers: list[dict[str, str]] = []

    def add(self, spans: list[ReceivedSpan], size: int, headers: dict[str, str]) -> None:
        with self.changed:
            self.requests += 1
            self.span_count += len(spans)
            self.bytes += size
            if self.keep:
                self.spans.extend(spans)
                self.headers.append(headers)
            self.changed.notify_all()


class _Receiver:
    _store: _Store

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far."""
        with self._store.lock:
            return list(self._store.spans)

    @property
    def request_headers(self) -> list[dict[str, str]]:
        """The (lowercased) headers or metadata of each export request."""
        with self._store.lock:
            return list(self._store.headers)

    @property
    def span_count(self) -> int:
        return self._store.span_count

    def wait_for_spans(self, count: int, timeout: float = 30.0) -> list[ReceivedSpan]:
        """Block until at least ``count`` spans arrived; raises ``AssertionError`` after
        ``timeout`` seconds (a test failure, never a timing assertion: a healthy run takes
        milliseconds)."""
        deadline = time.monotonic() + timeout
        with self._store.changed:
            while self._store.span_count < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self._store.span_count} spans received, {count} expected: "
                        f"{[s.name for s in self._store.spans]}"
                    )
                self._store.changed.wait(left)
            return list(self._store.spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """The spans of one trace received so far."""
        return [s for s in self.spans if s.trace_id == trace_id]


class _HTTPHandler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a line per export would drown the test output."""

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path != "/stats":
            self._reply(404, b"", "text/plain")
            return
        store = self.server.store
        with store.lock:
            stats = {"requests": store.requests, "spans": store.span_count, "bytes": store.bytes}
        self._reply(200, json.dumps(stats).encode(), "application/json")

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        payload = self.rfile.read(length)
        if self.path != "/v1/traces":
            self._reply(404, b"", "text/plain")
            return
        encoding = (self.headers.get("content-encoding") or "").lower()
        try:
            if encoding == "gzip":
                payload = gzip.decompress(payload)
            elif encoding == "deflate":
                payload = zlib.decompress(payload)
            convert = _count_only if self.server.count_only else decode_request
            spans = convert(payload)
        except Exception:  # a malformed export is the exporter's bug: answer as a collector
            self._reply(400, b"", "text/plain")
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.server.store.add(spans, length, headers)
        response = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self._reply(200, response, "application/x-protobuf")


def _count_only(payload: bytes) -> list[Any]:
    """Parse the export (protobuf, in C) and count its spans without converting them: a
    collector that costs the machine little, for benchmarks sharing its CPUs."""
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(payload)
    return [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    count_only = False

    def __init__(self, address: tuple[str, int], store: _Store) -> None:
        super().__init__(address, _HTTPHandler)
        self.store = store


class OTLPHTTPReceiver(_Receiver):
    """An OTLP/HTTP (protobuf) trace receiver on 127.0.0.1, served from a thread."""

    def __init__(self, port: int = 0, *, keep: bool = True) -> None:
        self._store = _Store(keep)
        self._server = _HTTPServer(("127.0.0.1", port), self._store)
        self.port = int(self._server.server_address[1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.endpoint = f"{self.base_url}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> OTLPHTTPReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OTLPHTTPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OTLPGRPCReceiver(_Receiver):
    """An OTLP/gRPC trace receiver (``TraceService/Export``) on 127.0.0.1."""

    def __init__(self, port: int = 0) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        store = self._store = _Store(keep=True)

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                metadata = {key.lower(): value for key, value in context.invocation_metadata()}
                store.add(_spans(request), request.ByteSize(), metadata)
                return trace_service_pb2.ExportTraceServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self) -> OTLPGRPCReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def __enter__(self) -> OTLPGRPCReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def by_name(spans: Iterable[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    """``{name: span}`` (the last of each name)."""
    return {s.name: s for s in spans}


def main() -> None:
    parser = argparse.ArgumentParser(description="an OTLP/HTTP trace receiver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--count-only", action="store_true", help="parse and count spans, do not convert them"
    )
    args = parser.parse_args()
    receiver = OTLPHTTPReceiver(args.port, keep=False)
    receiver._server.count_only = args.count_only
    print(f"listening on {receiver.endpoint}", flush=True)
    receiver._server.serve_forever()


if __name__ == "__main__":
    main()
