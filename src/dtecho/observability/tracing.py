"""OpenTelemetry traces of the request path, off by default (docs/tracing.md).

Two kinds of callers:

- **The ASGI middleware** holds the process's :class:`Tracing` (``None`` when tracing is off,
  the only check it makes) and opens one :class:`RequestSpan` per request with
  :meth:`Tracing.start_request`, which continues a client's W3C ``traceparent``.
- **Every layer below** (auth, limits, cache, batcher, router, engines) calls the module
  functions :func:`span`, :func:`start_span`, :func:`add_event` and :func:`inject` without
  being handed anything: the request span's context carries the :class:`Tracing` it came from.
  Outside a traced request they do nothing and return :data:`INVALID_SPAN` (whose methods are
  no-ops), at the cost of a global read.

No global tracer provider is installed: several :class:`Tracing` objects (tests, embedded
apps) can live in one process. The SDK and the exporters are imported only when a
:class:`Tracing` is built.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode

from dtecho.observability import semconv
from dtecho.observability.propagation import extract, inject

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from dtecho.config import TracingSettings
    from dtecho.observability._span_export import BoundedBatchSpanProcessor, ExportStats

__all__ = [
    "INVALID_SPAN",
    "RequestSpan",
    "SpanKind",
    "Tracing",
    "TracingConfig",
    "active",
    "add_event",
    "add_trace_ids",
    "current_span",
    "extract",
    "genai_attributes",
    "genai_span",
    "genai_span_name",
    "inject",
    "record_genai_response",
    "resolve_config",
    "semconv",
    "span",
    "start_span",
    "upstream_span",
]

_log = logging.getLogger("dtecho.tracing")

# The Tracing a request span came from travels in the OpenTelemetry context beside the span, so
# one attach/detach restores both, and a task created inside the request (hedged attempts)
# inherits both with the context.
_TRACING_KEY = otel_context.create_key("dtecho-tracing")
# True once any Tracing was built in this process: until then (tracing off, the default) the
# module functions return without even reading the context.
_any_tracing = False

Exporter = Literal["otlp_http", "otlp_grpc", "none"]


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class TracingConfig:
    """Tracing settings after precedence: explicit settings, then ``OTEL_*``, then defaults.

    ``None`` in ``endpoint``, ``headers`` or ``export_timeout`` means "not given explicitly":
    the SDK's exporter then reads its standard variables itself, exactly as it defines them.
    ``sampler`` is ``"ratio"`` (parent-based, ``sample_ratio``) or ``"env"`` (the SDK's
    ``OTEL_TRACES_SAMPLER``/``_ARG``).
    """

    enabled: bool
    exporter: Exporter
    endpoint: str | None
    headers: dict[str, str] | None = field(repr=False)  # may hold credentials
    service_name: str | None  # None: OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, else dtecho
    sampler: Literal["ratio", "env"]
    sample_ratio: float
    max_queue_size: int
    max_export_batch_size: int
    schedule_delay: float
    export_timeout: float | None
    shutdown_timeout: float
    notes: tuple[str, ...] = ()  # how each OTEL_* variable was read, for the start-up log


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _env_exporter(environ: Mapping[str, str], notes: list[str]) -> Exporter | None:
    """What OTEL_TRACES_EXPORTER (a comma-separated list) asks for; ``None`` if unset."""
    raw = environ.get("OTEL_TRACES_EXPORTER")
    if raw is None or not raw.strip():
        return None
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    for name in names:
        if name == "otlp":
            return _env_protocol(environ, notes)
        if name == "otlp_proto_http":
            return "otlp_http"
        if name == "otlp_proto_grpc":
            return "otlp_grpc"
    if names and all(n == "none" for n in names):
        return "none"
    notes.append(f"OTEL_TRACES_EXPORTER={raw!r}: no OTLP exporter named; using otlp")
    return _env_protocol(environ, notes)


def _env_protocol(environ: Mapping[str, str], notes: list[str]) -> Exporter:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"  # the specification's default (the Python SDK's "otlp" is gRPC)
    ).strip()
    if protocol == "grpc":
        return "otlp_grpc"
    if protocol != "http/protobuf":
        notes.append(f"OTLP protocol {protocol!r} is not supported; using http/protobuf")
    return "otlp_http"


def _env_int(environ: Mapping[str, str], name: str, default: int, notes: list[str]) -> int:
    raw = environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
        if value > 0:
            return value
    except ValueError:
        pass
    notes.append(f"{name}={raw!r} is not a positive integer; using {default}")
    return default


def resolve_config(
    settings: TracingSettings, environ: Mapping[str, str] | None = None
) -> TracingConfig:
    """Apply the precedence rules to ``settings`` and the ``OTEL_*`` variables in ``environ``
    (default ``os.environ``). A field of ``settings`` counts as explicit when it was given (in
    the config file or as ``DTECHO_TRACING__<FIELD>``), whatever its value.
    """
    env = os.environ if environ is None else environ
    given = settings.model_fields_set
    notes: list[str] = []
    env_exporter = _env_exporter(env, notes)

    if _truthy(env.get("OTEL_SDK_DISABLED")):
        enabled = False  # the specification's kill switch wins over everything
    elif "enabled" in given:
        enabled = settings.enabled
    else:
        enabled = env_exporter is not None and env_exporter != "none"

    exporter: Exporter = settings.exporter
    if "exporter" not in given and env_exporter is not None:
        exporter = env_exporter

    endpoint = settings.endpoint if "endpoint" in given else None
    if endpoint is not None and exporter == "otlp_http":
        # Like OTEL_EXPORTER_OTLP_ENDPOINT, a bare collector URL gets the signal's path.
        scheme, _, rest = endpoint.partition("://")
        host, _, path = rest.partition("/")
        if not path:
            endpoint = f"{scheme}://{host}/v1/traces"

    headers = None
    if "headers" in given and settings.headers is not None:
        headers = {name: value.get_secret_value() for name, value in settings.headers.items()}

    if "service_name" in given:
        service_name: str | None = settings.service_name
    elif env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        service_name = None
    else:
        service_name = settings.service_name

    sampler: Literal["ratio", "env"] = "ratio"
    if "sample_ratio" not in given and env.get("OTEL_TRACES_SAMPLER"):
        sampler = "env"

    def explicit_or_env(name: str, env_name: str) -> int:
        value = getattr(settings, name)
        return value if name in given else _env_int(env, env_name, value, notes)

    queue = explicit_or_env("max_queue_size", "OTEL_BSP_MAX_QUEUE_SIZE")
    batch = min(explicit_or_env("max_export_batch_size", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"), queue)
    delay = settings.schedule_delay_seconds
    if "schedule_delay_seconds" not in given and "OTEL_BSP_SCHEDULE_DELAY" in env:
        delay = _env_int(env, "OTEL_BSP_SCHEDULE_DELAY", int(delay * 1000), notes) / 1000

    return TracingConfig(
        enabled=enabled,
        exporter=exporter,
        endpoint=endpoint,
        headers=headers,
        service_name=service_name,
        sampler=sampler,
        sample_ratio=settings.sample_ratio,
        max_queue_size=queue,
        max_export_batch_size=batch,
        schedule_delay=delay,
        export_timeout=(
            settings.export_timeout_seconds if "export_timeout_seconds" in given else None
        ),
        shutdown_timeout=settings.shutdown_timeout_seconds,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- the process's tracing


class Tracing:
    """An SDK tracer provider exporting through a bounded queue; one per server process.

    Build it with :meth:`from_settings` (``None`` when tracing is off) and close it with
    :meth:`shutdown` at exit.
    """

    def __init__(
        self,
        provider: TracerProvider,
        processor: BoundedBatchSpanProcessor | None,
        config: TracingConfig,
    ) -> None:
        global _any_tracing
        self.provider = provider
        self.config = config
        self.tracer = provider.get_tracer("dtecho")
        self._processor = processor
        self._closed = False
        _any_tracing = True

    @classmethod
    def from_settings(
        cls, settings: TracingSettings, *, environ: Mapping[str, str] | None = None
    ) -> Tracing | None:
        """The tracing ``settings`` ask for, or ``None`` when it is off (nothing is built).

        Raises ``ImportError`` naming the extra to install when ``otlp_grpc`` is asked for
        without ``dtecho[otlp-grpc]``.
        """
        config = resolve_config(settings, environ)
        for note in config.notes:
            _log.warning(note)
        if not config.enabled:
            return None
        return cls.from_config(config)

    @classmethod
    def from_config(cls, config: TracingConfig) -> Tracing:
        """Build the provider, processor and exporter ``config`` describes (enabled or not)."""
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased

        from dtecho import __version__
        from dtecho.observability._span_export import BoundedBatchSpanProcessor

        attributes: dict[str, Any] = {SERVICE_VERSION: __version__}
        if config.service_name is not None:
            attributes[SERVICE_NAME] = config.service_name
        resource = Resource.create(attributes)  # merges OTEL_RESOURCE_ATTRIBUTES beneath ours
        # A sampler of None makes the SDK read OTEL_TRACES_SAMPLER(_ARG) itself.
        sampler: Any = ParentBased(TraceIdRatioBased(config.sample_ratio))
        if config.exporter == "none":
            # Nothing is exported: a new trace gets ids (for logs and upstreams) but is not
            # recorded; a client's sampled trace still is, so its sampled flag travels on.
            sampler = ParentBased(ALWAYS_OFF)
        if config.sampler == "env" and config.exporter != "none":
            sampler = None
        provider = TracerProvider(resource=resource, sampler=sampler)
        processor = None
        exporter = _build_exporter(config)
        if exporter is not None:
            processor = BoundedBatchSpanProcessor(
                exporter,
                max_queue_size=config.max_queue_size,
                max_export_batch_size=config.max_export_batch_size,
                schedule_delay=config.schedule_delay,
            )
            provider.add_span_processor(processor)
        return cls(provider, processor, config)

    # ----------------------------------------------------------------- request spans

    def start_request(self, scope: Mapping[str, Any]) -> RequestSpan:
        """Open the SERVER span of an HTTP request (an ASGI ``scope``) and make it current.

        The client's ``traceparent``/``tracestate`` (when valid) become its parent. The span is
        current, for every layer below and for log lines, until :meth:`RequestSpan.end`, which
        must run in the same task (the middleware's ``finally``).
        """
        headers = scope.get("headers") or ()
        parent = extract(headers)
        method = scope.get("method", "GET")
        attributes: dict[str, Any] = {semconv.URL_PATH: scope.get("path", "")}
        if method in _KNOWN_METHODS:
            attributes[semconv.HTTP_REQUEST_METHOD] = method
        else:
            attributes[semconv.HTTP_REQUEST_METHOD] = "_OTHER"
            attributes[semconv.HTTP_REQUEST_METHOD_ORIGINAL] = method[:32]
            method = "HTTP"
        scheme = scope.get("scheme")
        if scheme:
            attributes[semconv.URL_SCHEME] = scheme
        server = scope.get("server")
        if server and server[1] is not None:
            attributes[semconv.SERVER_ADDRESS] = server[0]
            attributes[semconv.SERVER_PORT] = server[1]
        client = scope.get("client")
        if client:
            attributes[semconv.CLIENT_ADDRESS] = client[0]
        request_span = self.tracer.start_span(
            method, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        ctx = trace.set_span_in_context(request_span, parent or otel_context.Context())
        ctx = otel_context.set_value(_TRACING_KEY, self, ctx)
        return RequestSpan(request_span, method, otel_context.attach(ctx))

    # ----------------------------------------------------------------- export state

    def stats(self) -> ExportStats | None:
        """Export counts (``None`` with the ``none`` exporter: nothing is exported)."""
        return self._processor.stats() if self._processor is not None else None

    def dropped(self) -> int:
        """Spans that never reached a collector (queue full, export failed, or left at
        shutdown): a counter, for the metrics endpoint."""
        stats = self.stats()
        return stats.dropped if stats is not None else 0

    def force_flush(self, timeout: float = 10.0) -> bool:
        """Export what is queued now (tests; not for the request path)."""
        if self._processor is None:
            return True
        return self._processor.force_flush(int(timeout * 1000))

    def shutdown(self, timeout: float | None = None) -> None:
        """Export what is left for at most ``timeout`` seconds (default: the configured
        ``shutdown_timeout_seconds``), then stop; a dead collector cannot make it wait longer.
        """
        if self._closed:
            return
        self._closed = True
        if self._processor is not None:
            self._processor.shutdown(self.config.shutdown_timeout if timeout is None else timeout)
        self.provider.shutdown()


_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)


def _build_exporter(config: TracingConfig) -> Any:
    if config.exporter == "none":
        return None
    if config.exporter == "otlp_grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ImportError(
                "tracing.exporter otlp_grpc needs the gRPC exporter: "
                "pip install 'dtecho[otlp-grpc]'"
            ) from exc
        return OTLPSpanExporter(
            endpoint=config.endpoint, headers=config.headers, timeout=config.export_timeout
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPSpanExporter,
    )

    return HTTPSpanExporter(
        endpoint=config.endpoint, headers=config.headers, timeout=config.export_timeout
    )


class RequestSpan:
    """The SERVER span of one request, current from :meth:`Tracing.start_request` to
    :meth:`end`."""

    __slots__ = ("_method", "_token", "span")

    def __init__(self, span: Span, method: str, token: object) -> None:
        self.span = span
        self._method = method
        self._token = token

    @property
    def trace_id(self) -> str:
        """The trace id in hex (32 characters), e.g. for a response header."""
        return f"{self.span.get_span_context().trace_id:032x}"

    def set_route(self, route: str) -> None:
        """The matched route template (``/v1/models/{model}``): ``http.route`` and the span
        name ``"{method} {route}"``. Never the raw path (unbounded cardinality)."""
        self.span.set_attribute(semconv.HTTP_ROUTE, route)
        self.span.update_name(f"{self._method} {route}")

    def set_attribute(self, key: str, value: Any) -> None:
        """Set one attribute on the server span (``semconv`` names)."""
        self.span.set_attribute(key, value)

    def end(self, status_code: int | None = None, error: BaseException | None = None) -> None:
        """Record the response status (5xx and ``error`` mark the span failed; 4xx do not,
        per the HTTP conventions for servers), end the span and restore the context."""
        span = self.span
        if status_code is not None:
            span.set_attribute(semconv.HTTP_RESPONSE_STATUS_CODE, status_code)
        if error is not None and not isinstance(error, asyncio.CancelledError):
            span.record_exception(error)
            span.set_attribute(semconv.ERROR_TYPE, type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
        elif status_code is not None and status_code >= 500:
            span.set_attribute(semconv.ERROR_TYPE, str(status_code))
            span.set_status(Status(StatusCode.ERROR))
        elif isinstance(error, asyncio.CancelledError):
            span.set_attribute(semconv.CANCELLED, True)
        span.end()
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None


# --------------------------------------------------------------------------- the layers below


def active() -> Tracing | None:
    """The :class:`Tracing` of the traced request being handled, or ``None``."""
    if not _any_tracing:
        return None
    return otel_context.get_value(_TRACING_KEY)  # type: ignore[return-value]


def current_span() -> Span:
    """The current span (:data:`INVALID_SPAN` outside a traced request)."""
    if not _any_tracing:
        return INVALID_SPAN
    return trace.get_current_span()


class _Scope:
    """``with span(...) as s``: the span is current inside the block and ends with it; an
    exception marks it failed (and propagates); a cancellation (a hedge's loser) marks it
    cancelled, not failed."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: object = None

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        otel_context.detach(self._token)  # type: ignore[arg-type]
        end_span(self._span, exc)
        return False


class _NoScope:
    __slots__ = ()

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        return False


_NO_SCOPE = _NoScope()


def end_span(span: Span, error: BaseException | None = None) -> None:
    """End a span from :func:`start_span`, marking it failed for ``error`` (or cancelled)."""
    if error is not None and span.is_recording():
        if isinstance(error, asyncio.CancelledError | GeneratorExit):
            span.set_attribute(semconv.CANCELLED, True)
        else:
            span.record_exception(error)
            span.set_attribute(semconv.ERROR_TYPE, type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, type(error).__qualname__))
    span.end()


def start_span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    links: Sequence[Link] | None = None,
) -> Span:
    """Start a child of the current span without making it current; end it with
    :func:`end_span`. For work that spans ``yield``\\ s (a stream's generation), where
    attaching a context across suspensions would be wrong. :data:`INVALID_SPAN` when untraced.
    """
    tracer = _recording_tracer()
    if tracer is None:
        return INVALID_SPAN
    return tracer.start_span(name, kind=kind, attributes=attributes, links=links)


def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    links: Sequence[Link] | None = None,
) -> _Scope | _NoScope:
    """``with span(semconv.SPAN_CACHE_LOOKUP) as s: ...``: a child of the current span, current
    inside the block. Outside a traced request it costs a global read and yields
    :data:`INVALID_SPAN` (``set_attribute`` on it does nothing; test ``s.is_recording()``
    before computing an expensive attribute)."""
    tracer = _recording_tracer()
    if tracer is None:
        return _NO_SCOPE
    return _Scope(tracer.start_span(name, kind=kind, attributes=attributes, links=links))


def _recording_tracer() -> trace.Tracer | None:
    """The tracer for a child of the current span, or ``None`` when the child would not be
    recorded: no traced request, or one its sampler left out (every standard sampler decides
    a child like its parent, so building the child would only cost time)."""
    if not _any_tracing:
        return None
    ctx = otel_context.get_current()
    tracing: Tracing | None = ctx.get(_TRACING_KEY)  # type: ignore[assignment]
    if tracing is None or not trace.get_current_span(ctx).is_recording():
        return None
    return tracing.tracer


def add_event(name: str, attributes: Mapping[str, Any] | None = None) -> None:
    """Add an event (a retry, a hedge, a breaker decision: ``semconv.EVENT_*``) to the current
    span."""
    if not _any_tracing:
        return
    current = trace.get_current_span()
    if current.is_recording():
        current.add_event(name, attributes)


# --------------------------------------------------------------------------- GenAI


def genai_span_name(operation: str, model: str | None) -> str:
    """The GenAI convention's span name for a model call: ``"{operation} {model}"``."""
    return f"{operation} {model}" if model else operation


def genai_attributes(
    operation: str,
    model: str | None,
    provider: str,
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    stream: bool | None = None,
) -> dict[str, Any]:
    """The request-side GenAI attributes of a model call (``None`` values left out)."""
    attributes: dict[str, Any] = {
        semconv.GEN_AI_OPERATION_NAME: operation,
        semconv.GEN_AI_PROVIDER_NAME: provider,
    }
    optional = (
        (semconv.GEN_AI_REQUEST_MODEL, model),
        (semconv.GEN_AI_REQUEST_MAX_TOKENS, max_tokens),
        (semconv.GEN_AI_REQUEST_TEMPERATURE, temperature),
        (semconv.GEN_AI_REQUEST_TOP_P, top_p),
        (semconv.GEN_AI_REQUEST_STREAM, stream),
    )
    for key, value in optional:
        if value is not None:
            attributes[key] = value
    return attributes


def genai_span(
    operation: str,
    model: str | None,
    provider: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
) -> _Scope | _NoScope:
    """``with genai_span(semconv.OP_CHAT, "dtesn-echo", semconv.PROVIDER_DTECHO) as s:`` — an
    engine's generation as a current child span with the GenAI request attributes; finish it
    with :func:`record_genai_response`."""
    if _recording_tracer() is None:
        return _NO_SCOPE
    merged = genai_attributes(operation, model, provider)
    if attributes:
        merged.update(attributes)
    return span(genai_span_name(operation, model), merged, kind=kind)


def upstream_span(
    operation: str,
    model: str | None,
    provider: str,
    *,
    address: str,
    port: int | None,
    deployment: str | None = None,
    attempt: int = 1,
    hedge: bool = False,
) -> _Scope | _NoScope:
    """One attempt at an upstream (CLIENT span, GenAI-named, with ``server.address``/``port``).
    Call :func:`inject` on the attempt's headers *inside* it, so the upstream's server span is
    this span's child."""
    if _recording_tracer() is None:
        return _NO_SCOPE
    attributes = genai_attributes(operation, model, provider)
    attributes[semconv.SERVER_ADDRESS] = address
    if port is not None:
        attributes[semconv.SERVER_PORT] = port
    if deployment is not None:
        attributes[semconv.DEPLOYMENT] = deployment
    attributes[semconv.ATTEMPT] = attempt
    if hedge:
        attributes[semconv.HEDGE] = True
    return span(genai_span_name(operation, model), attributes, kind=SpanKind.CLIENT)


def record_genai_response(
    span_: Span,
    *,
    response_model: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    finish_reasons: Iterable[str | None] | None = None,
    response_id: str | None = None,
) -> None:
    """The response-side GenAI attributes of a model call (``None`` values left out)."""
    if not span_.is_recording():
        return
    if response_model is not None:
        span_.set_attribute(semconv.GEN_AI_RESPONSE_MODEL, response_model)
    if input_tokens is not None:
        span_.set_attribute(semconv.GEN_AI_USAGE_INPUT_TOKENS, input_tokens)
    if output_tokens is not None:
        span_.set_attribute(semconv.GEN_AI_USAGE_OUTPUT_TOKENS, output_tokens)
    if finish_reasons is not None:
        reasons = [reason for reason in finish_reasons if reason]
        span_.set_attribute(semconv.GEN_AI_RESPONSE_FINISH_REASONS, reasons)
    if response_id is not None:
        span_.set_attribute(semconv.GEN_AI_RESPONSE_ID, response_id)


# --------------------------------------------------------------------------- logs


def add_trace_ids(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: ``trace_id`` and ``span_id`` (hex) of the current span, when there
    is one, on every log line."""
    if not _any_tracing:
        return event_dict
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict["trace_id"] = f"{span_context.trace_id:032x}"
        event_dict["span_id"] = f"{span_context.span_id:016x}"
    return event_dict
