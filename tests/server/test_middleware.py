"""Request ids, security headers and Prometheus metrics (in-process app, real middleware)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dtecho.config import Settings
from dtecho.server.app import create_app


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(Settings())

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    with TestClient(app) as test_client:
        yield test_client


def samples(client: TestClient, name: str) -> list:
    text = client.get("/metrics").text
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def test_sane_incoming_request_id_is_kept(client: TestClient) -> None:
    response = client.get("/health/live", headers={"x-request-id": "trace-42.a:b_c"})
    assert response.headers["x-request-id"] == "trace-42.a:b_c"


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "<script>", "ünï"])
def test_insane_incoming_request_id_is_replaced(client: TestClient, bad: str) -> None:
    response = client.get("/health/live", headers={"x-request-id": bad.encode("utf-8")})
    generated = response.headers["x-request-id"]
    assert generated != bad and len(generated) == 32 and generated.isalnum()


def test_every_response_has_its_own_request_id(client: TestClient) -> None:
    ids = {client.get(path).headers["x-request-id"] for path in ["/health/live", "/nope"] * 3}
    assert len(ids) == 6


def test_security_headers_on_success_and_error(client: TestClient) -> None:
    for response in (client.get("/health/live"), client.get("/missing")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_metrics_are_labelled_by_route_template(client: TestClient) -> None:
    for item_id in (1, 2, 3):
        assert client.get(f"/items/{item_id}").status_code == 200
    client.get("/items/not-a-number")
    client.get("/secret/raw/path/123")

    counts = {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for s in samples(client, "dtecho_http_requests_total")
    }
    assert counts[("/items/{item_id}", "GET", "200")] == 3
    assert counts[("/items/{item_id}", "GET", "400")] == 1
    assert counts[("<unmatched>", "GET", "404")] == 1
    assert not any(route == "/items/1" or "secret" in route for route, _, _ in counts)


def test_latency_histogram_and_in_flight_gauge(client: TestClient) -> None:
    client.get("/health/live")
    counts = [
        s for s in samples(client, "dtecho_http_request_duration_seconds_count")
        if s.labels["route"] == "/health/live"
    ]  # fmt: skip
    assert counts and counts[0].value == 1
    buckets = [
        s for s in samples(client, "dtecho_http_request_duration_seconds_bucket")
        if s.labels["route"] == "/health/live"
    ]  # fmt: skip
    assert [b.labels["le"] for b in buckets][-1] == "+Inf"
    assert buckets[-1].value == 1
    # The scrape itself is the one request in flight while the gauge is read.
    assert samples(client, "dtecho_http_requests_in_flight")[0].value == 1


def test_server_timing_measures_the_time_in_the_app(client: TestClient) -> None:
    app = client.app

    @app.get("/slow")  # type: ignore[attr-defined]
    async def slow() -> dict[str, bool]:
        await asyncio.sleep(0.05)
        return {"ok": True}

    fast = client.get("/health/live").headers["server-timing"]
    name, _, duration = fast.partition(";dur=")
    assert name == "app" and float(duration) >= 0
    slow_ms = float(client.get("/slow").headers["server-timing"].partition(";dur=")[2])
    assert slow_ms >= 50.0  # it includes the endpoint's own time
