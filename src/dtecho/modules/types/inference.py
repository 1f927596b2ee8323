"""``inference_openai``: the OpenAI API for one project, over the router's deployments.

The module serves ``/{project}/{module}/v1/models``, ``/chat/completions``, ``/completions``
and ``/embeddings`` through the plain API's own routes (cache, batching, limits and metrics
included), with the project's view of the models:

* ``models``: the project's own models, in the server's ``models`` schema: deployments with
  their API keys as secret references, weights, caps, routing (the project's provider
  credentials never reach another project);
* ``aliases``: project names for served models (the server's, or the project's own);
* ``expose``: server models the project sees under their own names (none by default);
* ``defaults``: request fields filled in when the client leaves them out, per model or alias;
* ``default_model``: the model of a request that names none.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dtecho.config import ModelSpec
from dtecho.engines.registry import ModelRegistry
from dtecho.modules.base import Module

__all__ = ["CACHE_SCOPE", "MODELS_OVERRIDE", "InferenceConfig", "InferenceModule"]

MODELS_OVERRIDE = "models"  # scope["state"] key: the ModelRegistry the routes serve from
CACHE_SCOPE = "cache_scope"  # scope["state"] key: what keeps this view's cache entries apart
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$"


class InferenceConfig(BaseModel):
    """The ``config`` of an ``inference_openai`` module."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec] = Field(default_factory=list)
    aliases: dict[str, str] = Field(default_factory=dict)
    expose: list[str] | Literal["all"] = Field(default_factory=list)
    defaults: dict[str, dict[str, Any]] = Field(default_factory=dict)
    default_model: str | None = None

    @field_validator("aliases")
    @classmethod
    def _alias_names(cls, aliases: dict[str, str]) -> dict[str, str]:
        import re

        for alias in aliases:
            if not re.match(_NAME, alias):
                raise ValueError(f"alias '{alias}' is not a valid model name")
        return aliases

    @model_validator(mode="after")
    def _names_resolve(self) -> InferenceConfig:
        own = [spec.name for spec in self.models]
        if len(own) != len(set(own)):
            raise ValueError("model names must be unique within the module")
        clash = sorted(set(own) & set(self.aliases))
        if clash:
            raise ValueError(f"an alias may not be named like one of the models: {clash}")
        for name, fields in self.defaults.items():
            if "model" in fields or "stream" in fields:
                raise ValueError(f"defaults.{name}: 'model' and 'stream' cannot be defaulted")
        return self


class InferenceModule(Module):
    """The OpenAI API of one project (see the module docstring)."""

    Config: ClassVar[type[BaseModel]] = InferenceConfig
    builtin: ClassVar[Literal["openai", "dtesn"] | None] = "openai"
    description: ClassVar[str] = "OpenAI-compatible endpoints over the project's models."

    config: InferenceConfig

    async def start(self) -> None:
        settings = self.context.services.settings()
        self._stack = AsyncExitStack()
        self._own = ModelRegistry.from_specs(self.config.models, settings)
        await self._own.start(self._stack)
        self._view: tuple[int, ModelRegistry, str] | None = None
        self._overrides: tuple[Any, dict[str, Any]] | None = None
        # Bodies are rewritten only when there is something to fill in.
        self.rewrites = bool(self.config.defaults or self.config.default_model)
        # Resolved now, so that a name pointing nowhere fails the start, not a request.
        self._registry()

    async def close(self) -> None:
        await self._stack.aclose()

    async def check(self) -> None:
        for engine in self._own.engines().values():
            await engine.check_ready()

    def _registry(self) -> tuple[ModelRegistry, str]:
        """The project's models over the server's current ones (rebuilt after a reload)."""
        served: ModelRegistry = self.context.services.models()
        if self._view is not None and self._view[0] == id(served):
            return self._view[1], self._view[2]
        server = served.engines()
        own = self._own.engines()
        targets: dict[str, tuple[str, str]] = {name: ("own", name) for name in own}
        exposed = list(server) if self.config.expose == "all" else self.config.expose
        for name in exposed:
            if name not in server:
                raise ValueError(f"expose: '{name}' is not a served model")
            targets.setdefault(name, ("server", name))
        for alias, target in self.config.aliases.items():
            if target in own:
                targets[alias] = ("own", target)
            elif target in server:
                targets[alias] = ("server", target)
            else:
                raise ValueError(f"aliases.{alias}: '{target}' is not a served model")
        registry = ModelRegistry(
            {
                name: (own if origin == "own" else server)[target]
                for name, (origin, target) in targets.items()
            }
        )
        # Cache entries of this view must not answer another project's identical request, nor
        # survive a change of what its names point at (the specs, as the plain cache keys do).
        specs = {
            "own": {spec.name: spec.model_dump(mode="json") for spec in self.config.models},
            "server": {
                spec.name: spec.model_dump(mode="json")
                for spec in self.context.services.settings().models
            },
        }
        document = [
            self.context.project,
            self.context.module,
            {
                name: [origin, target, specs[origin].get(target)]
                for name, (origin, target) in targets.items()
            },
        ]
        scope = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]
        self._view = (id(served), registry, scope)
        return registry, scope

    def overrides(self) -> Mapping[str, Any]:
        served = self.context.services.models()
        if self._overrides is None or self._overrides[0] is not served:
            registry, scope = self._registry()
            self._overrides = (served, {MODELS_OVERRIDE: registry, CACHE_SCOPE: scope})
        return self._overrides[1]

    async def rewrite(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if "model" not in body and self.config.default_model is not None:
            body = {**body, "model": self.config.default_model}
        defaults = (
            self.config.defaults.get(body.get("model"))
            if isinstance(body.get("model"), str)
            else None
        )
        if defaults:
            body = {**defaults, **body}
        return body
