"""Process and runtime series: CPU, memory, open files, GC, and event-loop lag.

:func:`register_runtime_collectors` puts prometheus_client's process, platform and GC
collectors on an app's own registry (they normally live on the global default registry, which
dtecho does not expose). :class:`EventLoopLagMonitor` measures how late the event loop wakes a
sleeping task: a request handler that blocks the loop (a long synchronous computation, a
blocking call) delays every other request by as much, and shows here first.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from dtecho.observability.buckets import EVENT_LOOP_LAG_BUCKETS

__all__ = ["EventLoopLagMonitor", "register_runtime_collectors"]


def register_runtime_collectors(registry: CollectorRegistry) -> None:
    """Register ``process_*`` (CPU seconds, resident and virtual memory, open and maximum file
    descriptors, start time), ``python_info`` and ``python_gc_*`` (collections, collected and
    uncollectable objects per generation) on ``registry``."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


class EventLoopLagMonitor:
    """A task that sleeps ``interval`` seconds over and over and records how late it wakes.

    ``dtecho_event_loop_lag_seconds`` (a histogram on ``registry``) gets one observation per
    wake-up: the time slept beyond ``interval``. The app's lifespan calls :meth:`start` once
    the loop runs and :meth:`stop` at shutdown.
    """

    def __init__(self, registry: CollectorRegistry, *, interval: float = 0.25) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval!r}")
        self.interval = interval
        self.lag = Histogram(
            "dtecho_event_loop_lag_seconds",
            f"How late the event loop woke a task sleeping {interval:g} s (observed each wake).",
            buckets=EVENT_LOOP_LAG_BUCKETS,
            registry=registry,
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start measuring on the running loop (a second call does nothing)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dtecho-event-loop-lag")

    async def stop(self) -> None:
        """Stop measuring; waits for the task to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval)
            self.lag.observe(max(0.0, loop.time() - started - self.interval))
