"""A micro-batcher: concurrent requests with the same key run as one vectorised call.

Each key (model, operation, compatible configuration) has its own queue and dispatcher. A
request arriving while nothing for its key is running is dispatched at once — a lone request
never waits. While a batch runs, newcomers queue up and become the next batch, so batches
grow exactly as fast as load does. When requests arrive faster than one per ``max_wait``, the
dispatcher may also hold a batch open for at most ``max_wait`` to fill it.

Up to ``parallel`` batches of one key may run at once (in worker threads): with a kernel
that releases the GIL, a second batch then uses a second core instead of waiting. The batch
size limit adapts (additive increase, multiplicative decrease) so that a batch's run time
stays near ``target_latency``. The queue is bounded across keys: beyond
``queue_size`` waiting requests a submit fails at once with
:class:`~dtecho.errors.Overloaded` (503 + ``retry-after``). A caller that goes away (its task
is cancelled) is removed from the queue and never computed.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from dtecho.config import BatchingSettings
from dtecho.errors import Overloaded

__all__ = ["BatchObserver", "MicroBatcher", "usable_cpus"]

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")  # noqa: E741 - the conventional name for an item type
R = TypeVar("R")

RunBatch = Callable[[K, list[I]], Sequence["R | BaseException"]]


def usable_cpus(cap: int = 4) -> int:
    """CPUs this process may run on (at most ``cap``): a default for ``parallel``."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cap, count or 1))


class BatchObserver:
    """Receives what a batcher does (for metrics); the default does nothing."""

    def batch(self, key: Hashable, size: int, seconds: float) -> None: ...

    def queued(self, depth: int) -> None: ...

    def waited(self, seconds: float) -> None: ...


@dataclass
class _Entry(Generic[I]):
    item: I
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class _Lane(Generic[I]):
    pending: deque[_Entry[I]] = field(default_factory=deque)
    running: int = 0  # dispatchers (each running at most one batch at a time)
    last_arrival: float = 0.0
    interarrival: float = float("inf")  # EWMA of seconds between arrivals; none seen yet
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class MicroBatcher(Generic[K, I, R]):
    """Gathers submits per key and runs them through ``run_batch(key, items)`` in a thread.

    ``run_batch`` returns one result per item, in order; an exception instance in the list
    fails only that item. An exception raised by ``run_batch`` fails the whole batch.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 64,
        max_wait_ms: float = 2.0,
        queue_size: int = 1024,
        target_latency_ms: float = 50.0,
        observer: BatchObserver | None = None,
        parallel: int = 1,
    ) -> None:
        if max_batch_size < 1 or queue_size < 1 or max_wait_ms < 0 or parallel < 1:
            raise ValueError(
                "max_batch_size, queue_size and parallel must be >= 1, max_wait_ms >= 0"
            )
        self.parallel = parallel
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.queue_size = queue_size
        self.target_latency = target_latency_ms / 1000
        self.observer = observer or BatchObserver()
        self._lanes: dict[K, _Lane[I]] = {}
        self._limits: dict[K, int] = {}
        self._depth = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a running batch), across keys."""
        return self._depth

    def limit(self, key: K) -> int:
        """The current adaptive batch-size limit for ``key``."""
        return self._limits.get(key, max(1, self.max_batch_size // 4))

    async def submit(self, key: K, item: I) -> R:
        """Run ``item`` in a batch of its key and return its own result."""
        if self._depth >= self.queue_size:
            raise Overloaded(
                f"The batching queue is full ({self.queue_size} waiting requests).",
                retry_after_seconds=max(1.0, self.target_latency * 4),
            )
        loop = asyncio.get_running_loop()
        entry: _Entry[I] = _Entry(item, loop.create_future())
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        now = time.perf_counter()
        if lane.last_arrival:
            gap = now - lane.last_arrival
            ewma = lane.interarrival
            lane.interarrival = gap if ewma == float("inf") else 0.8 * ewma + 0.2 * gap
        lane.last_arrival = now
        lane.pending.append(entry)
        self._depth += 1
        self.observer.queued(self._depth)
        if lane.running < self.parallel:
            lane.running += 1
            task = asyncio.create_task(self._dispatch(key, lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            lane.wake.set()
        try:
            return await entry.future
        except asyncio.CancelledError:
            entry.future.cancel()
            try:
                lane.pending.remove(entry)
            except ValueError:
                pass  # already taken into a running batch; its result is discarded
            else:
                self._depth -= 1
                self.observer.queued(self._depth)
            raise

    async def _dispatch(self, key: K, lane: _Lane[I]) -> None:
        try:
            while lane.pending:
                await self._maybe_wait(key, lane)
                batch = self._take(key, lane)
                if batch:
                    await self._run(key, batch)
        finally:
            lane.running -= 1
            if not lane.running and not lane.pending:
                self._lanes.pop(key, None)

    async def _maybe_wait(self, key: K, lane: _Lane[I]) -> None:
        # Hold the batch open only when more requests are expected within max_wait.
        limit = self.limit(key)
        if len(lane.pending) >= limit or self.max_wait == 0:
            return
        if lane.interarrival > self.max_wait or len(lane.pending) == 0:
            return
        deadline = lane.pending[0].enqueued + self.max_wait
        while len(lane.pending) < limit:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            lane.wake.clear()
            try:
                await asyncio.wait_for(lane.wake.wait(), remaining)
            except TimeoutError:
                return

    def _take(self, key: K, lane: _Lane[I]) -> list[_Entry[I]]:
        limit = self.limit(key)
        batch: list[_Entry[I]] = []
        now = time.perf_counter()
        while lane.pending and len(batch) < limit:
            entry = lane.pending.popleft()
            self._depth -= 1
            if entry.future.done():  # cancelled while waiting
                continue
            self.observer.waited(now - entry.enqueued)
            batch.append(entry)
        self.observer.queued(self._depth)
        return batch

    async def _run(self, key: K, batch: list[_Entry[I]]) -> None:
        items = [entry.item for entry in batch]
        started = time.perf_counter()
        try:
            results = await asyncio.to_thread(self._run_batch, key, items)
            if len(results) != len(items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)}")
        except Exception as exc:
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        finally:
            seconds = time.perf_counter() - started
            self.observer.batch(key, len(batch), seconds)
            self._adapt(key, len(batch), seconds)
        for entry, result in zip(batch, results, strict=True):
            if entry.future.done():
                continue
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(result)

    def _adapt(self, key: K, size: int, seconds: float) -> None:
        limit = self.limit(key)
        if seconds > self.target_latency and limit > 1:
            self._limits[key] = max(1, limit // 2)
        elif size >= limit and seconds < self.target_latency / 2:
            self._limits[key] = min(self.max_batch_size, limit + max(1, limit // 4))


def batcher_from_settings(
    run_batch: RunBatch,
    settings: BatchingSettings | None,
    observer: BatchObserver | None = None,
) -> MicroBatcher[Any, Any, Any] | None:
    """The batcher ``settings`` describe for ``run_batch``; ``None`` when batching is off."""
    if settings is None or not settings.enabled:
        return None
    return MicroBatcher(
        run_batch,
        max_batch_size=settings.max_size,
        max_wait_ms=settings.max_wait_ms,
        queue_size=settings.queue_size,
        target_latency_ms=settings.target_latency_ms,
        observer=observer,
        parallel=settings.parallel or usable_cpus(),
    )
