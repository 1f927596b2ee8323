"""The app factory: builds the object graph from settings and wires the layers together."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import structlog
from fastapi import FastAPI

from dtecho import __version__
from dtecho.cache import ResponseCache
from dtecho.config import Settings, load_settings, redact_url
from dtecho.engines.registry import ModelRegistry
from dtecho.observability.llm import LlmMetrics
from dtecho.observability.metrics import BatchMetrics, HttpMetrics
from dtecho.observability.runtime import EventLoopLagMonitor, register_runtime_collectors
from dtecho.observability.tracing import Tracing
from dtecho.protocol.dtesn import TrainRequest
from dtecho.protocol.dtesn_results import CacheControlResult
from dtecho.registry.versions import ModelVersions
from dtecho.server.caching import RouteCache
from dtecho.server.compression import CompressionMiddleware
from dtecho.server.conditional import ConditionalGetMiddleware
from dtecho.server.deadlines import DeadlineMiddleware
from dtecho.server.errors import MethodIndex, install_error_handlers
from dtecho.server.fast_path import CacheFastPath
from dtecho.server.front_door import FrontDoorMiddleware, ModuleDispatch, start_front_door
from dtecho.server.gateway import start_gateway
from dtecho.server.live.reloader import LiveConfig
from dtecho.server.middleware import ServingMiddleware
from dtecho.server.openapi import install_openapi, operation_id
from dtecho.server.overload import OverloadMiddleware
from dtecho.server.routes import (
    admin,
    cache,
    dtesn,
    dtesn_models,
    feedback,
    health,
    openai,
    pages,
)
from dtecho.server.security import SecurityMiddleware
from dtecho.server.state import ServerState
from dtecho.services.dtesn_models import ModelService
from dtecho.services.dtesn_service import DtesnService

__all__ = ["create_app"]

# Bodies the routes read themselves (multipart-or-JSON training, the HTML form), and answers
# documented as a union: the document names them, so they are added to its components.
OPENAPI_SCHEMAS = (TrainRequest, CacheControlResult)

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

    await start_gateway(state, stack)
    state.dtesn_models.attach_versions(ModelVersions(state.store.versions))
    await _start_experiments(state, stack)
    await _share_breakers(state, stack)
    await state.cache.cache.start()  # never fails for Redis trouble: L1/L2 serve meanwhile
    stack.push_async_callback(state.cache.cache.close)
    # Starts the models (and their readiness checks); from here on the live configuration
    # owns every engine, whichever configuration version it belongs to.
    await state.live.start(stack)
    stack.push_async_callback(state.dtesn_models.close)
    await start_front_door(state, stack)  # after the store and models its modules use
    await _start_history(state, stack)


async def _start_experiments(state: ServerState, stack: AsyncExitStack) -> None:
    """Experiments on trained models, analysed in the background; their events audited."""
    from dtecho.services.experiments import ExperimentService
    from dtecho.services.learner import ContinuousLearner

    def audit(action: str, details: dict[str, Any]) -> None:
        if state.gateway is not None:
            actor = details.pop("actor", None) or "dtecho"
            state.gateway.audit.record(action, "success", actor=actor,
                                       target=details.get("experiment"), **details)  # fmt: skip

    service = ExperimentService(state.dtesn_models, state.store.experiments, on_event=audit)
    await service.start()
    stack.push_async_callback(service.close)
    state.dtesn_models.experiments = service
    state.dtesn_models.observations = state.store.observations
    retention = state.settings.lifecycle.observation_retention_days * 86400.0
    learner = ContinuousLearner(
        state.dtesn_models,
        state.store.observations,
        state.store.leases,
        retention_seconds=retention,
    )
    learner.feedback = state.store.feedback
    learner.start()
    stack.push_async_callback(learner.close)
    state.metrics.watch_counters(
        "dtecho_learning_rounds",
        "Continuous learning rounds by outcome: promoted, kept, failed.",
        ("outcome",),
        lambda: learner.counts,
    )
    state.metrics.watch_gauges(
        "dtecho_model_drift",
        "Trained models' drift since training, by model and kind: input (1 while the recent "
        "observed inputs have drifted from the training data), error_detections (ADWIN "
        "changes of the squared error).",
        ("model", "kind"),
        state.dtesn_models.monitor.gauges,
    )
    state.metrics.watch_counters(
        "dtecho_experiment_events",
        "Experiments on trained models by event: started, stopped, rolled_back.",
        ("event",),
        lambda: service.counts,
    )


def _watch_tracing(state: ServerState) -> None:
    """Where sampled spans went: exported, or dropped and why (a dead collector is counted,
    never felt by requests)."""
    tracing = state.tracing

    def outcomes() -> dict[tuple[str, ...], int]:
        stats = tracing.stats() if tracing is not None else None
        if stats is None:
            return {}
        return {
            ("exported",): stats.exported,
            ("dropped_queue_full",): stats.dropped_queue_full,
            ("export_failed",): stats.export_failed,
            ("dropped_at_shutdown",): stats.dropped_at_shutdown,
        }

    state.metrics.watch_counters(
        "dtecho_trace_spans",
        "Sampled spans by outcome: exported, dropped_queue_full, export_failed, "
        "dropped_at_shutdown.",
        ("outcome",),
        outcomes,
    )


async def _start_loop_lag(monitor: EventLoopLagMonitor, stack: AsyncExitStack) -> None:
    """Event-loop lag is measured from the first to the last moment the app serves."""
    await monitor.start()
    stack.push_async_callback(monitor.stop)


async def _start_history(state: ServerState, stack: AsyncExitStack) -> None:
    """The status page's last hour, sampled from this app's own registry."""
    page = state.settings.status_page
    if not page.enabled:
        return
    from dtecho.observability.history import MetricsHistory

    state.history = MetricsHistory(
        state.metrics.registry,
        state.settings.slo.objectives,
        interval=page.history_interval_seconds,
        span=page.history_window_seconds,
    )
    await state.history.start()
    stack.push_async_callback(state.history.stop)


async def _share_breakers(state: ServerState, stack: AsyncExitStack) -> None:
    """With Redis, a breaker opening on one replica is seen by the others within a second."""
    routed = state.models.routed()
    url = state.settings.limits_redis_url
    if not routed or not url:
        return
    from dtecho.router.breaker import SharedBreakers

    client = aioredis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    stack.push_async_callback(client.aclose)
    shared = SharedBreakers(client, namespace=state.settings.cache.namespace)
    for name, model in routed.items():
        for deployment in model.deployments:
            shared.attach(name, deployment.breaker)
    await shared.start()
    stack.push_async_callback(shared.close)
    state.live.shared_breakers = shared  # a reload attaches its new deployments' breakers


def _watch_gateway(state: ServerState) -> None:
    """Counters of the auth/quota layer, which exists only while the app runs."""

    def reading(read: Callable[[Any], Mapping[tuple[str, ...], int]]) -> Callable[[], Any]:
        return lambda: read(state.gateway) if state.gateway is not None else {}

    state.metrics.watch_counters(
        "dtecho_rate_limit_decisions",
        "Limiter decisions by outcome (allowed, refused, fallback, settle_error), reason and "
        "backend (redis, local).",
        ("outcome", "reason", "backend"),
        reading(lambda gateway: gateway.limiter.counts()),
    )
    state.metrics.watch_counters(
        "dtecho_auth_key_lookups",
        "API key authentications by event (cache_hit, store_lookup, rejected, publish_error).",
        ("event",),
        reading(lambda gateway: gateway.authenticator.keys.counts()),
    )
    state.metrics.watch_counters(
        "dtecho_auth_jwt",
        "JWT verifications and JWKS fetches by event.",
        ("event",),
        reading(
            lambda gateway: gateway.authenticator.jwt.counts() if gateway.authenticator.jwt else {}
        ),
    )
    state.metrics.watch_counters(
        "dtecho_usage_records",
        "Usage accounting: recorded (requests), flushed (rows), flush_error (attempts).",
        ("event",),
        reading(lambda gateway: gateway.usage.counts()),
    )
    state.metrics.watch_counters(
        "dtecho_audit_events",
        "Audit log: written (events), flush_error (attempts), dropped (events).",
        ("event",),
        reading(lambda gateway: gateway.audit.counts()),
    )


def _watch_front_door(state: ServerState) -> None:
    """The front door's series (empty until a manifest source is configured and started)."""

    def reading(read: Callable[[Any], Mapping[Any, int]]) -> Callable[[], Any]:
        return lambda: read(state.front_door) if state.front_door is not None else {}

    state.metrics.watch_counters(
        "dtecho_front_door_requests",
        "Front-door requests by outcome (served, unavailable, module_error) and module type.",
        ("outcome", "type"),
        reading(lambda fd: fd.counts),
    )
    state.metrics.watch_counters(
        "dtecho_module_events",
        "Module pool events by module type: started, start_failed, check_failed, "
        "request_error, retired, evicted_lru, evicted_idle, closed, close_failed.",
        ("type", "event"),
        reading(lambda fd: fd.pool.counts),
    )
    state.metrics.watch_counters(
        "dtecho_manifest_updates",
        "Manifest changes by source kind (dir, control_tower) and outcome (applied, rejected).",
        ("source", "outcome"),
        reading(lambda fd: fd.catalog.counts),
    )
    state.metrics.watch_counters(
        "dtecho_control_tower_fetches",
        "Control tower polls by outcome (updated, not_modified, error, invalid).",
        ("outcome",),
        reading(
            lambda fd: {
                (outcome,): n
                for source in fd.sources
                if source.kind == "control_tower"
                for outcome, n in source.counts.items()
            }
        ),
    )
    state.metrics.watch_gauge(
        "dtecho_front_door_degraded",
        "1 while the front door serves a last known good manifest set (its control tower is "
        "unreachable or answered no valid list), else 0.",
        lambda: 1.0 if state.front_door is not None and state.front_door.degraded() else 0.0,
    )


class _LiveAliases:
    """The fast path's view of the request aliases of whichever route cache is current.

    Each configuration has its own route cache (its keys carry its models' fingerprints), so
    after a reload the fast path must stop answering from the previous one's aliases.
    """

    def __init__(self, state: ServerState) -> None:
        self._state = state

    def get(self, digest: bytes) -> Any:
        return self._state.cache.aliases.get(digest)

    def remember(self, digest: bytes, key: str, kind: Any) -> None:
        self._state.cache.aliases.remember(digest, key, kind)

    def __len__(self) -> int:
        return len(self._state.cache.aliases)


def _response_cache(settings: Settings) -> ResponseCache:
    return ResponseCache(
        settings.cache,
        settings.cache_redis_url,
        redis_timeout_seconds=settings.redis_timeout_seconds,
    )


def _add_delivery(app: FastAPI, settings: Settings) -> None:
    """ETags and compression (docs/delivery.md): outside the fast path, so cached answers are
    compressed too; the ETag layer inside the compression one, so tags hash the identity body."""
    delivery = settings.delivery
    app.add_middleware(
        ConditionalGetMiddleware,
        public_max_age=delivery.public_max_age_seconds,
        etags=delivery.etags,
    )
    if delivery.compression:
        app.add_middleware(
            CompressionMiddleware,
            min_bytes=delivery.compression_min_bytes,
            gzip_level=delivery.gzip_level,
            zstd_level=delivery.zstd_level,
            zstd=delivery.zstd,
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build a dtecho ASGI app.

    ``settings`` defaults to :func:`dtecho.config.load_settings` (defaults, config file from
    ``DTECHO_CONFIG_FILE``, environment). Resources are opened by the app's lifespan, so the
    returned app does nothing until an ASGI server starts it.
    """
    settings = settings or load_settings()
    metrics = HttpMetrics()
    predict_batches = BatchMetrics(metrics.registry, "dtesn_predict")  # projects' models too
    state = ServerState(
        settings=settings,
        metrics=metrics,
        models=ModelRegistry.from_settings(settings),
        dtesn=DtesnService(
            settings.dtesn,
            settings.batching,
            BatchMetrics(metrics.registry, "dtesn"),
            limits=settings.work_limits,
        ),
        dtesn_models=ModelService(
            settings.data_dir,
            settings.batching,
            predict_batches,
            limits=settings.work_limits,
        ),
        cache=RouteCache(_response_cache(settings), settings),
    )
    state.module_batch_metrics["dtesn_predict"] = predict_batches
    register_runtime_collectors(metrics.registry)
    state.tracing = Tracing.from_settings(settings.tracing)
    _watch_tracing(state)
    loop_lag = EventLoopLagMonitor(
        metrics.registry, interval=settings.metrics.event_loop_lag_interval_seconds
    )
    state.llm_metrics = LlmMetrics(
        metrics.registry,
        [model.name for model in settings.models],
        principals=settings.metrics.principal_labels,
        max_principals=settings.metrics.max_principal_labels,
    )
    embedding_batches = BatchMetrics(metrics.registry, "embedding")
    for engine in state.models.engines().values():
        if hasattr(engine, "observe_batches"):  # engines that batch embedding requests
            engine.observe_batches(embedding_batches)
    state.live = LiveConfig(state, embedding_batches=embedding_batches)
    # The sources read state.models when scraped: a reload replaces the registry.
    state.metrics.watch_counters(
        "dtecho_engine_generations",
        "Generations by model and outcome (started, completed, cancelled).",
        ("model", "outcome"),
        lambda: state.models.generation_counts(),
    )
    state.metrics.watch_counters(
        "dtecho_upstream_attempts",
        "Routed upstream attempts by model, deployment and outcome (success, failure, "
        "client_error, cancelled, probe_*); deployment '' holds the model's events (retry, "
        "hedge, hedge_won, hedge_cancelled, fallback:<class>, retry_budget_exhausted, …).",
        ("model", "deployment", "outcome"),
        lambda: state.models.routing_counts(),
    )
    state.metrics.watch_counters(
        "dtecho_breaker_transitions",
        "Circuit breaker transitions by model, deployment and states.",
        ("model", "deployment", "from_state", "to_state"),
        lambda: state.models.breaker_transitions(),
    )
    state.metrics.watch_counters(
        "dtecho_config_reloads",
        "Configuration changes by source (file, api, rollback) and outcome (applied, "
        "rolled_back, rejected, unchanged).",
        ("source", "outcome"),
        state.live.counts,
    )
    state.metrics.watch_counters(
        "dtecho_cache_events",
        "Response cache events: hit (by tier), miss, bypass, coalesced, compute, eviction, "
        "demotion, invalidation, l3_error, l3_corrupt.",
        ("event", "tier"),
        state.cache.cache.counts,
    )
    state.metrics.watch_counters(
        "dtecho_dtesn_operations",
        "DTESN operations by kind and outcome.",
        ("operation", "outcome"),
        state.dtesn.counts,
    )

    _watch_gateway(state)
    _watch_front_door(state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if state.tracing is not None:  # the last to stop: spans of the shutdown get out
                stack.callback(state.tracing.shutdown)
            await _start_loop_lag(loop_lag, stack)
            await _start_resources(state, stack)
            _log.info("started", version=__version__)
            yield
            _log.info("stopping")

    app = FastAPI(
        title="Deep Tree Echo",
        version=__version__,
        summary="Reservoir computing and LLMs behind one OpenAI-compatible API.",
        lifespan=lifespan,
        # dtecho keeps its own metrics, access log and traces (dtecho.observability); FastAPI's
        # native OpenTelemetry instrumentation would duplicate them, and merely asking whether
        # it is on reads three environment variables and three providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        generate_unique_id_function=operation_id,
        # One schema per model: clients get one ``ModelConfig``, not ``-Input``/``-Output``.
        separate_input_output_schemas=False,
    )
    app.state.dtecho = state
    install_openapi(app, settings.auth.public_paths, schemas=OPENAPI_SCHEMAS)
    install_error_handlers(app)
    routers = (health, openai, dtesn, dtesn_models, feedback, cache, pages, admin)
    for module in routers:
        app.include_router(module.router)
    app.state.method_index = MethodIndex(
        [*app.router.routes, *(route for module in routers for route in module.router.routes)]
    )
    # Inside the serving middleware, so fast answers get ids, headers, metrics and logs too;
    # and inside the security layer, so that even a cached answer is authenticated and counted.
    app.add_middleware(CacheFastPath, cache=state.cache.cache, aliases=_LiveAliases(state))
    # The front door: routing outside the auth layer (which then checks the project's policy
    # and limits), the module's instance inside it (only admitted requests start modules).
    app.add_middleware(ModuleDispatch, state=state)
    app.add_middleware(SecurityMiddleware, state=state)
    # The deadline inside the delivery layers (its 504 and closing error event are compressed
    # like any answer), admission outside them: both inside the serving middleware, so that
    # refusals and 504s get ids, metrics and log lines. The deadline covers auth and quota.
    limits = settings.work_limits
    app.add_middleware(
        DeadlineMiddleware,
        deadline_seconds=limits.deadline_seconds,
        model_deadline_seconds=limits.model_deadline_seconds,
        stream_deadline_seconds=limits.stream_deadline_seconds,
    )
    _add_delivery(app, settings)
    # Outside the deadline and delivery layers: they see the module's view of the request
    # (its path, the project's deadline) and treat a module's answers like any other.
    app.add_middleware(FrontDoorMiddleware, state=state)
    app.add_middleware(
        OverloadMiddleware,
        max_in_flight=limits.max_in_flight,
        retry_after_seconds=limits.overload_retry_after_seconds,
        metrics=state.metrics,
    )
    app.add_middleware(
        ServingMiddleware,
        metrics=state.metrics,
        max_body_bytes=settings.max_request_bytes,
        llm_metrics=state.llm_metrics,
        tracing=state.tracing if settings.tracing.hooks else None,
    )
    return app
