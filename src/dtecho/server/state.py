"""What the app factory builds and routes reach through ``request.app.state``."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from dtecho.config import Settings
from dtecho.engines.registry import ModelRegistry
from dtecho.observability.metrics import HttpMetrics
from dtecho.server.caching import RouteCache
from dtecho.server.pages import PageRenderer
from dtecho.services.dtesn_models import ModelService
from dtecho.services.dtesn_service import DtesnService

if TYPE_CHECKING:
    from dtecho.server.live.snapshot import ConfigSnapshot

__all__ = [
    "ReadinessCheck",
    "ServerState",
    "get_state",
    "request_config",
    "request_dtesn_models",
    "request_models",
]

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""An async callable that returns when its component is ready and raises (with a reason) if not.

It may return a note (``"degraded: …"``) shown as its state while the server stays ready."""


@dataclass
class ServerState:
    """The object graph of one app instance, built by :func:`dtecho.server.app.create_app`.

    ``settings``, ``models`` and ``cache`` are those of the current configuration snapshot
    (``live.current``): a reload replaces them, together, never changes them in place.
    """

    settings: Settings
    metrics: HttpMetrics
    models: ModelRegistry
    dtesn: DtesnService
    dtesn_models: ModelService
    cache: RouteCache
    pages: PageRenderer = field(default_factory=PageRenderer)
    started_at: float = field(default_factory=time.time)
    readiness: dict[str, ReadinessCheck] = field(default_factory=dict)
    draining: bool = False  # set on SIGTERM by dtecho.server.drain; readiness answers 503
    redis: Any = None  # redis.asyncio.Redis once the lifespan has opened it
    # Set by the lifespan (dtecho.server.gateway): the store, API keys and the auth/quota layer.
    store: Any = None  # dtecho.store.Store
    keys: Any = None  # dtecho.security.keys.KeyService
    gateway: Any = None  # dtecho.server.security.Gateway
    live: Any = None  # dtecho.server.live.reloader.LiveConfig: the snapshot, reloads, history
    history: Any = None  # dtecho.observability.history.MetricsHistory: the status page's hour
    tracing: Any = None  # dtecho.observability.tracing.Tracing, or None when tracing is off
    # dtecho.observability.llm.LlmMetrics: per model request (TTFT, TPOT, e2e, tokens, status,
    # principal); the request path calls llm_metrics.observe(...) once per finished request.
    llm_metrics: Any = None
    module_batch_metrics: dict[str, Any] = field(default_factory=dict)  # shared with modules
    front_door: Any = None  # dtecho.server.front_door.FrontDoor once started (manifests exist)


def get_state(request: Request) -> ServerState:
    """The :class:`ServerState` of the app serving ``request``."""
    state: ServerState = request.app.state.dtecho
    return state


def request_config(request: Request) -> ConfigSnapshot:
    """The configuration snapshot ``request`` runs under: the current one at its first call,
    the same one for the rest of the request however many reloads happen meanwhile."""
    scope_state = request.scope.setdefault("state", {})
    snapshot: ConfigSnapshot | None = scope_state.get("config")
    if snapshot is None:
        snapshot = scope_state["config"] = get_state(request).live.current
    return snapshot


def request_models(request: Request) -> ModelRegistry:
    """The models ``request`` may name: a project's view (``inference_openai`` module) or
    the server's."""
    override = request.scope.get("state", {}).get("models")
    return override if override is not None else get_state(request).models


def request_dtesn_models(request: Request) -> ModelService:
    """The trained DTESN models of ``request``'s project (``dtesn`` module), or the server's."""
    override = request.scope.get("state", {}).get("dtesn_models")
    return override if override is not None else get_state(request).dtesn_models
