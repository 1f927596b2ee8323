"""Which of the tracing settings and the standard OTEL_* variables wins (docs/tracing.md)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dtecho.config import ConfigError, TracingSettings, load_settings
from dtecho.observability import tracing as tr
from dtecho.observability.tracing import Tracing, resolve_config
from otlp_receiver import OTLPHTTPReceiver


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("OTEL_", "DTECHO_")):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def receiver() -> Iterator[OTLPHTTPReceiver]:
    with OTLPHTTPReceiver() as r:
        yield r


SCOPE = {"type": "http", "method": "GET", "path": "/health/live", "headers": []}


def one_request(tracing: Tracing, receiver: OTLPHTTPReceiver) -> dict:
    tracing.start_request(SCOPE).end(200)
    assert tracing.force_flush()
    (span,) = receiver.wait_for_spans(1)
    return span.resource


def test_defaults_are_off_with_http_export() -> None:
    config = resolve_config(TracingSettings(), {})
    assert not config.enabled
    assert config.exporter == "otlp_http"
    assert config.endpoint is None and config.headers is None and config.export_timeout is None
    assert config.service_name == "dtecho"
    assert config.sampler == "ratio" and config.sample_ratio == 1.0


def test_otel_sdk_disabled_wins_over_everything() -> None:
    config = resolve_config(TracingSettings(enabled=True), {"OTEL_SDK_DISABLED": "TRUE"})
    assert not config.enabled
    assert (
        Tracing.from_settings(TracingSettings(enabled=True), environ={"OTEL_SDK_DISABLED": "true"})
        is None
    )


@pytest.mark.parametrize(
    ("value", "enabled", "exporter"),
    [
        ("otlp", True, "otlp_http"),  # the specification's default protocol
        ("otlp_proto_grpc", True, "otlp_grpc"),
        ("otlp_proto_http", True, "otlp_http"),
        ("console,otlp", True, "otlp_http"),  # exporters we do not ship are skipped
        ("none", False, "none"),
    ],
)
def test_otel_traces_exporter_turns_tracing_on(value: str, enabled: bool, exporter: str) -> None:
    config = resolve_config(TracingSettings(), {"OTEL_TRACES_EXPORTER": value})
    assert (config.enabled, config.exporter) == (enabled, exporter)


def test_protocol_variables_choose_grpc() -> None:
    environ = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert resolve_config(TracingSettings(), environ).exporter == "otlp_grpc"
    environ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/protobuf"  # the signal's own wins
    assert resolve_config(TracingSettings(), environ).exporter == "otlp_http"
    environ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] = "http/json"  # unsupported: noted, http
    config = resolve_config(TracingSettings(), environ)
    assert config.exporter == "otlp_http" and config.notes


def test_explicit_settings_win_over_the_environment() -> None:
    environ = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_SERVICE_NAME": "from-env",
        "OTEL_TRACES_SAMPLER": "always_off",
        "OTEL_BSP_MAX_QUEUE_SIZE": "10",
    }
    settings = TracingSettings(
        enabled=False, exporter="otlp_http", service_name="explicit", sample_ratio=0.5,
        max_queue_size=4096,
    )  # fmt: skip
    config = resolve_config(settings, environ)
    assert not config.enabled
    assert config.exporter == "otlp_http"
    assert config.service_name == "explicit"
    assert config.sampler == "ratio" and config.sample_ratio == 0.5
    assert config.max_queue_size == 4096
    # ... and a setting left at its default (not given) yields to the variable.
    config = resolve_config(TracingSettings(), environ)
    assert config.enabled and config.exporter == "otlp_grpc"
    assert config.service_name is None  # the SDK's resource reads OTEL_SERVICE_NAME
    assert config.sampler == "env"
    assert config.max_queue_size == 10 and config.max_export_batch_size == 10


def test_explicit_endpoint_gets_the_signal_path() -> None:
    config = resolve_config(TracingSettings(endpoint="http://collector:4318"), {})
    assert config.endpoint == "http://collector:4318/v1/traces"
    config = resolve_config(TracingSettings(endpoint="http://collector:4318/custom/traces"), {})
    assert config.endpoint == "http://collector:4318/custom/traces"
    grpc = TracingSettings(exporter="otlp_grpc", endpoint="http://collector:4317")
    assert resolve_config(grpc, {}).endpoint == "http://collector:4317"


def test_settings_from_dtecho_variables_count_as_explicit(env: pytest.MonkeyPatch) -> None:
    env.setenv("DTECHO_TRACING__ENABLED", "false")
    env.setenv("DTECHO_TRACING_HOOKS", "0")
    env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    settings = load_settings().tracing
    assert not settings.hooks
    assert not resolve_config(settings, os.environ).enabled


def test_invalid_settings_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"tracing\.endpoint"):
        load_settings(tracing={"endpoint": "collector:4318"})
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings(tracing={"exporter_typo": "x"})
    with pytest.raises(ConfigError, match="must not exceed max_queue_size"):
        load_settings(tracing={"max_queue_size": 10, "max_export_batch_size": 20})


def test_header_values_are_secrets() -> None:
    settings = load_settings(tracing={"headers": {"authorization": "Bearer hunter2"}})
    assert "hunter2" not in str(settings.redacted())
    assert "hunter2" not in repr(settings.tracing)
    config = resolve_config(settings.tracing, {})
    assert config.headers == {"authorization": "Bearer hunter2"}
    assert "hunter2" not in repr(config)


# --------------------------------------------------------------------------- through the SDK


def test_env_endpoint_headers_and_service_name_reach_the_collector(
    env: pytest.MonkeyPatch, receiver: OTLPHTTPReceiver
) -> None:
    env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.base_url)  # the SDK appends /v1/traces
    env.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=blue,x-key=k%20v")
    env.setenv("OTEL_SERVICE_NAME", "gateway-7")
    env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    tracing = Tracing.from_settings(TracingSettings())
    assert tracing is not None
    try:
        resource = one_request(tracing, receiver)
    finally:
        tracing.shutdown()
    assert resource["service.name"] == "gateway-7"
    assert resource["deployment.environment.name"] == "test"
    headers = receiver.request_headers[0]
    assert headers["x-tenant"] == "blue" and headers["x-key"] == "k v"


def test_traces_endpoint_variable_is_used_as_is(
    env: pytest.MonkeyPatch, receiver: OTLPHTTPReceiver
) -> None:
    env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")  # the signal's own wins
    tracing = Tracing.from_settings(TracingSettings(enabled=True))
    assert tracing is not None
    try:
        one_request(tracing, receiver)
    finally:
        tracing.shutdown()


def test_explicit_service_name_wins_over_otel_service_name(
    env: pytest.MonkeyPatch, receiver: OTLPHTTPReceiver
) -> None:
    env.setenv("OTEL_SERVICE_NAME", "from-env")
    tracing = Tracing.from_settings(
        TracingSettings(enabled=True, endpoint=receiver.base_url, service_name="explicit")
    )
    assert tracing is not None
    try:
        assert one_request(tracing, receiver)["service.name"] == "explicit"
    finally:
        tracing.shutdown()


@pytest.mark.parametrize(
    ("sampler", "arg", "recorded"),
    [
        ("always_off", None, False),
        ("traceidratio", "0", False),
        ("parentbased_always_on", None, True),
    ],
)
def test_otel_traces_sampler(
    env: pytest.MonkeyPatch, sampler: str, arg: str | None, recorded: bool
) -> None:
    env.setenv("OTEL_TRACES_SAMPLER", sampler)
    if arg is not None:
        env.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    tracing = Tracing.from_settings(TracingSettings(enabled=True, exporter="otlp_http"))
    assert tracing is not None
    try:
        request = tracing.start_request(SCOPE)
        assert request.span.is_recording() is recorded
        with tr.span("child") as child:
            assert child.is_recording() is recorded
        request.end(200)
    finally:
        tracing.shutdown(timeout=0.5)


def test_explicit_ratio_zero_wins_over_env_sampler(env: pytest.MonkeyPatch) -> None:
    env.setenv("OTEL_TRACES_SAMPLER", "always_on")
    tracing = Tracing.from_settings(TracingSettings(enabled=True, sample_ratio=0.0))
    assert tracing is not None
    try:
        request = tracing.start_request(SCOPE)
        assert not request.span.is_recording()
        request.end(200)
        # Parent-based: a client's sampled trace is still recorded at ratio 0.
        parent = b"00-0af7651916cd76f8ac3c6b3a1a0d6b5e-b7ad6b7169203331-01"
        request = tracing.start_request({**SCOPE, "headers": [(b"traceparent", parent)]})
        assert request.span.is_recording()
        request.end(200)
    finally:
        tracing.shutdown(timeout=0.5)
