"""What a module type is, and what the front door gives each instance.

A *module type* is a subclass of :class:`Module`, registered as an entry point of the group
``dtecho.modules`` (``rag = "dtecho.modules.types.rag:RagModule"``). A project's manifest
names types; the pool makes one instance per (project, module) with a :class:`ModuleContext`
and the module's validated ``Config``, starts it lazily, health-checks it and closes it.

An instance serves its routes in one of two ways:

* as an ASGI app (``__call__``): the front door calls it with ``scope["path"]`` the rest of
  the URL after ``/{project}/{module}`` and ``scope["root_path"]`` that prefix, after auth,
  limits and the project's policy have admitted the request;
* through the plain API (``builtin = "openai"`` or ``"dtesn"``): the request goes on to the
  built-in routes with :meth:`Module.overrides` in ``scope["state"]`` (its own models, its own
  DTESN model store, request rewriting), so it gets the cache, batching and metrics as is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict
from starlette.types import Receive, Scope, Send

__all__ = [
    "ENTRY_POINT_GROUP",
    "EmptyConfig",
    "Module",
    "ModuleContext",
    "ModuleServices",
    "installed_types",
]

ENTRY_POINT_GROUP = "dtecho.modules"


class EmptyConfig(BaseModel):
    """The configuration of a type that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class ModuleServices:
    """The server's parts a module may use. Callables where a reload replaces the part."""

    models: Callable[[], Any]  # the current dtecho.engines.registry.ModelRegistry
    settings: Callable[[], Any]  # the current dtecho.config.Settings
    dtesn: Any = None  # dtecho.services.dtesn_service.DtesnService
    dtesn_models: Any = None  # dtecho.services.dtesn_models.ModelService: the server's models
    store: Any = None  # dtecho.store.Store (SQLite by default, PostgreSQL when configured)
    redis: Any = None  # redis.asyncio.Redis, or None without Redis
    metrics_registry: Any = None  # prometheus_client.CollectorRegistry of the app
    batch_metrics: Mapping[str, Any] = field(default_factory=dict)  # shared BatchMetrics


@dataclass(frozen=True)
class ModuleContext:
    """Where one instance lives: its project, its name, its files, its secrets."""

    project: str
    module: str
    version: str
    data_dir: Path  # <data_dir>/projects/<project>/<module>/, the instance's own files
    secrets: Mapping[str, str]  # the manifest's secret references, resolved
    services: ModuleServices

    @property
    def prefix(self) -> str:
        """The URL prefix of the module's routes."""
        return f"/{self.project}/{self.module}"


class Module:
    """Base of module types; override what the type needs.

    Subclasses set ``Config`` (a pydantic model of the manifest's ``config``; unknown fields
    are an error) and either implement ``__call__`` (own routes) or set ``builtin``.
    """

    Config: ClassVar[type[BaseModel]] = EmptyConfig
    builtin: ClassVar[Literal["openai", "dtesn"] | None] = None
    description: ClassVar[str] = ""
    rewrites: bool = False  # whether the front door hands model call bodies to rewrite()

    def __init__(self, context: ModuleContext, config: BaseModel) -> None:
        self.context = context
        self.config = config

    async def start(self) -> None:
        """Open what the instance needs; raising marks the module failed (503, retried)."""

    async def check(self) -> None:
        """Raise if the instance is unhealthy (run on the pool's health interval)."""

    async def close(self) -> None:
        """Release everything; called once, after the requests in flight finished."""

    def overrides(self) -> Mapping[str, Any]:
        """For ``builtin`` types: what the plain API's routes read from ``scope["state"]``."""
        return {}

    async def rewrite(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """For ``builtin`` types: the JSON body of a model call (``path`` is the rest, e.g.
        ``/v1/chat/completions``) as the plain route should see it (aliases, defaults)."""
        return body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request on the module's own routes."""
        raise NotImplementedError(f"{type(self).__name__} serves no routes of its own")


def installed_types() -> dict[str, type[Module]]:
    """The module types installed in this environment, by entry point name.

    A type whose entry point cannot be imported is left out (and named by the catalog when a
    manifest asks for it): one broken plug-in must not stop the others.
    """
    types: dict[str, type[Module]] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = point.load()
        except Exception:
            continue
        if isinstance(loaded, type) and issubclass(loaded, Module):
            types[point.name] = loaded
    return types
