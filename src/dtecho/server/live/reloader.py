"""The running configuration of one app and the one way to change it.

:meth:`LiveConfig.apply` is the path every change takes (the admin API, the file watcher,
a rollback):

1. validate completely: the settings load (:class:`~dtecho.config.ConfigError` names the
   field), nothing outside :data:`~dtecho.server.live.changes.RELOADABLE` differs, the new
   model registry builds; any failure is a 400 and nothing has changed;
2. start the new configuration's own engines beside the running ones (a model whose settings
   did not change keeps its engine); one that fails to start is a 400 too;
3. swap: a new :class:`ConfigSnapshot` and everything derived from it (the gateway's limit
   defaults, readiness checks, the cache's policy) are assigned with no ``await`` between
   them, so every request sees the old configuration or the new one, never a mix, and one
   that already holds the old registry finishes with it;
4. probation: for ``reload.probation_seconds`` the new engines must stay ready and every new
   deployment must answer; if not, the previous snapshot is swapped back (a 409);
5. the engines no longer used are closed once nothing is in flight on them (at most
   ``shutdown_timeout_seconds`` later).

Changes run one at a time. With several worker processes each has its own LiveConfig: the
file watcher reaches them all, an API call only the worker that answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Coroutine, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import structlog

from dtecho.cache.policy import CachePolicy
from dtecho.config import (
    ConfigError,
    Settings,
    redact_url,
    reload_settings,
    settings_from_document,
)
from dtecho.engines.base import Engine
from dtecho.errors import Conflict, InvalidRequest, NotFound
from dtecho.server.caching import RouteCache
from dtecho.server.live.changes import Change, diff_settings, restart_required
from dtecho.server.live.engines import (
    Assembly,
    Failure,
    assemble,
    bind_fallbacks,
    in_flight,
    probation,
    quiet_seconds,
)
from dtecho.server.live.history import ConfigHistory, HistoryEntry, Source
from dtecho.server.live.snapshot import ConfigSnapshot

if TYPE_CHECKING:
    from dtecho.observability.metrics import BatchMetrics
    from dtecho.server.state import ServerState

__all__ = ["ConfigRejected", "ConfigRolledBack", "LiveConfig"]

_log = structlog.get_logger("dtecho.config")

HISTORY_LIMIT = 50
_POLL_SECONDS = 0.1


class ConfigRejected(InvalidRequest):
    """A new configuration refused before anything changed (400); ``param`` names the field."""

    default_code = "invalid_config"


class ConfigRolledBack(Conflict):
    """A new configuration that was swapped in, failed probation and was swapped out (409)."""

    default_code = "config_rolled_back"


def _reason(exc: BaseException) -> str:
    # Engine errors name their upstream's URL, which may carry user:password@.
    return redact_url(str(exc) or type(exc).__name__) or ""


def _file_param(exc: ConfigError) -> str | None:
    if exc.field is not None:
        return exc.field
    # Raised outside pydantic (say the registry's fallback check): "invalid setting X: …".
    message = str(exc)
    if message.startswith("invalid setting "):
        return message.removeprefix("invalid setting ").split(":", 1)[0]
    return None


class LiveConfig:
    """The current :class:`ConfigSnapshot` of ``state``'s app, its history, and reloads.

    Built by the app factory with the start-up settings and registry (version 1); the
    lifespan calls :meth:`start`, which starts the engines and owns them from then on.
    """

    def __init__(
        self, state: ServerState, *, embedding_batches: BatchMetrics | None = None
    ) -> None:
        self._state = state
        self._embedding_batches = embedding_batches
        self.current = ConfigSnapshot(1, state.settings, state.models, state.cache)
        self.history = ConfigHistory(HISTORY_LIMIT)
        self.history.add(HistoryEntry(1, "startup", "startup", "applied", settings=state.settings))
        self.shared_breakers: Any = None  # dtecho.router.breaker.SharedBreakers, when shared
        self.watching = False
        self._next_version = 2
        self._lock = asyncio.Lock()
        self._open: dict[int, Engine] = {}  # started and not yet closed, by id, start order
        self._retiring: set[asyncio.Task[None]] = set()
        self._changing: set[asyncio.Task[Any]] = set()
        self._counts: dict[tuple[str, str], int] = {}
        self._file_digest: bytes | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, stack: AsyncExitStack) -> None:
        """Start the start-up engines; everything this object opened closes with ``stack``."""
        stack.push_async_callback(self.close)
        for engine in self.current.models.engines().values():
            await engine.start()
            self._open[id(engine)] = engine
        self._swap(self.current)
        self._file_digest = self._digest()
        if self.current.settings.reload.watch and self.current.settings.config_file:
            from dtecho.server.live.watch import ConfigWatcher

            watcher = ConfigWatcher(self, self.current.settings.config_file)
            watcher.start()
            stack.push_async_callback(watcher.close)
            self.watching = True

    async def close(self) -> None:
        """Close every engine still open, the newest first (the server is stopping)."""
        # A change in progress first: cancelled, it swaps back and retires its own engines.
        for group in (self._changing, self._retiring):
            tasks = list(group)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for engine in reversed(list(self._open.values())):
            await engine.close()
        self._open.clear()

    # -- reading ------------------------------------------------------------------------------

    def counts(self) -> dict[tuple[str, str], int]:
        """``{(source, outcome): reloads}`` for ``dtecho_config_reloads_total``."""
        return dict(self._counts)

    def file_changed(self) -> bool:
        """Whether the config file's bytes differ from the ones last read (the watcher's test;
        saving the same content again, or touching the file, is no change; an empty or
        unreadable file is ignored until it is written again)."""
        digest = self._digest()
        if digest is None or digest == self._file_digest:
            return False
        self._file_digest = digest
        return True

    def _digest(self) -> bytes | None:
        path = self.current.settings.config_file
        if path is None:
            return None
        try:
            content = path.read_bytes()
        except OSError:  # gone for a moment (being replaced): the next event reads it
            return None
        # An empty file is a save caught halfway far more often than a wish for every default.
        return hashlib.sha256(content).digest() if content.strip() else None

    # -- changing -----------------------------------------------------------------------------

    async def reload(
        self, *, source: Source, actor: str, document: Mapping[str, Any] | None = None
    ) -> HistoryEntry | None:
        """Read the config file again (or take ``document``, a whole settings document in its
        place) and apply it. ``None``: nothing differs from the running configuration.
        """
        return await self._shielded(self._reload(source, actor, document))

    async def _reload(
        self, source: Source, actor: str, document: Mapping[str, Any] | None
    ) -> HistoryEntry | None:
        async with self._lock:
            running = self.current.settings
            if document is None and running.config_file is None:  # nothing to re-read
                raise Conflict(
                    "The server was started without a config file: send the settings "
                    'document as {"settings": {...}}.',
                    param="settings",
                )
            try:
                if document is not None:
                    settings = settings_from_document(document, like=running)
                else:
                    self._file_digest = self._digest()
                    settings = reload_settings(running)
            except ConfigError as exc:
                raise self._reject(source, actor, str(exc), _file_param(exc)) from None
            return await self._apply(settings, source, actor)

    async def rollback(self, *, actor: str, version: int | None = None) -> HistoryEntry | None:
        """Return to an applied ``version`` (default: the one before the current) through the
        same path as a reload; it becomes a new version."""
        return await self._shielded(self._rollback(actor, version))

    async def _rollback(self, actor: str, version: int | None) -> HistoryEntry | None:
        async with self._lock:
            current = self.current.version
            if version is None:
                entry = self.history.previous_applied(current)
                if entry is None:
                    raise Conflict("There is no earlier applied version.", param="version")
            else:
                entry = self.history.version(version)
                if entry is None:
                    raise NotFound(f"Version {version} is not in the history.", param="version")
                if entry.outcome != "applied" or entry.settings is None:
                    raise Conflict(
                        f"Version {version} was {entry.outcome}: only applied versions can "
                        "be returned to.",
                        param="version",
                    )
                if version == current:
                    raise Conflict(
                        f"Version {version} is the running configuration.", param="version"
                    )
            assert entry.settings is not None and entry.version is not None
            return await self._apply(entry.settings, "rollback", actor, rollback_of=entry.version)

    async def _shielded(self, change: Coroutine[Any, Any, HistoryEntry | None]) -> Any:
        # A change runs to its end even if the caller goes away (a client that disconnects
        # during the probation): half a change would leave a version on probation forever.
        task = asyncio.create_task(change, name="dtecho-config-change")
        self._changing.add(task)
        task.add_done_callback(self._changing.discard)
        # Its outcome is in the history even when nobody awaits it any more.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(task)

    async def _apply(
        self, settings: Settings, source: Source, actor: str, *, rollback_of: int | None = None
    ) -> HistoryEntry | None:
        previous = self.current
        changes = diff_settings(previous.settings, settings)
        if not changes:
            self._count(source, "unchanged")
            return None
        restart = restart_required(previous.settings, settings, changes)
        if restart:
            raise self._reject(
                source,
                actor,
                f"Changing {', '.join(restart)} needs a restart; nothing was changed.",
                restart[0],
                changes=changes,
                code="restart_required",
            )
        try:
            assembly = assemble(settings, previous.settings, previous.models)
        except ConfigError as exc:
            raise self._reject(source, actor, str(exc), _file_param(exc), changes=changes) from None
        await self._start_fresh(assembly, source, actor, changes)

        entry = self.history.add(
            HistoryEntry(
                self._next_version,
                source,
                actor,
                "probation",
                changes=changes,
                settings=settings,
                rollback_of=rollback_of,
            )
        )
        self._next_version += 1
        route_cache = RouteCache(self._state.cache.cache, settings)
        snapshot = ConfigSnapshot(self._next_version - 1, settings, assembly.registry, route_cache)
        self._swap(snapshot)
        try:
            await self._state.cache.cache.start()  # opens Redis if the cache was just enabled
            _log.info(
                "config_swapped",
                version=snapshot.version,
                source=source,
                changes=[change.name for change in changes],
                probation_seconds=settings.reload.probation_seconds if assembly.fresh else 0,
            )
            seconds = settings.reload.probation_seconds
            failures = await probation(assembly, seconds) if assembly.fresh else []
        except BaseException as exc:  # cancelled (shutdown) or a bug: never leave it half done
            failures = [Failure(f"probation did not finish ({type(exc).__name__})", None)]
            self._roll_back(entry, previous, assembly, failures)
            raise
        if failures:
            self._roll_back(entry, previous, assembly, failures)
            raise ConfigRolledBack(
                f"Version {entry.version} failed its probation and was rolled back to version "
                f"{previous.version}: {entry.error}",
                param=entry.param,
            )
        entry.outcome = "applied"
        kept = {id(engine) for engine in snapshot.models.engines().values()}
        self._retire({n: e for n, e in previous.models.engines().items() if id(e) not in kept})
        self._finish(entry, "success")
        return entry

    def _roll_back(
        self,
        entry: HistoryEntry,
        previous: ConfigSnapshot,
        assembly: Assembly,
        failures: list[Failure],
    ) -> None:
        self._swap(previous)
        entry.outcome = "rolled_back"
        entry.error = redact_url("; ".join(failure.message for failure in failures))
        entry.param = failures[0].param
        self._retire(assembly.fresh)
        self._finish(entry, "failure")

    async def _start_fresh(
        self, assembly: Assembly, source: Source, actor: str, changes: list[Change]
    ) -> None:
        """Start the new configuration's own engines; if one fails, close those started and
        refuse the configuration (the running one was never touched)."""
        positions = {name: i for i, name in enumerate(assembly.registry.engines())}
        started: list[Engine] = []
        for name, engine in assembly.fresh.items():
            try:
                await engine.start()
            except Exception as exc:  # any start failure refuses the configuration
                for done in reversed(started):
                    with contextlib.suppress(Exception):
                        await done.close()
                with contextlib.suppress(Exception):  # it may hold half-opened resources
                    await engine.close()
                raise self._reject(
                    source,
                    actor,
                    f"model '{name}' did not start: {_reason(exc)}; nothing was changed.",
                    f"models.{positions[name]}",
                    changes=changes,
                ) from None
            started.append(engine)
            if self._embedding_batches is not None and hasattr(engine, "observe_batches"):
                engine.observe_batches(self._embedding_batches)
        for engine in started:
            self._open[id(engine)] = engine

    def _swap(self, snapshot: ConfigSnapshot) -> None:
        """Make ``snapshot`` current. Everything is computed first and then assigned with no
        ``await`` in between: on one event loop that is atomic for every request."""
        state = self._state
        settings = snapshot.settings
        readiness = {n: c for n, c in state.readiness.items() if not n.startswith("model:")}
        for name, engine in snapshot.models.engines().items():
            readiness[f"model:{name}"] = engine.check_ready
        gateway = self._gateway(settings)
        cache = state.cache.cache
        policy = CachePolicy.from_settings(
            settings.cache,
            conservative_min_compute_seconds=cache.policy.conservative_min_compute_seconds,
        )
        bind_fallbacks(snapshot.models)
        # -- the swap --
        self.current = snapshot
        state.settings = settings
        state.models = snapshot.models
        state.cache = snapshot.cache
        state.readiness = readiness
        cache.settings, cache.policy = settings.cache, policy
        if gateway is not None:
            state.gateway = gateway
        # -- after it --
        llm_metrics = getattr(state, "llm_metrics", None)
        if llm_metrics is not None:  # newly served models get their own label
            llm_metrics.allow_models(snapshot.models.engines())
        if self.shared_breakers is not None:  # attach replaces the breaker a name had
            for name, model in snapshot.models.routed().items():
                for deployment in model.deployments:
                    self.shared_breakers.attach(name, deployment.breaker)

    def _gateway(self, settings: Settings) -> Any:
        """The gateway with ``settings``' limit defaults (a new object: a request holds the
        one it started with), or ``None`` before the lifespan built one."""
        gateway = self._state.gateway
        if gateway is None:
            return None
        limits = settings.limits
        authenticator = gateway.authenticator
        if authenticator.anonymous.limits != limits.anonymous:
            from dtecho.security.authenticator import Authenticator
            from dtecho.server.gateway import is_loopback

            admin_key = settings.auth.admin_key
            authenticator = Authenticator(
                settings.auth.mode,
                keys=authenticator.keys,
                jwt=authenticator.jwt,
                admin_key=admin_key.get_secret_value() if admin_key else None,
                anonymous_limits=limits.anonymous,
                anonymous_is_admin=settings.auth.mode == "none"
                and admin_key is None
                and is_loopback(settings.host),
            )
        return dataclasses.replace(
            gateway,
            authenticator=authenticator,
            model_defaults=dict(limits.models),
            default_max_tokens=limits.default_max_tokens,
        )

    def _retire(self, engines: Mapping[str, Engine]) -> None:
        """Close ``engines`` in the background once nothing has been in flight on them for
        :func:`quiet_seconds` (at most ``shutdown_timeout_seconds`` from now)."""
        if not engines:
            return
        task = asyncio.create_task(self._close_when_idle(dict(engines)), name="dtecho-retire")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_when_idle(self, engines: dict[str, Engine]) -> None:
        quiet = quiet_seconds(engines)
        deadline = time.monotonic() + max(self.current.settings.shutdown_timeout_seconds, quiet)
        idle_since = time.monotonic()
        while time.monotonic() < deadline:
            if any(in_flight(engine) for engine in engines.values()):
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= quiet:
                break
            await asyncio.sleep(_POLL_SECONDS)
        busy = {name: n for name, engine in engines.items() if (n := in_flight(engine))}
        if busy:
            _log.warning("config_retired_busy", in_flight=busy)
        for engine in reversed(list(engines.values())):
            self._open.pop(id(engine), None)
            with contextlib.suppress(Exception):  # one engine's close must not keep the rest
                await engine.close()
        _log.info("config_engines_closed", models=sorted(engines))

    # -- accounting ---------------------------------------------------------------------------

    def _count(self, source: str, outcome: str) -> None:
        key = (source, outcome)
        self._counts[key] = self._counts.get(key, 0) + 1

    def _reject(
        self,
        source: Source,
        actor: str,
        message: str,
        param: str | None,
        *,
        changes: list[Change] | None = None,
        code: str | None = None,
    ) -> ConfigRejected:
        entry = self.history.add(
            HistoryEntry(
                None, source, actor, "rejected", changes=changes or [], error=message, param=param
            )
        )
        self._finish(entry, "failure")
        return ConfigRejected(message, param=param, code=code)

    def _finish(self, entry: HistoryEntry, outcome: str) -> None:
        """Count, log and audit a finished attempt (never a value: paths only)."""
        self._count(entry.source, entry.outcome)
        log = _log.info if entry.outcome == "applied" else _log.warning
        log(
            f"config_{entry.outcome}",
            version=entry.version,
            source=entry.source,
            param=entry.param,
            error=entry.error,
            current=self.current.version,
        )
        gateway = self._state.gateway
        if gateway is not None:
            gateway.audit.record(
                "config.reload" if entry.source != "rollback" else "config.rollback",
                outcome,
                actor=entry.actor,
                target=None if entry.version is None else f"v{entry.version}",
                source=entry.source,
                result=entry.outcome,
                param=entry.param,
                changes=[change.name for change in entry.changes],
            )
