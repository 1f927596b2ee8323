"""The app factory: builds the object graph from settings and wires the layers together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import redis.asyncio as aioredis
import structlog
from fastapi import FastAPI

from dtecho import __version__
from dtecho.config import Settings, load_settings, redact_url
from dtecho.observability.metrics import HttpMetrics
from dtecho.server.errors import install_error_handlers
from dtecho.server.middleware import ServingMiddleware
from dtecho.server.routes import health
from dtecho.server.state import ServerState

__all__ = ["create_app"]

_log = structlog.get_logger("dtecho.server")


def _open_redis(url: str, settings: Settings) -> aioredis.Redis:
    # Short timeouts: Redis is an accelerator for us, never something a request may wait on.
    return aioredis.Redis.from_url(
        url,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=max(settings.redis_timeout_seconds, 0.25),
        health_check_interval=30,
    )


async def _start_resources(state: ServerState, stack: AsyncExitStack) -> None:
    """Open every configured resource; each is closed in reverse order at shutdown."""
    url = state.settings.cache_redis_url
    if url:
        client = _open_redis(url, state.settings)
        stack.push_async_callback(client.aclose)
        state.redis = client

        async def redis_ready() -> None:
            await client.ping()

        state.readiness["redis"] = redis_ready
        _log.info("redis_configured", url=redact_url(url))


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build a dtecho ASGI app.

    ``settings`` defaults to :func:`dtecho.config.load_settings` (defaults, config file from
    ``DTECHO_CONFIG_FILE``, environment). Resources are opened by the app's lifespan, so the
    returned app does nothing until an ASGI server starts it.
    """
    settings = settings or load_settings()
    state = ServerState(settings=settings, metrics=HttpMetrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await _start_resources(state, stack)
            _log.info("started", version=__version__)
            yield
            _log.info("stopping")

    app = FastAPI(
        title="Deep Tree Echo",
        version=__version__,
        summary="Reservoir computing and LLMs behind one OpenAI-compatible API.",
        lifespan=lifespan,
    )
    app.state.dtecho = state
    install_error_handlers(app)
    app.include_router(health.router)
    app.add_middleware(
        ServingMiddleware, metrics=state.metrics, max_body_bytes=settings.max_request_bytes
    )
    return app
