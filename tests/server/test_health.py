"""Liveness and readiness, against a real Redis and an unreachable one."""

from __future__ import annotations

from fastapi.testclient import TestClient

from dtecho.config import Settings
from dtecho.server.app import create_app
from support import free_port


def test_live_needs_nothing() -> None:
    with TestClient(create_app(Settings())) as client:
        assert client.get("/health/live").json() == {"status": "ok"}


MODELS_READY = {"store": "ok", "model:dtesn-echo": "ok", "model:dtesn-embed": "ok"}


def test_ready_when_every_model_is_loaded() -> None:
    with TestClient(create_app(Settings())) as client:
        response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": MODELS_READY}


def test_ready_with_reachable_redis(redis_url: str) -> None:
    with TestClient(create_app(Settings(redis_url=redis_url))) as client:
        response = client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"redis": "ok", **MODELS_READY}}


def test_not_ready_when_redis_is_unreachable() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with TestClient(create_app(Settings(cache={"redis_url": dead}))) as client:
        assert client.get("/health/live").status_code == 200  # alive even so
        response = client.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["error"]["type"] == "server_error" and body["error"]["code"] == "not_ready"
    assert body["error"]["message"].startswith("Not ready: redis: ")
    assert body["checks"]["redis"] != "ok"
