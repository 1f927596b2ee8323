"""Every error class answers with the exact OpenAI error body (in-process app, real middleware)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field
from structlog.testing import capture_logs

from dtecho.config import Settings
from dtecho.errors import InvalidRequest, ModelNotFound, Overloaded
from dtecho.server.app import create_app

SMALL_LIMIT = 1024


class Message(BaseModel):
    role: str
    content: str


class ChatLike(BaseModel):
    model: str
    messages: list[Message]
    temperature: float = Field(1.0, ge=0, le=2)


def build_app() -> FastAPI:
    app = create_app(Settings(max_request_bytes=SMALL_LIMIT))

    @app.post("/echo")
    async def echo(body: ChatLike) -> dict[str, str]:
        return {"model": body.model}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    @app.get("/model/{name}")
    async def model(name: str) -> None:
        raise ModelNotFound(name)

    @app.get("/busy")
    async def busy() -> None:
        raise Overloaded("Queue is full.", retry_after_seconds=3)

    @app.get("/invalid")
    async def invalid() -> None:
        raise InvalidRequest("n must be at most 8.", param="n")

    return app


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(build_app(), raise_server_exceptions=False) as test_client:
        yield test_client


def assert_openai_error(response, status: int, error_type: str, code: str, param=None) -> dict:
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == error_type
    assert error["code"] == code
    assert error["param"] == param
    assert response.headers["x-request-id"]
    return error


def test_unknown_route_is_404(client: TestClient) -> None:
    error = assert_openai_error(client.get("/nope"), 404, "invalid_request_error", "not_found")
    assert "/nope" in error["message"]


def test_wrong_method_is_405_with_allow_header(client: TestClient) -> None:
    response = client.delete("/echo")
    assert_openai_error(response, 405, "invalid_request_error", "method_not_allowed")
    assert response.headers["allow"] == "POST"


def test_declared_body_over_limit_is_413(client: TestClient) -> None:
    response = client.post("/echo", content=b"x" * (SMALL_LIMIT + 1))
    assert_openai_error(response, 413, "invalid_request_error", "request_too_large")


def test_chunked_body_over_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"y" * 512

    response = client.post("/echo", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_openai_error(response, 413, "invalid_request_error", "request_too_large")


@pytest.mark.parametrize("path", ["/v1/dtesn/process", "/v1/chat/completions"])
def test_chunked_body_over_limit_is_413_on_cached_routes(client: TestClient, path: str) -> None:
    # These routes' bodies are read before routing (the cache's fast path): same answer.
    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"y" * 512

    response = client.post(path, content=chunks(), headers={"content-type": "application/json"})
    assert_openai_error(response, 413, "invalid_request_error", "request_too_large")


def test_body_exactly_at_limit_is_accepted(client: TestClient) -> None:
    head, tail = '{"model": "m", "messages": [], "padding": "', '"}'
    payload = head + "a" * (SMALL_LIMIT - len(head) - len(tail)) + tail
    assert len(payload) == SMALL_LIMIT
    response = client.post("/echo", content=payload, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


def test_malformed_json_is_400_not_422(client: TestClient) -> None:
    response = client.post(
        "/echo",
        content=b'{"model": "m", "messages": [',
        headers={"content-type": "application/json"},
    )
    error = assert_openai_error(response, 400, "invalid_request_error", "invalid_json")
    assert "JSON" in error["message"]


def test_missing_body_is_400(client: TestClient) -> None:
    response = client.post("/echo")
    assert_openai_error(response, 400, "invalid_request_error", "missing_body")


def test_invalid_parameter_names_the_field(client: TestClient) -> None:
    response = client.post("/echo", json={"model": "m", "messages": [], "temperature": 3})
    error = assert_openai_error(
        response, 400, "invalid_request_error", "invalid_value", param="temperature"
    )
    assert "temperature" in error["message"]


def test_nested_invalid_parameter_uses_openai_path(client: TestClient) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "user"}]}
    response = client.post("/echo", json=body)
    assert_openai_error(
        response, 400, "invalid_request_error", "missing_required", param="messages[1].content"
    )


def test_unhandled_exception_is_500_without_internals(client: TestClient) -> None:
    with capture_logs() as logs:
        response = client.get("/boom", headers={"x-request-id": "req-boom-1"})
    error = assert_openai_error(response, 500, "server_error", "internal_error")
    assert "secret" not in response.text and "hunter2" not in response.text
    assert "Traceback" not in response.text and "RuntimeError" not in response.text
    assert "req-boom-1" in error["message"]
    logged = [entry for entry in logs if entry["event"] == "unhandled_exception"]
    assert logged and logged[0]["request_id"] == "req-boom-1"
    assert logged[0]["log_level"] == "error" and logged[0].get("exc_info")


def test_our_errors_map_to_status_type_code_and_param(client: TestClient) -> None:
    error = assert_openai_error(
        client.get("/model/gpt-9"), 404, "invalid_request_error", "model_not_found", param="model"
    )
    assert "gpt-9" in error["message"]
    assert_openai_error(client.get("/invalid"), 400, "invalid_request_error", "invalid_value", "n")
    busy = client.get("/busy")
    assert_openai_error(busy, 503, "server_error", "overloaded")
    assert busy.headers["retry-after"] == "3"
