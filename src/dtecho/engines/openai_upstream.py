"""Relay to any OpenAI-compatible upstream over a pooled HTTP client.

Aphrodite Engine (``aphrodite run``), vLLM, llama.cpp's server, Ollama and hosted APIs all speak
the same protocol. Requests are forwarded with the model name mapped; answers are relayed as
they arrive (SSE chunk by chunk, never buffered whole); upstream errors keep their status and
OpenAI error body; an unreachable upstream is a 502 at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx

from dtecho.config import OpenAIModelSpec
from dtecho.engines.base import RelayResponse
from dtecho.errors import EngineUnavailable, UpstreamError

__all__ = ["OpenAIUpstreamEngine"]

MAX_ERROR_BODY_BYTES = 64 * 1024


def _upstream_error(response_status: int, raw: bytes, base_url: str) -> UpstreamError:
    """Carry an upstream error over, keeping its OpenAI fields when it sent them."""
    message = f"Upstream {base_url} answered {response_status}."
    code: str | None = None
    param: str | None = None
    try:
        error = json.loads(raw)["error"]
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            code = error.get("code") if isinstance(error.get("code"), str) else None
            param = error.get("param") if isinstance(error.get("param"), str) else None
        elif isinstance(error, str):
            message = error
    except (ValueError, KeyError, TypeError):
        pass
    return UpstreamError(message, status_code=response_status, code=code, param=param)


class OpenAIUpstreamEngine:
    """A :class:`~dtecho.engines.base.RelayEngine` for one upstream model."""

    kind = "openai"

    def __init__(self, spec: OpenAIModelSpec) -> None:
        self.name = spec.name
        self.spec = spec
        self.upstream_model = spec.upstream_model or spec.name
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        headers = {"accept-encoding": "identity"}
        if self.spec.api_key_env:
            key = os.environ.get(self.spec.api_key_env)
            if key:
                headers["authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            base_url=self.spec.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(
                self.spec.timeout_seconds, connect=self.spec.connect_timeout_seconds
            ),
            limits=httpx.Limits(
                max_connections=self.spec.max_connections,
                max_keepalive_connections=self.spec.max_connections,
                keepalive_expiry=30,
            ),
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def check_ready(self) -> None:
        if self._client is None:
            raise EngineUnavailable(f"the connection pool to {self.spec.base_url} is not open")

    def _pool(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineUnavailable(f"model '{self.name}' is not started")
        return self._client

    async def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._pool().send(request, stream=True)
        except httpx.TimeoutException:
            raise UpstreamError(
                f"Upstream {self.spec.base_url} did not answer in time.",
                status_code=504,
                code="upstream_timeout",
            ) from None
        except httpx.TransportError as exc:
            raise UpstreamError(
                f"Upstream {self.spec.base_url} is unreachable ({type(exc).__name__}).",
                code="upstream_unreachable",
            ) from None

    async def relay(self, endpoint: str, body: dict[str, Any], *, stream: bool) -> RelayResponse:
        """POST ``body`` to ``endpoint`` with ``model`` mapped to the upstream's name."""
        request = self._pool().build_request(
            "POST", endpoint, json={**body, "model": self.upstream_model}
        )
        response = await self._send(request)
        content_type = response.headers.get("content-type", "application/json")
        if response.status_code >= 400:
            try:
                raw = await response.aread()
            finally:
                await response.aclose()
            raise _upstream_error(
                response.status_code, raw[:MAX_ERROR_BODY_BYTES], self.spec.base_url
            )
        if stream and content_type.startswith("text/event-stream"):
            return RelayResponse(
                response.status_code, content_type, stream=self._relay_stream(response)
            )
        try:
            raw = await response.aread()
        except httpx.TransportError:
            raise UpstreamError(
                f"Upstream {self.spec.base_url} broke off its answer.", code="upstream_unreachable"
            ) from None
        finally:
            await response.aclose()
        return RelayResponse(response.status_code, content_type, body=raw)

    async def _relay_stream(self, response: httpx.Response) -> AsyncIterator[bytes]:
        # Raw bytes as they arrive; closing this generator (client gone) closes the upstream.
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        finally:
            await response.aclose()

    async def list_models(self) -> list[dict[str, Any]]:
        """The upstream's own model list (used for diagnostics, not for routing)."""
        response = await self._send(self._pool().build_request("GET", "models"))
        try:
            raw = await response.aread()
        finally:
            await response.aclose()
        if response.status_code >= 400:
            raise _upstream_error(response.status_code, raw, self.spec.base_url)
        data = json.loads(raw).get("data", [])
        return data if isinstance(data, list) else []
