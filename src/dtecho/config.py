"""Settings: one validated object built at start-up and passed down.

Sources, lowest to highest precedence:

1. defaults declared here;
2. a YAML config file (``--config FILE`` or ``DTECHO_CONFIG_FILE``);
3. the seed project's ``DTESN_CACHE_*`` environment names (e.g. ``DTESN_CACHE_ENABLED``);
4. ``DTECHO_*`` environment variables, nested fields joined by ``__``
   (``DTECHO_CACHE__STRATEGY=aggressive``).

No other module reads the environment: the app factory and the CLI call
:func:`load_settings` and hand the result down.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "BatchingSettings",
    "CacheSettings",
    "ConfigError",
    "DtesnModelSpec",
    "DtesnSettings",
    "InProcessModelSpec",
    "ModelSpec",
    "OpenAIModelSpec",
    "Settings",
    "load_settings",
    "redact_url",
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
}


class ConfigError(Exception):
    """The configuration cannot be used; ``str()`` is one line naming the field and the problem."""


class CacheSettings(BaseModel):
    """Response cache (L1 memory → L2 compressed → L3 Redis)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    strategy: Literal["aggressive", "balanced", "conservative", "dynamic"] = "balanced"
    max_memory_entries: int = Field(10_000, gt=0)
    max_compressed_entries: int = Field(50_000, ge=0)
    default_ttl_seconds: float = Field(3600.0, gt=0)
    redis_url: str | None = None
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


_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$"


class _ModelSpecBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_MODEL_NAME)


class DtesnModelSpec(_ModelSpecBase):
    """A native DTESN model: the byte-level echo language model or text features."""

    engine: Literal["dtesn"] = "dtesn"
    task: Literal["generate", "embed"] = "generate"
    path: Path | None = None  # a trained model directory; default: the packaged/trained one


class OpenAIModelSpec(_ModelSpecBase):
    """Any OpenAI-compatible upstream (Aphrodite ``aphrodite run``, vLLM, llama.cpp, Ollama, …)."""

    engine: Literal["openai"]
    base_url: str = Field(pattern=r"^https?://")
    upstream_model: str | None = None  # default: the same name as ``name``
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout_seconds: float = Field(600.0, gt=0)
    connect_timeout_seconds: float = Field(5.0, gt=0)
    max_connections: int = Field(256, ge=1)


class InProcessModelSpec(_ModelSpecBase):
    """A model run in this process by Aphrodite Engine or vLLM (optional extras, GPU)."""

    engine: Literal["aphrodite", "vllm"]
    model: str  # a Hugging Face model id or local directory
    engine_args: dict[str, Any] = Field(default_factory=dict)


ModelSpec = Annotated[
    DtesnModelSpec | OpenAIModelSpec | InProcessModelSpec, Field(discriminator="engine")
]


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
    redis_url: str | None = None
    redis_timeout_seconds: float = Field(0.05, gt=0, le=30)
    shutdown_timeout_seconds: float = Field(30.0, ge=0)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    models: list[ModelSpec] = Field(default_factory=_default_models, min_length=1)
    dtesn: DtesnSettings = Field(default_factory=DtesnSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)

    @field_validator("models")
    @classmethod
    def _unique_model_names(cls, models: list[Any]) -> list[Any]:
        names = [model.name for model in models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        return models

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

    @property
    def cache_redis_url(self) -> str | None:
        """The Redis the cache uses: its own URL, else the server-wide one."""
        return self.cache.redis_url or self.redis_url

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain data, with passwords in URLs replaced by ``***``."""
        data = self.model_dump(mode="json")
        data["redis_url"] = redact_url(data["redis_url"])
        data["cache"]["redis_url"] = redact_url(data["cache"]["redis_url"])
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


def _describe(error: Mapping[str, Any]) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "settings"
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown setting"
    value = error.get("input")
    shown = "" if error["type"] in {"extra_forbidden", "missing"} else f" (got {value!r})"
    if "redis_url" in field:
        shown = ""  # may hold a password
    return f"invalid setting {field}: {message}{shown}"


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build the settings from defaults, a YAML file, the environment and ``overrides``.

    ``config_file`` defaults to ``$DTECHO_CONFIG_FILE``. ``overrides`` (e.g. ``port=0`` from
    the command line) rank above everything else. Raises :class:`ConfigError` with one line
    naming the first invalid field.
    """
    if config_file is None:
        config_file = os.environ.get("DTECHO_CONFIG_FILE") or None
    file_data = _read_config_file(Path(config_file)) if config_file else {}
    token = _overrides.set(overrides)
    try:
        return Settings(**file_data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0])) from None
    finally:
        _overrides.reset(token)
