"""Relay to any OpenAI-compatible upstream over a pooled HTTP client.

Aphrodite Engine (``aphrodite run``), vLLM, llama.cpp's server, Ollama and hosted APIs all speak
the same protocol. Requests are forwarded with the model name mapped; answers are relayed as
they arrive (SSE chunk by chunk, never buffered whole); upstream errors keep their status and
OpenAI error body; an unreachable upstream is a 502 at once.

The client is aiohttp's: on this hot path it measured 3–4× less CPU per relayed request than
httpx, whose connection pool polls every idle connection on each request
(``benchmarks/proxy_overhead.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from dtecho.config import DeploymentSpec, OpenAIModelSpec
from dtecho.engines.base import RelayResponse
from dtecho.errors import EngineUnavailable, UpstreamError
from dtecho.observability import tracing
from dtecho.observability.propagation import inject

__all__ = ["OpenAIUpstreamEngine"]

MAX_ERROR_BODY_BYTES = 64 * 1024


_KEPT_ERROR_HEADERS = (
    "retry-after",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)


def _upstream_error(
    response_status: int, raw: bytes, base_url: str, headers: Any = None
) -> UpstreamError:
    """Carry an upstream error over, keeping its OpenAI fields (and its retry hints)."""
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
    kept = {name: headers[name] for name in _KEPT_ERROR_HEADERS if headers and name in headers}
    return UpstreamError(message, status_code=response_status, code=code, param=param, headers=kept)


class OpenAIUpstreamEngine:
    """A :class:`~dtecho.engines.base.RelayEngine` for one upstream deployment of a model."""

    kind = "openai"

    def __init__(self, spec: OpenAIModelSpec | DeploymentSpec, model: str | None = None) -> None:
        if isinstance(spec, OpenAIModelSpec):
            model = spec.name
            spec = spec.deployment_list()[0]
        self.spec = spec
        self.name = spec.name or model or spec.base_url
        self.model = model or self.name
        self.upstream_model = spec.upstream_model or self.model
        self.base_url = spec.base_url.rstrip("/") + "/"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        headers = {"accept-encoding": "identity"}
        # api_key (a literal or an env:/file:/vault: reference, resolved at settings load)
        # wins over the older api_key_env, which names a variable read here.
        key: str | None = None
        if self.spec.api_key is not None:
            key = self.spec.api_key.get_secret_value()
        elif self.spec.api_key_env:
            key = os.environ.get(self.spec.api_key_env)
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(
                limit=self.spec.max_connections, keepalive_timeout=30, ttl_dns_cache=300
            ),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.spec.connect_timeout_seconds,
                sock_read=self.spec.between_tokens_timeout_seconds or self.spec.timeout_seconds,
            ),
            auto_decompress=False,
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def check_ready(self) -> None:
        if self._session is None or self._session.closed:
            raise EngineUnavailable(f"the connection pool to {self.spec.base_url} is not open")

    def _pool(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise EngineUnavailable(f"model '{self.name}' is not started")
        return self._session

    def _unreachable(self, exc: BaseException) -> UpstreamError:
        if isinstance(exc, asyncio.TimeoutError):
            return UpstreamError(
                f"Upstream {self.spec.base_url} did not answer in time.",
                status_code=504,
                code="upstream_timeout",
            )
        return UpstreamError(
            f"Upstream {self.spec.base_url} is unreachable ({type(exc).__name__}).",
            code="upstream_unreachable",
        )

    async def _request(self, method: str, endpoint: str, **kwargs: Any) -> aiohttp.ClientResponse:
        try:
            return await self._pool().request(method, self.base_url + endpoint, **kwargs)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._unreachable(exc) from None

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        try:
            return await response.read()
        except asyncio.CancelledError:
            response.close()  # abandoned (a losing hedge, a client gone): close, don't reuse
            raise
        except (TimeoutError, aiohttp.ClientError):
            raise UpstreamError(
                f"Upstream {self.spec.base_url} broke off its answer.", code="upstream_unreachable"
            ) from None
        finally:
            response.release()

    async def relay(self, endpoint: str, body: dict[str, Any], *, stream: bool) -> RelayResponse:
        """POST ``body`` to ``endpoint`` with ``model`` mapped to the upstream's name.

        Waits at most ``first_byte_timeout_seconds`` for the answer to start and
        ``timeout_seconds`` for a whole non-streamed answer.
        """
        payload = json.dumps({**body, "model": self.upstream_model}).encode()
        # One deadline, moved as the answer progresses (each asyncio timer costs microseconds
        # on every request): the first byte's, then the whole answer's, or none.
        try:
            async with asyncio.timeout(self.spec.first_byte_timeout_seconds) as deadline:
                headers = {"content-type": "application/json"}
                if tracing.active() is not None:  # the trace goes on upstream (vLLM, Aphrodite)
                    inject(headers)
                response = await self._request("POST", endpoint, data=payload, headers=headers)
                content_type = response.headers.get("content-type", "application/json")
                if response.status >= 400:
                    deadline.reschedule(None)
                elif stream and content_type.startswith("text/event-stream"):
                    deadline.reschedule(None)
                    return RelayResponse(
                        response.status, content_type, stream=self._relay_stream(response)
                    )
                else:
                    loop = asyncio.get_running_loop()
                    deadline.reschedule(loop.time() + self.spec.timeout_seconds)
                body_bytes = await self._read(response)
        except TimeoutError:
            raise self._unreachable(TimeoutError()) from None
        if response.status >= 400:
            raise _upstream_error(
                response.status,
                body_bytes[:MAX_ERROR_BODY_BYTES],
                self.spec.base_url,
                response.headers,
            )
        return RelayResponse(response.status, content_type, body=body_bytes)

    async def _relay_stream(self, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        # Bytes as they arrive; closing this generator (client gone) closes the upstream.
        try:
            async for chunk in response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError):
            raise UpstreamError(
                f"Upstream {self.spec.base_url} broke off its stream.",
                code="upstream_unreachable",
            ) from None
        finally:
            response.close()

    async def list_models(self) -> list[dict[str, Any]]:
        """The upstream's own model list (used for diagnostics, not for routing)."""
        response = await self._request("GET", "models")
        raw = await self._read(response)
        if response.status >= 400:
            raise _upstream_error(response.status, raw, self.spec.base_url)
        data = json.loads(raw).get("data", [])
        return data if isinstance(data, list) else []
