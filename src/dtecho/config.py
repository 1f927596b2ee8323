"""Settings: one validated object built at start-up and passed down.

Sources, lowest to highest precedence:

1. defaults declared here;
2. a YAML config file (``--config FILE`` or ``DTECHO_CONFIG_FILE``);
3. the seed project's ``DTESN_CACHE_*`` environment names (e.g. ``DTESN_CACHE_ENABLED``);
4. ``DTECHO_*`` environment variables, nested fields joined by ``__``
   (``DTECHO_CACHE__STRATEGY=aggressive``).

No other module reads the environment: the app factory and the CLI call
:func:`load_settings` and hand the result down. The one exception is OpenTelemetry's own
standard ``OTEL_*`` variables, which the SDK reads itself; :mod:`dtecho.observability.tracing`
lets a ``tracing`` setting given explicitly win over them (docs/tracing.md).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "AuthSettings",
    "BatchingSettings",
    "BreakerSettings",
    "CacheSettings",
    "ConfigError",
    "ControlTowerSettings",
    "DeliverySettings",
    "DeploymentSpec",
    "DtesnModelSpec",
    "DtesnSettings",
    "FallbackSettings",
    "HedgingSettings",
    "InProcessModelSpec",
    "JwtIssuerSettings",
    "LifecycleSettings",
    "LimitProfile",
    "LimitsSettings",
    "MetricsSettings",
    "ModelSpec",
    "ModulesSettings",
    "OpenAIModelSpec",
    "ReloadSettings",
    "RetrySettings",
    "RoutingSettings",
    "Secret",
    "Settings",
    "SloObjective",
    "SloSettings",
    "TracingSettings",
    "WorkLimits",
    "load_settings",
    "redact_url",
    "reload_settings",
    "settings_from_document",
]

MIB = 1024 * 1024

# Flat environment names for nested settings: the seed documents' (001) cache variables, and
# the batching variables the issues name. ``DTECHO_<SECTION>__<FIELD>`` works as well.
ENV_ALIASES: dict[str, tuple[str, str]] = {
    "DTESN_CACHE_ENABLED": ("cache", "enabled"),
    "DTESN_CACHE_STRATEGY": ("cache", "strategy"),
    "DTESN_CACHE_MAX_MEMORY_ENTRIES": ("cache", "max_memory_entries"),
    "DTESN_CACHE_MAX_COMPRESSED_ENTRIES": ("cache", "max_compressed_entries"),
    "DTESN_CACHE_DEFAULT_TTL_SECONDS": ("cache", "default_ttl_seconds"),
    "DTESN_CACHE_REDIS_URL": ("cache", "redis_url"),
    "DTESN_CACHE_COMPRESSION_ENABLED": ("cache", "compression_enabled"),
    "DTESN_CACHE_COMPRESSION_THRESHOLD": ("cache", "compression_threshold"),
    "DTECHO_CACHE_NAMESPACE": ("cache", "namespace"),
    "DTECHO_BATCHING_ENABLED": ("batching", "enabled"),
    "DTECHO_BATCHING_MAX_SIZE": ("batching", "max_size"),
    "DTECHO_BATCHING_MAX_WAIT_MS": ("batching", "max_wait_ms"),
    "DTECHO_BATCHING_QUEUE_SIZE": ("batching", "queue_size"),
    "DTECHO_BATCHING_PARALLEL": ("batching", "parallel"),
    "DTECHO_TRACING_HOOKS": ("tracing", "hooks"),
}


class ConfigError(Exception):
    """The configuration cannot be used; ``str()`` is one line naming the field and the problem.

    ``field`` is the dotted path of the offending setting as a config file spells it
    (``models.0.routing.strategy``), when one is known.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _resolve_plain(value: Any) -> Any:
    # A URL that may hold a password may be a secret reference too; it stays a plain string
    # (the URL's password is redacted wherever it is shown).
    from dtecho.security.secrets import SecretError, is_reference, resolve_secret

    if isinstance(value, str) and is_reference(value):
        try:
            return resolve_secret(value)
        except SecretError as exc:
            raise ValueError(str(exc)) from None
    return value


RedisUrl = Annotated[str | None, BeforeValidator(_resolve_plain)]


class CacheSettings(BaseModel):
    """Response cache (L1 memory → L2 compressed → L3 Redis)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    strategy: Literal["aggressive", "balanced", "conservative", "dynamic"] = "balanced"
    max_memory_entries: int = Field(10_000, gt=0)
    max_compressed_entries: int = Field(50_000, ge=0)
    default_ttl_seconds: float = Field(3600.0, gt=0)
    redis_url: RedisUrl = None
    compression_enabled: bool = True
    compression_threshold: int = Field(1024, ge=0)
    namespace: str = Field("dtecho", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        return _check_redis_scheme(value)


class DtesnSettings(BaseModel):
    """Limits of the DTESN service routes."""

    model_config = ConfigDict(extra="forbid")

    max_input_steps: int = Field(100_000, gt=0)  # bytes of a string input or rows of vectors
    network_cache_size: int = Field(8, ge=1)  # built networks kept for reuse
    stream_heartbeat_seconds: float = Field(10.0, gt=0)


class WorkLimits(BaseModel):
    """Bounded work per request: cost budgets, deadlines and admission (``docs/limits.md``).

    Costs are estimates in *reference seconds* (``dtecho.services.budget``, calibrated by
    ``benchmarks/request_cost.py``); deadlines are wall-clock seconds; None turns one off.
    """

    model_config = ConfigDict(extra="forbid")

    max_sync_cost: float = Field(5.0, gt=0)  # a request answered while the client waits
    max_background_cost: float = Field(900.0, gt=0)  # training jobs, searches, DTESN streams
    deadline_seconds: float | None = Field(60.0, gt=0)  # until an answer starts
    model_deadline_seconds: float | None = Field(600.0, gt=0)  # the same for model routes
    stream_deadline_seconds: float | None = Field(None, gt=0)  # a started stream, in all
    max_in_flight: int | None = Field(512, ge=1)  # requests at once in one worker
    overload_retry_after_seconds: float = Field(1.0, gt=0, le=3600)


class BatchingSettings(BaseModel):
    """Micro-batching of DTESN processing, embeddings and predictions (``dtecho.batching``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    max_size: int = Field(64, ge=1, le=4096)
    max_wait_ms: float = Field(2.0, ge=0, le=1000)
    queue_size: int = Field(1024, ge=1)
    target_latency_ms: float = Field(50.0, gt=0)
    # Batches of one kind computing at once (each in its own thread; the kernels release the
    # GIL); 0: one per CPU this process may use, at most 4.
    parallel: int = Field(0, ge=0, le=64)


def _resolve_reference(value: Any) -> Any:
    # The resolver is a leaf module (stdlib + hvac, no dtecho imports), so settings may use it.
    from dtecho.security.secrets import SecretError, resolve_secret

    if isinstance(value, SecretStr):
        return value
    if not isinstance(value, str):
        return value
    try:
        return SecretStr(resolve_secret(value))
    except SecretError as exc:
        raise ValueError(str(exc)) from None


Secret = Annotated[SecretStr, BeforeValidator(_resolve_reference)]
"""A secret setting: a literal, or a reference ``env:NAME``, ``file:/path`` or
``vault:mount/path#field`` resolved at load. Shown as ``**********`` everywhere."""


class LimitProfile(BaseModel):
    """Limits of one principal (or one principal on one model); ``None`` means unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(None, ge=1)  # requests per minute
    tpm: int | None = Field(None, ge=1)  # tokens (prompt + completion) per minute
    max_parallel: int | None = Field(None, ge=1)  # requests in flight at once
    token_budget: int | None = Field(None, ge=1)  # tokens per budget period
    budget_period: Literal["day", "month"] = "day"


class JwtIssuerSettings(BaseModel):
    """One trusted JWT issuer: where its keys come from and how its claims map to a principal."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(min_length=1)  # the exact ``iss`` claim
    audience: list[str] = Field(default_factory=list)  # ``aud`` must hold one, when given
    jwks_url: str | None = Field(None, pattern=r"^https?://")
    keys: list[Secret] = Field(default_factory=list)  # PEM, a JWK or JWKS as JSON, HS secrets
    algorithms: list[
        Literal[
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
            "ES256", "ES384", "ES512", "EdDSA", "HS256", "HS384", "HS512",
        ]
    ] = Field(default_factory=lambda: ["RS256", "ES256", "EdDSA"], min_length=1)  # fmt: skip
    leeway_seconds: float = Field(30.0, ge=0, le=600)
    required_claims: list[str] = Field(default_factory=lambda: ["exp", "iat"])
    jwks_cache_seconds: float = Field(300.0, gt=0)
    jwks_refetch_interval_seconds: float = Field(10.0, ge=0)  # unknown kid: at most one refetch
    jwks_timeout_seconds: float = Field(5.0, gt=0)
    subject_claim: str = "sub"
    project_claim: str | None = "project"
    roles_claim: str | None = "roles"  # a list or a space-separated string
    scope_claim: str | None = "scope"  # OAuth scopes, read as roles too
    models_claim: str | None = None  # a list of allowed models
    limits_claim: str | None = None  # names a profile of ``limits.profiles``
    default_roles: list[str] = Field(default_factory=list)
    default_limits: LimitProfile | None = None

    @field_validator("audience", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _has_keys(self) -> JwtIssuerSettings:
        if not self.jwks_url and not self.keys:
            raise ValueError("an issuer needs jwks_url or keys")
        if any(alg.startswith("HS") for alg in self.algorithms) and not self.keys:
            raise ValueError("HS* algorithms need a shared secret in keys (never from a JWKS)")
        return self


class AuthSettings(BaseModel):
    """Who may call: ``none`` (every request is the anonymous principal), API keys, JWTs."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["none", "keys", "jwt", "keys+jwt"] = "none"
    admin_key: Secret | None = None  # full access to /admin; a reference such as env:NAME
    key_secret: Secret | None = None  # HMAC secret for stored key digests; default: data_dir
    public_paths: list[str] = Field(
        default_factory=lambda: ["/health/live", "/health/ready", "/metrics"]
    )
    # How long an authenticated key stays in the in-process cache. Default: 0.5 s without Redis
    # (so a revocation is seen within 1 s), 30 s with Redis (revocations are published).
    key_cache_seconds: float | None = Field(None, ge=0, le=3600)
    issuers: list[JwtIssuerSettings] = Field(default_factory=list)
    max_header_bytes: int = Field(16 * 1024, ge=1024)  # all request headers together

    @model_validator(mode="after")
    def _jwt_needs_issuers(self) -> AuthSettings:
        if "jwt" in self.mode and not self.issuers:
            raise ValueError(f"auth.mode {self.mode} needs at least one entry in auth.issuers")
        return self


class LimitsSettings(BaseModel):
    """Per-principal and per-(principal, model) limits (``dtecho.limits``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    default: LimitProfile = Field(default_factory=LimitProfile)  # keys that set none
    anonymous: LimitProfile = Field(default_factory=LimitProfile)  # auth.mode none
    models: dict[str, LimitProfile] = Field(default_factory=dict)  # per principal on a model
    profiles: dict[str, LimitProfile] = Field(default_factory=dict)  # named, for JWT claims
    redis_url: RedisUrl = None  # default: the server-wide redis_url
    on_redis_failure: Literal["local", "deny"] = "local"
    redis_retry_seconds: float = Field(1.0, gt=0)  # after a failure, local limits this long
    default_max_tokens: int = Field(256, ge=1)  # reserved when a request sets no max_tokens
    concurrency_lease_seconds: float = Field(600.0, gt=0)  # a lost replica's slots expire

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        return _check_redis_scheme(value)


_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$"


class _ModelSpecBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_MODEL_NAME)


class DtesnModelSpec(_ModelSpecBase):
    """A native DTESN model: the byte-level echo language model or text features."""

    engine: Literal["dtesn"] = "dtesn"
    task: Literal["generate", "embed"] = "generate"
    path: Path | None = None  # a trained model directory; default: the packaged/trained one


class BreakerSettings(BaseModel):
    """A circuit breaker per deployment, with resilience4j's semantics."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    failure_rate_threshold: float = Field(0.5, gt=0, le=1)  # share of failed calls that opens
    slow_call_rate_threshold: float = Field(1.0, gt=0, le=1)  # share of slow calls that opens
    slow_call_duration_seconds: float = Field(30.0, gt=0)
    sliding_window_size: int = Field(20, ge=1, le=10_000)  # the last N calls
    minimum_number_of_calls: int = Field(10, ge=1)  # before a rate means anything
    wait_duration_open_seconds: float = Field(10.0, gt=0)
    permitted_calls_in_half_open: int = Field(3, ge=1)


class RetrySettings(BaseModel):
    """Retries of failed upstream attempts: backoff with full jitter, within a budget."""

    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(3, ge=1, le=10)  # attempts in all, the first included
    on_status: list[int] = Field(default_factory=lambda: [429, 500, 502, 503, 504])
    on_connect_error: bool = True
    on_timeout: bool = True
    backoff_initial_seconds: float = Field(0.05, ge=0)
    backoff_max_seconds: float = Field(2.0, ge=0)
    max_retry_after_seconds: float = Field(5.0, ge=0)  # a longer retry-after is not waited for
    budget_ratio: float = Field(0.1, ge=0, le=1)  # retries ≤ this share of recent requests …
    # … or this many per window, whichever is more: enough, at low traffic, for the failures a
    # breaker needs to see (minimum_number_of_calls) on a few deployments before it opens.
    budget_min_retries: int = Field(30, ge=0)
    budget_window_seconds: float = Field(10.0, gt=0)


class HedgingSettings(BaseModel):
    """A second attempt to another deployment when the first is slow to answer."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    delay_seconds: float | None = Field(None, gt=0)  # None: the deployment's recent p95
    min_delay_seconds: float = Field(0.005, ge=0)
    budget_ratio: float = Field(0.05, ge=0, le=1)  # extra upstream requests at most


class FallbackSettings(BaseModel):
    """Ordered chains of other served models to try, by the class of the failure."""

    model_config = ConfigDict(extra="forbid")

    rate_limited: list[str] = Field(default_factory=list)
    unavailable: list[str] = Field(default_factory=list)  # 5xx, timeouts, breakers open
    context_window: list[str] = Field(default_factory=list)
    content_policy: list[str] = Field(default_factory=list)
    default: list[str] = Field(default_factory=list)  # any other failure


class RoutingSettings(BaseModel):
    """How a model's requests are spread over its deployments and survive their failures."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["weighted", "least_in_flight", "lowest_latency", "power_of_two"] = "weighted"
    exploration: float = Field(0.05, ge=0, le=1)  # lowest_latency: share sent at random
    retries: RetrySettings = Field(default_factory=RetrySettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    hedging: HedgingSettings = Field(default_factory=HedgingSettings)
    fallbacks: FallbackSettings = Field(default_factory=FallbackSettings)
    health_check_interval_seconds: float | None = Field(10.0, gt=0)  # None: no active probes


class DeploymentSpec(BaseModel):
    """One OpenAI-compatible upstream serving a model."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
    base_url: str = Field(pattern=r"^https?://")
    upstream_model: str | None = None  # default: the served model's name
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    api_key: Secret | None = None  # a literal or a reference (env:, file:, vault:)
    weight: float = Field(1.0, gt=0)
    rpm: int | None = Field(None, ge=1)  # this deployment's own capacity, skipped at it
    tpm: int | None = Field(None, ge=1)
    timeout_seconds: float = Field(600.0, gt=0)  # total
    connect_timeout_seconds: float = Field(5.0, gt=0)
    first_byte_timeout_seconds: float | None = Field(None, gt=0)  # until the answer starts
    between_tokens_timeout_seconds: float | None = Field(None, gt=0)  # streams
    max_connections: int = Field(256, ge=1)
    tags: list[str] = Field(default_factory=list)


class OpenAIModelSpec(_ModelSpecBase):
    """Any OpenAI-compatible upstream (Aphrodite ``aphrodite run``, vLLM, llama.cpp, Ollama, …).

    Either one upstream (``base_url`` and the fields beside it) or several ``deployments``.
    """

    engine: Literal["openai"]
    base_url: str | None = Field(None, pattern=r"^https?://")
    upstream_model: str | None = None  # default: the same name as ``name``
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    api_key: Secret | None = None  # a literal or a reference (env:, file:, vault:)
    timeout_seconds: float = Field(600.0, gt=0)
    connect_timeout_seconds: float = Field(5.0, gt=0)
    max_connections: int = Field(256, ge=1)
    deployments: list[DeploymentSpec] = Field(default_factory=list)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)

    @model_validator(mode="after")
    def _one_way_to_name_upstreams(self) -> OpenAIModelSpec:
        if self.base_url and self.deployments:
            raise ValueError("give base_url or deployments, not both")
        if not self.base_url and not self.deployments:
            raise ValueError("an openai model needs base_url or deployments")
        names = [d.name for d in self.deployments if d.name]
        if len(names) != len(set(names)):
            raise ValueError("deployment names must be unique within a model")
        return self

    def deployment_list(self) -> list[DeploymentSpec]:
        """The deployments, the single-upstream form being a list of one."""
        if self.deployments:
            return [
                d if d.name else d.model_copy(update={"name": f"{self.name}-{i}"})
                for i, d in enumerate(self.deployments)
            ]
        return [
            DeploymentSpec(
                name=self.name,
                base_url=self.base_url or "",
                upstream_model=self.upstream_model,
                api_key_env=self.api_key_env,
                api_key=self.api_key,
                timeout_seconds=self.timeout_seconds,
                connect_timeout_seconds=self.connect_timeout_seconds,
                max_connections=self.max_connections,
            )
        ]


class InProcessModelSpec(_ModelSpecBase):
    """A model run in this process by Aphrodite Engine or vLLM (optional extras, GPU)."""

    engine: Literal["aphrodite", "vllm"]
    model: str  # a Hugging Face model id or local directory
    engine_args: dict[str, Any] = Field(default_factory=dict)


ModelSpec = Annotated[
    DtesnModelSpec | OpenAIModelSpec | InProcessModelSpec, Field(discriminator="engine")
]


class ReloadSettings(BaseModel):
    """Live configuration changes (``dtecho.server.live``, ``POST /admin/config/reload``)."""

    model_config = ConfigDict(extra="forbid")

    watch: bool = True  # re-apply the config file when it changes (if the server has one)
    # After a swap, the new models must stay ready (and new deployments answer) this long,
    # or the previous configuration comes back.
    probation_seconds: float = Field(5.0, ge=0, le=300)


class ControlTowerSettings(BaseModel):
    """Where the front door fetches project manifests from (``dtecho.modules``).

    ``GET <url>`` answers ``{"manifests": [...]}`` (JSON, or YAML by content type), with an
    ``ETag``; the front door polls it with ``If-None-Match``. What it last validated is kept
    on disk and in Redis as the last known good (docs/modules.md).
    """

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, pattern=r"^https?://")
    token: Secret | None = None  # sent as ``Authorization: Bearer …``; a reference such as env:X
    timeout: float = Field(5.0, gt=0, le=120)  # seconds per attempt
    retries: int = Field(3, ge=0, le=10)  # attempts after the first, backing off with jitter
    poll_interval_seconds: float = Field(30.0, ge=0.1, le=86400)


class LifecycleSettings(BaseModel):
    """Trained models' lifecycle (``dtecho.registry``, docs/lifecycle.md)."""

    model_config = ConfigDict(extra="forbid")

    # Stored observations older than this are deleted (the learner's data, erasable by subject).
    observation_retention_days: float = Field(30.0, gt=0, le=36500)


class ModulesSettings(BaseModel):
    """The front door's module pool and the manifest directory (``dtecho.modules``)."""

    model_config = ConfigDict(extra="forbid")

    manifest_dir: Path | None = None  # *.json / *.yaml manifests, one project each; watched
    pool_size: int = Field(32, ge=1, le=10_000)  # instances kept; least recently used go first
    idle_seconds: float = Field(900.0, gt=0)  # an instance unused this long is closed
    health_check_interval: float = Field(30.0, gt=0, le=3600)  # seconds between checks
    # A module that failed to start answers 503 and is retried after this, doubling to 60 s.
    retry_backoff_seconds: float = Field(1.0, gt=0, le=60)
    close_timeout_seconds: float = Field(30.0, ge=0, le=600)  # in-flight requests of a swap


class StatusPageSettings(BaseModel):
    """The live status page's in-process history (``/`` and ``/status``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    history_interval_seconds: float = Field(10.0, ge=0.1, le=600)  # one sample, one point
    history_window_seconds: float = Field(3600.0, ge=1, le=86400)  # what the charts cover

    @model_validator(mode="after")
    def _interval_within_window(self) -> StatusPageSettings:
        if self.history_interval_seconds > self.history_window_seconds:
            raise ValueError("history_interval_seconds must not exceed history_window_seconds")
        return self


class DeliverySettings(BaseModel):
    """How answers go out: compression by ``Accept-Encoding`` and HTTP caching (``ETag``,
    ``304``, ``Cache-Control``) of the cacheable GET resources. See docs/delivery.md."""

    model_config = ConfigDict(extra="forbid")

    compression: bool = True
    # Smaller bodies go out as they are: below about a kilobyte the codec's framing and CPU
    # outweigh the bytes saved (most of them fit one TCP segment anyway).
    compression_min_bytes: int = Field(1024, ge=0)
    # Level 1 of both: compression runs on the event loop, and higher levels cost two to three
    # times the CPU for a few percent fewer bytes on our JSON (benchmarks/compression.py).
    gzip_level: int = Field(1, ge=1, le=9)
    zstd: bool = True  # offered to clients that accept ``zstd``; gzip is always offered
    zstd_level: int = Field(1, ge=1, le=19)
    etags: bool = True  # ETag, If-None-Match and Cache-Control on the cacheable GETs
    # max-age of the resources that only change with the server's version (B-series tables).
    public_max_age_seconds: int = Field(86400, ge=0)


class TracingSettings(BaseModel):
    """OpenTelemetry traces (``dtecho.observability.tracing``; docs/tracing.md).

    A field set here (in the config file or as ``DTECHO_TRACING__<FIELD>``) wins over the
    matching standard ``OTEL_*`` variable; a field left unset falls back to that variable, then
    to the default below. ``OTEL_SDK_DISABLED=true`` turns tracing off whatever is set here.
    """

    model_config = ConfigDict(extra="forbid")

    # Off by default. Left unset, OTEL_TRACES_EXPORTER naming an exporter turns it on.
    enabled: bool = False
    # Unset: OTEL_TRACES_EXPORTER and OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL, else otlp_http.
    exporter: Literal["otlp_http", "otlp_grpc", "none"] = "otlp_http"
    # The collector: http(s)://host:port (otlp_http appends /v1/traces to a URL without a
    # path). Unset: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT.
    endpoint: str | None = Field(None, pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=2048)
    # Sent with every export (say an API key of a hosted collector); values may be secret
    # references. Unset: OTEL_EXPORTER_OTLP_TRACES_HEADERS / OTEL_EXPORTER_OTLP_HEADERS.
    headers: dict[str, Secret] | None = None
    # Unset: OTEL_SERVICE_NAME (or service.name in OTEL_RESOURCE_ATTRIBUTES), else "dtecho".
    service_name: str = Field("dtecho", min_length=1, max_length=255)
    # The share of new traces recorded; a request carrying a traceparent follows its parent's
    # decision (parent-based). Unset: OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG.
    sample_ratio: float = Field(1.0, ge=0, le=1)
    # Finished spans waiting for export; past this they are dropped (and counted).
    max_queue_size: int = Field(2048, ge=1, le=1_000_000)
    max_export_batch_size: int = Field(512, ge=1, le=100_000)
    schedule_delay_seconds: float = Field(1.0, gt=0, le=60)  # longest wait before an export
    # One export call, its retries included. Unset: OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT, else 10.
    export_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # The most a shutdown waits for the last exports; what is left is dropped (and counted).
    shutdown_timeout_seconds: float = Field(5.0, ge=0, le=300)
    # Benchmark baseline only: false builds the app without the tracing call sites at all
    # (DTECHO_TRACING_HOOKS=0), what benchmarks/tracing_overhead.py compares "off" against.
    hooks: bool = True

    @model_validator(mode="after")
    def _batch_within_queue(self) -> TracingSettings:
        if self.max_export_batch_size > self.max_queue_size:
            raise ValueError("max_export_batch_size must not exceed max_queue_size")
        return self


class MetricsSettings(BaseModel):
    """Label bounds and runtime probes of the Prometheus metrics (docs/observability.md)."""

    model_config = ConfigDict(extra="forbid")

    # dtecho_model_requests_total{principal}: the first N distinct principals seen keep their
    # own label, later ones read "other" (anonymous requests: "anonymous") ...
    max_principal_labels: int = Field(50, ge=0, le=10_000)
    # ... unless this list is given: then exactly these principals keep their own label.
    principal_labels: list[str] | None = Field(None, max_length=10_000)
    # dtecho_event_loop_lag_seconds: how often the lag probe sleeps and measures its oversleep.
    event_loop_lag_interval_seconds: float = Field(0.25, gt=0, le=60)


_DURATION_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}


class SloObjective(BaseModel):
    """One service level objective; ``dtecho slo rules`` turns it into Prometheus rules.

    ``availability``: good events are answers that are not 5xx. ``latency``: good events are
    answers within ``threshold_seconds``, which must be a bucket bound of the histogram read:
    ``dtecho_http_request_duration_seconds`` for a route (or every API route),
    ``dtecho_e2e_request_latency_seconds`` for a model. ``route`` (a route template such as
    ``/v1/chat/completions``) or ``model`` (a served model) selects the requests; neither
    means every API route (``/v1/…``). ``window`` is the SLO period the error budget covers.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    kind: Literal["availability", "latency"]
    # No quotes or backslashes: the value goes into PromQL label matchers as is.
    route: str | None = Field(None, pattern=r'^/[^"\\\s]{0,255}$')
    model: str | None = Field(None, pattern=_MODEL_NAME)
    objective: float = Field(gt=0, lt=1)  # the share of good events, e.g. 0.999
    threshold_seconds: float | None = Field(None, gt=0)
    window: str = Field("30d", pattern=r"^[1-9][0-9]{0,3}[hdw]$")  # Prometheus duration

    @property
    def window_seconds(self) -> int:
        return int(self.window[:-1]) * _DURATION_UNITS[self.window[-1]]

    @model_validator(mode="after")
    def _consistent(self) -> SloObjective:
        from dtecho.observability.buckets import E2E_LATENCY_BUCKETS, LATENCY_BUCKETS

        if self.route is not None and self.model is not None:
            raise ValueError(
                "give route or model, not both: the per-model series carry no route label"
            )
        if self.kind == "availability" and self.threshold_seconds is not None:
            raise ValueError("threshold_seconds is for latency objectives only")
        if self.kind == "latency":
            if self.model is not None:
                bounds, histogram = E2E_LATENCY_BUCKETS, "dtecho_e2e_request_latency_seconds"
            else:
                bounds, histogram = LATENCY_BUCKETS, "dtecho_http_request_duration_seconds"
            if self.threshold_seconds is None:
                raise ValueError("a latency objective needs threshold_seconds")
            if self.threshold_seconds not in bounds:
                raise ValueError(
                    f"threshold_seconds {self.threshold_seconds:g} is not a bucket bound of "
                    f"{histogram}; use one of {', '.join(f'{b:g}' for b in bounds)}"
                )
        if self.window_seconds < 3 * 86400:
            raise ValueError("window must be at least 3d, the longest burn-rate alert window")
        return self


def _default_objectives() -> list[SloObjective]:
    return [
        SloObjective(
            name="chat-completions-availability",
            kind="availability",
            route="/v1/chat/completions",
            objective=0.999,
        ),
        SloObjective(
            name="chat-completions-latency",
            kind="latency",
            route="/v1/chat/completions",
            objective=0.99,
            threshold_seconds=2.5,
        ),
        SloObjective(name="api-availability", kind="availability", objective=0.995),
    ]


class SloSettings(BaseModel):
    """Service level objectives (docs/observability.md): the status page reports them and
    ``dtecho slo rules`` writes their Prometheus recording and burn-rate alert rules."""

    model_config = ConfigDict(extra="forbid")

    objectives: list[SloObjective] = Field(default_factory=_default_objectives)

    @field_validator("objectives")
    @classmethod
    def _unique_names(cls, objectives: list[SloObjective]) -> list[SloObjective]:
        names = [o.name for o in objectives]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"objective names must be unique; repeated: {', '.join(repeated)}")
        return objectives


def _default_models() -> list[Any]:
    return [
        DtesnModelSpec(name="dtesn-echo", task="generate"),
        DtesnModelSpec(name="dtesn-embed", task="embed"),
    ]


class Settings(BaseSettings):
    """Every setting of a dtecho server process."""

    model_config = SettingsConfigDict(
        env_prefix="DTECHO_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    data_dir: Path = Field(default_factory=lambda: Path.home() / ".local" / "share" / "dtecho")
    max_request_bytes: int = Field(10 * MIB, gt=0)
    redis_url: RedisUrl = None
    redis_timeout_seconds: float = Field(0.05, gt=0, le=30)
    shutdown_timeout_seconds: float = Field(30.0, ge=0)
    drain_delay_seconds: float = Field(2.0, ge=0, le=300)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    models: list[ModelSpec] = Field(default_factory=_default_models, min_length=1)
    dtesn: DtesnSettings = Field(default_factory=DtesnSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    work_limits: WorkLimits = Field(default_factory=WorkLimits)
    # The store: SQLite in data_dir by default; ``postgresql+asyncpg://…`` for a shared one.
    # May be a secret reference (it can hold a password).
    database_url: Secret | None = None
    database_auto_migrate: bool = True  # apply Alembic migrations at start-up
    usage_flush_seconds: float = Field(1.0, gt=0, le=300)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    reload: ReloadSettings = Field(default_factory=ReloadSettings)
    status_page: StatusPageSettings = Field(default_factory=StatusPageSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    slo: SloSettings = Field(default_factory=SloSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    modules: ModulesSettings = Field(default_factory=ModulesSettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    control_tower: ControlTowerSettings = Field(default_factory=ControlTowerSettings)

    # Where these settings came from (set by load_settings), so that a live reload reads the
    # same sources again: the config file and the explicit overrides.
    _config_file: Path | None = PrivateAttr(None)
    _overrides: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("models")
    @classmethod
    def _unique_model_names(cls, models: list[Any]) -> list[Any]:
        names = [model.name for model in models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        return models

    @model_validator(mode="after")
    def _objectives_name_served_models(self) -> Settings:
        served = {model.name for model in self.models}
        for objective in self.slo.objectives:
            if objective.model is not None and objective.model not in served:
                raise ValueError(
                    f"slo objective {objective.name!r} names model {objective.model!r}, "
                    "which is not served"
                )
        return self

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        return _check_redis_scheme(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Init kwargs carry the config file's contents, so they rank *below* the environment:
        # an operator can always override a file with a variable.
        return (
            _OverrideSource(settings_cls),
            env_settings,
            _AliasEnvSource(settings_cls),
            init_settings,
        )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.match(
            r"^(sqlite\+aiosqlite|postgresql\+asyncpg)://", value.get_secret_value()
        ):
            raise ValueError("must be a sqlite+aiosqlite:// or postgresql+asyncpg:// URL")
        return value

    @property
    def config_file(self) -> Path | None:
        """The YAML file these settings were loaded from, if any."""
        return self._config_file

    @property
    def store_url(self) -> str:
        """The SQLAlchemy URL of the store: ``database_url``, else SQLite in ``data_dir``."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite+aiosqlite:///{self.data_dir / 'dtecho.db'}"

    @property
    def limits_redis_url(self) -> str | None:
        """The Redis shared limits use: their own URL, else the server-wide one."""
        return self.limits.redis_url or self.redis_url

    @property
    def cache_redis_url(self) -> str | None:
        """The Redis the cache uses: its own URL, else the server-wide one."""
        return self.cache.redis_url or self.redis_url

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain data, with passwords in URLs replaced by ``***``."""
        data = self.model_dump(mode="json")
        data["redis_url"] = redact_url(data["redis_url"])
        data["cache"]["redis_url"] = redact_url(data["cache"]["redis_url"])
        data["limits"]["redis_url"] = redact_url(data["limits"]["redis_url"])
        # SQLAlchemy's own parser: a password may hold "/", which redact_url would show.
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            data["store_url"] = make_url(self.store_url).render_as_string(hide_password=True)
        except (ArgumentError, ValueError):  # unparseable (say a bad port): show none of it
            data["store_url"] = "**********"
        return data


def _check_redis_scheme(value: str | None) -> str | None:
    if value is not None and not re.match(r"^(redis|rediss|unix)://", value):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return value


# Overrides given to load_settings (the command line) for the Settings being built right now.
_overrides: ContextVar[dict[str, Any] | None] = ContextVar("dtecho_overrides", default=None)


class _OverrideSource(PydanticBaseSettingsSource):
    """Explicit overrides, above the environment."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_overrides.get() or {})


class _AliasEnvSource(PydanticBaseSettingsSource):
    """Maps the flat names of :data:`ENV_ALIASES` onto their nested settings."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, dict[str, str]] = {}
        for name, (section, field) in ENV_ALIASES.items():
            if name in os.environ:
                found.setdefault(section, {})[field] = os.environ[name]
        return found


def redact_url(url: str | None) -> str | None:
    """Replace the password of a URL (``scheme://user:secret@host``) with ``***``."""
    if url is None:
        return None
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings at the top level")
    return data


def _field(error: Mapping[str, Any]) -> str:
    """The error's location as a config file spells it: without the union tag pydantic adds
    (``models.0.openai.routing`` is ``models.0.routing`` in the file)."""
    parts = [str(part) for part in error["loc"]]
    if len(parts) > 2 and parts[0] == "models" and parts[2] in _ENGINE_TAGS:
        del parts[2]
    return ".".join(parts) or "settings"


_ENGINE_TAGS = frozenset({"dtesn", "openai", "aphrodite", "vllm"})


def _describe(error: Mapping[str, Any]) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "settings"
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown setting"
    value = error.get("input")
    shown = "" if error["type"] in {"extra_forbidden", "missing"} else f" (got {value!r})"
    if any(part in field for part in ("redis_url", "database_url", "key", "secret", "headers")):
        shown = ""  # may hold a password or a secret
    if isinstance(value, dict | list):
        shown = ""  # a section or list (auth, models) may hold a nested secret's literal value
    return f"invalid setting {field}: {message}{shown}"


def _build(
    file_data: Mapping[str, Any], config_file: Path | None, overrides: dict[str, Any]
) -> Settings:
    token = _overrides.set(overrides)
    try:
        settings = Settings(**file_data)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(_describe(error), field=_field(error)) from None
    finally:
        _overrides.reset(token)
    settings._config_file = config_file
    settings._overrides = dict(overrides)
    return settings


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build the settings from defaults, a YAML file, the environment and ``overrides``.

    ``config_file`` defaults to ``$DTECHO_CONFIG_FILE``. ``overrides`` (e.g. ``port=0`` from
    the command line) rank above everything else. Raises :class:`ConfigError` with one line
    naming the first invalid field.
    """
    if config_file is None:
        config_file = os.environ.get("DTECHO_CONFIG_FILE") or None
    path = Path(config_file).absolute() if config_file else None
    file_data = _read_config_file(path) if path else {}
    return _build(file_data, path, overrides)


def reload_settings(settings: Settings) -> Settings:
    """Read ``settings``' sources again: the same config file and overrides, the environment
    as it is now. Raises :class:`ConfigError` like :func:`load_settings`."""
    path = settings.config_file
    return _build(_read_config_file(path) if path else {}, path, dict(settings._overrides))


def settings_from_document(document: Mapping[str, Any], *, like: Settings) -> Settings:
    """Settings from ``document`` (what a config file would hold) in place of ``like``'s file,
    with ``like``'s overrides and the environment above it, as at start-up."""
    return _build(document, like.config_file, dict(like._overrides))
