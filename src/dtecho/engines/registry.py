"""The served models: one engine per configured model, started and closed with the app."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

from dtecho.config import ConfigError, DtesnModelSpec, ModelSpec, OpenAIModelSpec, Settings
from dtecho.engines.base import Engine, GenerativeEngine, RelayEngine
from dtecho.errors import EngineUnavailable, ModelNotFound

__all__ = ["ModelRegistry", "build_engine", "check_engine_dependencies"]

_IN_PROCESS_PACKAGES = {"aphrodite": "aphrodite", "vllm": "vllm"}


def check_engine_dependencies(settings: Settings) -> None:
    """Raise :class:`ConfigError` (one line) if a configured engine's package is missing."""
    for spec in settings.models:
        package = _IN_PROCESS_PACKAGES.get(spec.engine)
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"model '{spec.name}': engine '{spec.engine}' needs the '{package}' package "
                f"(pip install 'dtecho[{spec.engine}]'), which is not installed"
            )


def build_engine(spec: ModelSpec, settings: Settings) -> Engine:
    """The engine serving ``spec``; heavy back ends are imported only when configured."""
    if isinstance(spec, OpenAIModelSpec):
        from dtecho.router.router import RoutedModel

        return RoutedModel(spec)
    if isinstance(spec, DtesnModelSpec):
        from dtecho.engines.dtesn import DtesnEngine

        return DtesnEngine(spec, settings)
    check_engine_dependencies(settings)
    from dtecho.engines.inprocess import InProcessEngine

    return InProcessEngine(spec)


def _check_fallbacks(spec: OpenAIModelSpec, relays: dict[str, Any]) -> None:
    chains = spec.routing.fallbacks.model_dump()
    for failure, chain in chains.items():
        for model in chain:
            if model not in relays or model == spec.name:
                raise ConfigError(
                    f"invalid setting models.{spec.name}.routing.fallbacks.{failure}: "
                    f"'{model}' is not another served openai model"
                )


class ModelRegistry:
    """Named engines in configuration order."""

    def __init__(self, engines: dict[str, Engine]) -> None:
        self._engines = engines
        # Resolved once: protocol isinstance checks are too slow for the proxy's hot path.
        self._relays = {n: e for n, e in engines.items() if isinstance(e, RelayEngine)}
        self._generative = {n: e for n, e in engines.items() if isinstance(e, GenerativeEngine)}
        self._created = int(time.time())

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        return cls.from_specs(settings.models, settings)

    @classmethod
    def from_specs(cls, specs: Sequence[ModelSpec], settings: Settings) -> ModelRegistry:
        """Engines for ``specs`` (not started), fallbacks bound among them."""
        registry = cls({spec.name: build_engine(spec, settings) for spec in specs})
        for spec in specs:
            if isinstance(spec, OpenAIModelSpec):
                _check_fallbacks(spec, registry._relays)
                registry._relays[spec.name].bind(registry._relays.get)  # type: ignore[attr-defined]
        return registry

    def routed(self) -> dict[str, Any]:
        """The models relayed through the router, by name."""
        return {n: e for n, e in self._relays.items() if hasattr(e, "deployments")}

    def routing_counts(self) -> dict[tuple[str, str, str], int]:
        """``{(model, deployment, outcome): count}`` of every routed model's attempts."""
        counts: dict[tuple[str, str, str], int] = {}
        for name, model in self.routed().items():
            for event, value in model.counts.items():
                counts[(name, "", event)] = value
            for deployment in model.deployments:
                for outcome, value in deployment.counts.items():
                    counts[(name, deployment.name, outcome)] = value
        return counts

    def breaker_transitions(self) -> dict[tuple[str, str, str, str], int]:
        """``{(model, deployment, from, to): count}``."""
        return {
            (name, deployment.name, old, new): value
            for name, model in self.routed().items()
            for deployment in model.deployments
            for (old, new), value in deployment.breaker.transitions.items()
        }

    async def start(self, stack: AsyncExitStack) -> None:
        """Start every engine; each is closed (in reverse order) when ``stack`` unwinds."""
        for engine in self._engines.values():
            await engine.start()
            stack.push_async_callback(engine.close)

    def get(self, name: str) -> Engine:
        try:
            return self._engines[name]
        except KeyError:
            raise ModelNotFound(name) from None

    def generative(self, name: str) -> GenerativeEngine:
        """The generative engine serving ``name`` (404 if unknown)."""
        engine = self._generative.get(name)
        if engine is None:
            self.get(name)
            raise EngineUnavailable(f"model '{name}' cannot generate here")
        return engine

    def relay(self, name: str) -> RelayEngine | None:
        """The relay engine serving ``name``, or None if it is served natively (404 if unknown)."""
        engine = self._relays.get(name)
        if engine is None:
            self.get(name)
        return engine

    def generation_counts(self) -> dict[tuple[str, str], int]:
        """``{(model, outcome): count}`` from the engines that keep generation counters."""
        return {
            (name, outcome): value
            for name, engine in self._engines.items()
            if isinstance(counts := getattr(engine, "counts", None), dict)
            for outcome, value in counts.items()
        }

    def engines(self) -> dict[str, Engine]:
        return dict(self._engines)

    def card(self, name: str, *, detailed: bool = False) -> dict[str, Any]:
        """The OpenAI ``model`` object; ``detailed`` adds the engine's metadata."""
        engine = self.get(name)
        card: dict[str, Any] = {  # exactly OpenAI's fields in the list; details on retrieve
            "id": name,
            "object": "model",
            "created": self._created,
            "owned_by": "dtecho",
        }
        if detailed:
            card["engine"] = engine.kind
            if isinstance(engine, GenerativeEngine):
                capabilities = engine.capabilities()
                card["capabilities"] = {
                    "chat": capabilities.chat,
                    "completions": capabilities.completions,
                    "embeddings": capabilities.embeddings,
                    "logprobs": capabilities.logprobs,
                    "max_n": capabilities.max_n,
                    "max_output_tokens": capabilities.max_output_tokens,
                }
                card.update(capabilities.metadata)
        return card

    def cards(self) -> list[dict[str, Any]]:
        return [self.card(name) for name in self._engines]
