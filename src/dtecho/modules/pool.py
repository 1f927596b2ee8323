"""The module pool: one instance per (project, module), started on first use, kept healthy,
evicted when idle or least recently used, replaced when its manifest changes.

* **Lazily started.** The first request for a module starts its instance; concurrent first
  requests wait for the same start.
* **Isolated failures.** A module whose start fails, or whose requests keep failing, answers
  503 ``module_unavailable`` (with ``retry-after``) for itself only; it is tried again after a
  backoff that doubles up to a minute. Every other module keeps serving.
* **Health-checked** every ``health_check_interval``; a failed check closes the instance and
  the next request after the backoff starts a fresh one.
* **Bounded.** Beyond ``pool_size`` the least recently used idle instance is closed, as is any
  instance unused for ``idle_seconds``.
* **Hot swapped.** When a module's manifest entry changes, new requests get a new instance;
  those in flight finish on the old one, which is closed once they have (or after
  ``close_timeout_seconds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import BaseModel

from dtecho.config import ModulesSettings
from dtecho.errors import EngineUnavailable
from dtecho.modules.base import Module, ModuleContext
from dtecho.modules.catalog import ProjectEntry
from dtecho.modules.manifest import ModuleSpec

__all__ = ["ModulePool", "ModuleUnavailable", "module_fingerprint"]

_log = structlog.get_logger("dtecho.modules")
MAX_BACKOFF_SECONDS = 60.0
FAILURES_TO_OPEN = 5  # consecutive failed requests that open a module's breaker


class ModuleUnavailable(EngineUnavailable):
    """A module failed to start, failed its health check, or kept failing (503)."""

    default_code = "module_unavailable"


def module_fingerprint(spec: ModuleSpec) -> str:
    """A digest of one module's manifest entry: a change means a new instance."""
    document = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(document.encode()).hexdigest()[:16]


@dataclass(eq=False)
class _Slot:
    project: str
    name: str
    fingerprint: str
    spec: ModuleSpec
    config: BaseModel
    instance: Module | None = None
    starting: asyncio.Task[Module] | None = None
    state: str = "new"  # new, starting, ready, failed, retired, closed
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    failures: int = 0  # consecutive failed starts / checks / requests
    retry_at: float = 0.0
    error: str | None = None
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    def backoff(self, initial: float) -> float:
        return min(MAX_BACKOFF_SECONDS, initial * 2.0 ** max(self.failures - 1, 0))

    def as_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "module": self.name,
            "type": self.spec.type,
            "version": self.spec.version,
            "state": self.state,
            "in_flight": self.in_flight,
            "failures": self.failures,
            "error": self.error,
        }


class ModulePool:
    """Instances of the catalog's modules (see the module docstring)."""

    def __init__(
        self,
        types: dict[str, type[Module]],
        context_for: Callable[[str, ModuleSpec], ModuleContext],
        settings: ModulesSettings,
    ) -> None:
        self.types = types
        self.context_for = context_for
        self.settings = settings
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._retired: set[_Slot] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self.counts: dict[tuple[str, str], int] = {}  # (type, event)

    # -- serving ---------------------------------------------------------------------------

    async def acquire(self, entry: ProjectEntry, spec: ModuleSpec) -> tuple[Any, Module]:
        """The started instance of ``spec`` and a handle to :meth:`release` when the request
        is done (what :meth:`lease` does, without a context manager on the hot path)."""
        slot = self._slot(entry, spec)
        instance = await self._ready(slot)
        slot.in_flight += 1
        slot.drained.clear()
        slot.last_used = time.monotonic()
        return slot, instance

    def try_acquire(self, entry: ProjectEntry, spec: ModuleSpec) -> tuple[Any, Module] | None:
        """:meth:`acquire` without awaiting, when the instance is already running (the hot
        path); None when it must be started first."""
        slot = self._slots.get((entry.project, spec.name))
        if slot is None or slot.spec is not spec or slot.state != "ready":
            return None
        instance = slot.instance
        if instance is None:
            return None
        slot.in_flight += 1
        slot.drained.clear()
        slot.last_used = time.monotonic()
        return slot, instance

    def release(self, handle: Any) -> None:
        """End the request :meth:`acquire` began; a retired instance closes after its last."""
        slot: _Slot = handle
        slot.in_flight -= 1
        slot.last_used = time.monotonic()
        if slot.in_flight == 0:
            slot.drained.set()
            if slot.state == "retired":
                self._close_later(slot)

    @contextlib.asynccontextmanager
    async def lease(self, entry: ProjectEntry, spec: ModuleSpec) -> AsyncIterator[Module]:
        """The started instance of ``spec`` for the length of one request."""
        handle, instance = await self.acquire(entry, spec)
        try:
            yield instance
        finally:
            self.release(handle)

    def request_failed(self, entry: ProjectEntry, spec: ModuleSpec, error: str) -> None:
        """A request of the module raised: after ``FAILURES_TO_OPEN`` in a row it is taken
        out (503) for a backoff, then tried again with a fresh instance."""
        slot = self._slots.get((entry.project, spec.name))
        if slot is None or slot.state != "ready":
            return
        slot.failures += 1
        slot.error = error
        self._count(slot, "request_error")
        if slot.failures >= FAILURES_TO_OPEN:
            self._fail(slot, f"{slot.failures} requests in a row failed: {error}")

    def request_succeeded(self, entry: ProjectEntry, spec: ModuleSpec) -> None:
        slot = self._slots.get((entry.project, spec.name))
        if slot is not None and slot.state == "ready" and slot.failures:
            slot.failures, slot.error = 0, None

    def _slot(self, entry: ProjectEntry, spec: ModuleSpec) -> _Slot:
        key = (entry.project, spec.name)
        slot = self._slots.get(key)
        if slot is not None and slot.spec is spec:  # the usual case: the same manifest entry
            return slot
        fingerprint = module_fingerprint(spec)
        if slot is not None and slot.fingerprint == fingerprint:
            return slot
        if slot is not None:
            self._retire(slot)
        slot = _Slot(entry.project, spec.name, fingerprint, spec, entry.configs[spec.name])
        self._slots[key] = slot
        self._evict_beyond_size()
        return slot

    async def _ready(self, slot: _Slot) -> Module:
        if slot.state == "ready" and slot.instance is not None:
            return slot.instance
        if slot.state == "failed":
            wait = slot.retry_at - time.monotonic()
            if wait > 0:
                raise self._unavailable(slot, wait)
            slot.state = "new"
        if slot.starting is None:
            slot.state = "starting"
            slot.starting = asyncio.create_task(self._start(slot), name=f"module-{slot.name}")
        try:
            return await asyncio.shield(slot.starting)
        except ModuleUnavailable:
            raise
        except Exception:
            raise self._unavailable(slot, slot.retry_at - time.monotonic()) from None

    async def _start(self, slot: _Slot) -> Module:
        kind = self.types[slot.spec.type]
        started = time.perf_counter()
        instance: Module | None = None
        try:
            context = await asyncio.to_thread(self.context_for, slot.project, slot.spec)
            instance = kind(context, slot.config)
            await instance.start()
        except Exception as exc:
            if instance is not None:
                with contextlib.suppress(Exception):
                    await instance.close()
            slot.starting = None
            slot.failures += 1
            self._fail(slot, f"failed to start: {type(exc).__name__}: {exc}")
            self._count(slot, "start_failed")
            raise
        slot.instance, slot.state, slot.failures, slot.error = instance, "ready", 0, None
        slot.starting = None
        self._count(slot, "started")
        _log.info(
            "module_started",
            project=slot.project,
            module=slot.name,
            type=slot.spec.type,
            seconds=round(time.perf_counter() - started, 4),
        )
        return instance

    def _fail(self, slot: _Slot, error: str) -> None:
        slot.error = error
        slot.retry_at = time.monotonic() + slot.backoff(self.settings.retry_backoff_seconds)
        _log.warning("module_failed", project=slot.project, module=slot.name, error=error)
        instance, slot.instance = slot.instance, None
        slot.state = "failed"
        if instance is not None:  # a fresh one is started after the backoff
            self._close_instance_later(slot, instance)

    def _unavailable(self, slot: _Slot, wait: float) -> ModuleUnavailable:
        retry = max(1, int(wait + 0.999))
        exc = ModuleUnavailable(
            f"Module '{slot.project}/{slot.name}' is unavailable ({slot.error}); "
            f"retry in {retry} s."
        )
        exc.headers = {**exc.headers, "retry-after": str(retry)}
        return exc

    # -- lifecycle -------------------------------------------------------------------------

    def on_catalog_change(
        self, _old: dict[str, ProjectEntry], new: dict[str, ProjectEntry]
    ) -> None:
        """Retire instances whose module was removed or changed (new requests get new ones)."""
        for key, slot in list(self._slots.items()):
            entry = new.get(slot.project)
            spec = entry.modules.get(slot.name) if entry is not None else None
            if spec is None or module_fingerprint(spec) != slot.fingerprint:
                del self._slots[key]
                self._retire(slot)

    def _retire(self, slot: _Slot) -> None:
        if self._slots.get((slot.project, slot.name)) is slot:
            del self._slots[(slot.project, slot.name)]
        slot.state = "retired"
        self._count(slot, "retired")
        if slot.in_flight == 0:
            self._close_later(slot)
        else:
            self._retired.add(slot)

    def _close_later(self, slot: _Slot) -> None:
        self._retired.discard(slot)
        instance, slot.instance = slot.instance, None
        starting, slot.starting = slot.starting, None
        slot.state = "closed"
        if instance is not None:
            self._close_instance_later(slot, instance)
        elif starting is not None:  # retired while starting: close what the start makes

            async def close_started() -> None:
                with contextlib.suppress(Exception):
                    await self._close_instance(slot, await starting)

            self._track(asyncio.create_task(close_started()))

    def _close_instance_later(self, slot: _Slot, instance: Module) -> None:
        self._track(asyncio.create_task(self._close_instance(slot, instance)))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_instance(self, slot: _Slot, instance: Module) -> None:
        try:
            await asyncio.wait_for(instance.close(), self.settings.close_timeout_seconds)
            self._count(slot, "closed")
        except Exception as exc:
            self._count(slot, "close_failed")
            _log.warning(
                "module_close_failed", project=slot.project, module=slot.name, error=str(exc)
            )

    def _evict_beyond_size(self) -> None:
        excess = len(self._slots) - self.settings.pool_size
        if excess <= 0:
            return
        idle = sorted(
            (s for s in self._slots.values() if s.in_flight == 0 and s.state != "starting"),
            key=lambda s: s.last_used,
        )
        for slot in idle[:excess]:
            self._count(slot, "evicted_lru")
            self._retire(slot)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_check_interval)
            await self.check_now()

    async def check_now(self) -> None:
        """Close idle instances, then health-check the rest (the maintenance loop's step)."""
        now = time.monotonic()
        for slot in list(self._slots.values()):
            idle = slot.state == "ready" and slot.in_flight == 0
            if idle and now - slot.last_used > self.settings.idle_seconds:
                self._count(slot, "evicted_idle")
                self._retire(slot)
        ready = [s for s in self._slots.values() if s.state == "ready" and s.instance is not None]
        results = await asyncio.gather(
            *(asyncio.wait_for(s.instance.check(), 10.0) for s in ready),  # type: ignore[union-attr]
            return_exceptions=True,
        )
        for slot, result in zip(ready, results, strict=True):
            if isinstance(result, BaseException):
                slot.failures += 1
                self._count(slot, "check_failed")
                self._fail(slot, f"health check failed: {type(result).__name__}: {result}")

    def start(self) -> None:
        self._task = asyncio.create_task(self._maintain(), name="dtecho-module-pool")

    async def close(self) -> None:
        """Stop the checks and close every instance (after its requests, within the timeout)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        slots = [*self._slots.values(), *self._retired]
        self._slots.clear()
        for slot in slots:
            if slot.in_flight:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(slot.drained.wait(), self.settings.close_timeout_seconds)
            self._close_later(slot)
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)

    def status(self) -> list[dict[str, Any]]:
        """Every instance's state, for ``/admin/modules``."""
        return [slot.as_dict() for slot in [*self._slots.values(), *self._retired]]

    def _count(self, slot: _Slot, event: str) -> None:
        key = (slot.spec.type, event)
        self.counts[key] = self.counts.get(key, 0) + 1
