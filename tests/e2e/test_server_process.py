"""A real ``dtecho serve`` process, spoken to over real HTTP."""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from support import ServerProcess, free_port

pytestmark = pytest.mark.e2e


def access_lines(server: ServerProcess) -> list[dict]:
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "request"]


def assert_error_shape(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert response.headers["x-request-id"]


def test_live_and_ready(server: ServerProcess) -> None:
    assert httpx.get(f"{server.base_url}/health/live").json() == {"status": "ok"}
    assert httpx.get(f"{server.base_url}/health/ready").status_code == 200


def test_framework_errors_over_http(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        assert_error_shape(client.get("/v1/unknown"), 404, "not_found")
        assert_error_shape(client.post("/health/live"), 405, "method_not_allowed")
        too_big = client.post("/health/live", content=b"0" * (10 * 1024 * 1024 + 1))
        assert_error_shape(too_big, 413, "request_too_large")
        assert client.get("/health/live").status_code == 200  # the server is fine afterwards


def test_server_header_is_not_advertised(server: ServerProcess) -> None:
    assert "server" not in httpx.get(f"{server.base_url}/health/live").headers


def test_access_log_is_one_json_line_per_request(server: ServerProcess) -> None:
    response = httpx.get(f"{server.base_url}/health/live", headers={"x-request-id": "e2e-access-1"})
    assert response.headers["x-request-id"] == "e2e-access-1"
    httpx.get(f"{server.base_url}/not/here?api_key=sk-should-not-be-logged")
    lines = access_lines(server)
    mine = [line for line in lines if line["request_id"] == "e2e-access-1"]
    assert len(mine) == 1
    line = mine[0]
    assert (line["method"], line["route"], line["status"]) == ("GET", "/health/live", 200)
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert "sk-should-not-be-logged" not in server.logs()


def test_metrics_scrape(server: ServerProcess) -> None:
    httpx.get(f"{server.base_url}/health/live")
    text = httpx.get(f"{server.base_url}/metrics").text
    assert 'dtecho_http_requests_total{method="GET",route="/health/live",status="200"}' in text


def test_unreachable_redis_is_reported_without_its_password(server_factory) -> None:
    url = f"redis://default:not-a-real-password@127.0.0.1:{free_port()}/0"
    server = server_factory(env={"DTESN_CACHE_REDIS_URL": url})
    response = httpx.get(f"{server.base_url}/health/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"] != "ok"
    assert "redis://default:***@127.0.0.1" in server.logs()
    assert "not-a-real-password" not in server.logs() + response.text


def test_ready_with_real_redis(server_factory, redis_url: str) -> None:
    server = server_factory(config={"redis_url": redis_url})
    assert httpx.get(f"{server.base_url}/health/ready").json()["checks"] == {
        "redis": "ok",
        "store": "ok",
        "model:dtesn-echo": "ok",
        "model:dtesn-embed": "ok",
    }


def test_sigterm_shuts_down_cleanly(server_factory) -> None:
    server = server_factory()
    # uvicorn finishes its graceful shutdown, then re-raises SIGTERM so callers see the signal.
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    events = [json.loads(line)["event"] for line in server.logs().splitlines() if line[:1] == "{"]
    assert "stopping" in events
    assert "Application shutdown complete." in events
    assert "Traceback" not in server.logs()


def test_several_workers(server_factory) -> None:
    server = server_factory(args=("--workers", "2"))
    ids = {httpx.get(f"{server.base_url}/health/live").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
