"""Building a new configuration's model registry beside the running one, and its probation.

A model whose settings did not change keeps its running engine (its pools, breakers, latency
figures and in-flight requests carry over); every other model gets a new engine, started
before the swap. After the swap, :func:`probation` decides whether the new engines stay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dtecho.config import OpenAIModelSpec, Settings
from dtecho.engines.base import Engine
from dtecho.engines.registry import ModelRegistry, check_engine_dependencies
from dtecho.errors import DtechoError
from dtecho.router.breaker import BreakerState

__all__ = [
    "Assembly",
    "Failure",
    "Probe",
    "assemble",
    "bind_fallbacks",
    "in_flight",
    "probation",
    "quiet_seconds",
]

PROBE_TIMEOUT_SECONDS = 2.0
PROBE_INTERVAL_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class Probe:
    """One new or changed deployment to reach during probation; ``param`` is its setting."""

    model: str
    deployment: Any  # dtecho.router.router.Deployment
    param: str


@dataclass(slots=True)
class Assembly:
    """A registry for new settings: ``fresh`` engines are its own (to start, and to close if
    it is rolled back); the others are the running ones, shared."""

    registry: ModelRegistry
    fresh: dict[str, Engine] = field(default_factory=dict)
    probes: list[Probe] = field(default_factory=list)


def _deployment_params(index: int, spec: OpenAIModelSpec) -> list[str]:
    if spec.deployments:
        return [f"models.{index}.deployments.{i}.base_url" for i in range(len(spec.deployments))]
    return [f"models.{index}.base_url"]


def _probes(index: int, spec: OpenAIModelSpec, engine: Engine, before: Any) -> list[Probe]:
    """The deployments of ``engine`` that were not serving, with these settings, before."""
    served = {d.name: d for d in before.deployment_list()} if before is not None else {}
    probes = []
    for deployment, param in zip(
        getattr(engine, "deployments", ()), _deployment_params(index, spec), strict=False
    ):
        if served.get(deployment.name) != deployment.spec:
            probes.append(Probe(spec.name, deployment, param))
    return probes


def assemble(settings: Settings, running: Settings, registry: ModelRegistry) -> Assembly:
    """The registry ``settings`` describe, reusing ``registry``'s engines where a model's
    settings are unchanged from ``running``. Starts nothing.

    Raises :class:`~dtecho.config.ConfigError` as :meth:`ModelRegistry.from_settings` does
    (a missing engine package, a fallback to a model that is not served).
    """
    check_engine_dependencies(settings)
    built = ModelRegistry.from_settings(settings).engines()  # constructing is cheap: no I/O
    before = {spec.name: spec for spec in running.models}
    engines = registry.engines()
    chosen: dict[str, Engine] = {}
    assembly = Assembly(registry=registry)
    for index, spec in enumerate(settings.models):
        if before.get(spec.name) == spec and spec.name in engines:
            chosen[spec.name] = engines[spec.name]
            continue
        engine = built[spec.name]
        chosen[spec.name] = assembly.fresh[spec.name] = engine
        if isinstance(spec, OpenAIModelSpec):
            assembly.probes += _probes(index, spec, engine, before.get(spec.name))
    assembly.registry = ModelRegistry(chosen)
    bind_fallbacks(assembly.registry)
    return assembly


def bind_fallbacks(registry: ModelRegistry) -> None:
    """Make the routed models of ``registry`` look fallback models up in it.

    Run whenever ``registry`` becomes the current one: a reused engine was bound to the
    registry it came from.
    """
    relays = {name: registry.relay(name) for name in registry.engines()}
    for engine in registry.routed().values():
        engine.bind(relays.get)


def in_flight(engine: Engine) -> int:
    """Requests ``engine`` is serving now, where it keeps count (else 0)."""
    deployments = getattr(engine, "deployments", None)
    if deployments is not None:
        return sum(deployment.in_flight for deployment in deployments)
    counts = getattr(engine, "counts", None)
    if isinstance(counts, dict) and "started" in counts:
        return int(counts["started"] - counts.get("completed", 0) - counts.get("cancelled", 0))
    return 0


def quiet_seconds(engines: Mapping[str, Engine]) -> float:
    """How long ``engines`` must have nothing in flight before they may be closed.

    A routed request between two attempts (waiting out a backoff or a ``retry-after``) holds
    the engine but no attempt, so "nothing in flight" must last longer than that wait.
    """
    longest = 0.0
    for engine in engines.values():
        routing = getattr(engine, "routing", None)
        if routing is not None and routing.retries.attempts > 1:
            retries = routing.retries
            longest = max(longest, retries.backoff_max_seconds, retries.max_retry_after_seconds)
    return 1.0 + longest


async def _reach(probe: Probe) -> str | None:
    """``None`` when the deployment answered ``GET /models``, else why not."""
    try:
        await asyncio.wait_for(probe.deployment.engine.list_models(), timeout=PROBE_TIMEOUT_SECONDS)
    except TimeoutError:
        return f"no answer within {PROBE_TIMEOUT_SECONDS:g} s"
    except DtechoError as exc:
        return exc.message
    except ValueError as exc:  # an answer that is not JSON: not an OpenAI-compatible upstream
        return f"unreadable answer ({exc})"
    return None


async def _ready(engine: Engine) -> str | None:
    try:
        await engine.check_ready()
    except Exception as exc:  # a failed check is a reason to roll back, not a crash
        return str(exc) or type(exc).__name__
    return None


@dataclass(frozen=True, slots=True)
class Failure:
    """Why probation failed: a line for people, and the setting to look at."""

    message: str
    param: str | None


async def probation(assembly: Assembly, seconds: float) -> list[Failure]:
    """Watch the new engines for ``seconds``; the reasons to roll back (empty: keep them).

    Every new or changed deployment must answer a probe at least once within the window
    (probed again every quarter second until it does), and at its end every new engine must
    be ready and no new deployment's breaker open. The window always runs in full, so that
    real traffic has had time to open a breaker.
    """
    deadline = time.monotonic() + seconds
    waiting = list(assembly.probes)
    reasons: dict[int, str] = {}
    while True:
        results = await asyncio.gather(*(_reach(probe) for probe in waiting))
        reasons = {id(p): r for p, r in zip(waiting, results, strict=True) if r is not None}
        waiting = [probe for probe in waiting if id(probe) in reasons]
        left = deadline - time.monotonic()
        if left <= 0:
            break
        await asyncio.sleep(min(PROBE_INTERVAL_SECONDS, left) if waiting else left)
    failures = [
        Failure(f"model '{p.model}' deployment {p.deployment.name}: {reasons[id(p)]}", p.param)
        for p in waiting
    ]
    # The registry holds the models in the order of the settings.
    params = {name: f"models.{i}" for i, name in enumerate(assembly.registry.engines())}
    for name, engine in assembly.fresh.items():
        reason = await _ready(engine)
        if reason is not None:
            failures.append(Failure(f"model '{name}': {reason}", params.get(name)))
    failures += [
        Failure(
            f"model '{p.model}' deployment {p.deployment.name}: its circuit breaker opened "
            "during probation",
            p.param,
        )
        for p in assembly.probes
        if p not in waiting and p.deployment.breaker.state is BreakerState.OPEN
    ]
    return failures
