"""Single-flight: concurrent calls for one key share one execution."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class _Flight:
    task: asyncio.Task[Any]
    waiters: int = 0


class SingleFlight(Generic[T]):
    """Runs ``fn`` once per key at a time; callers arriving meanwhile await the same result.

    The work runs in its own task, so a caller that is cancelled (a client that hung up) does
    not cancel it for the others; only when every caller has gone is the work cancelled.
    An exception reaches every caller of that flight. Nothing is remembered afterwards: the
    next call for the key starts a new flight (caching the result is the caller's business).
    """

    def __init__(self) -> None:
        self._flights: dict[str, _Flight] = {}

    def __len__(self) -> int:
        """Flights in progress."""
        return len(self._flights)

    async def run(self, key: str, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """``(result, shared)``: ``shared`` is true for callers that joined a running flight."""
        flight = self._flights.get(key)
        shared = flight is not None
        if flight is None:
            flight = _Flight(asyncio.ensure_future(fn()))
            self._flights[key] = flight
            flight.task.add_done_callback(lambda task: self._land(key, flight, task))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task), shared
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # Everyone who wanted this result has gone: stop the work, and let the next
                # caller start afresh rather than join a flight that is being cancelled.
                self._forget(key, flight)
                flight.task.cancel()

    def _land(self, key: str, flight: _Flight, task: asyncio.Task[Any]) -> None:
        self._forget(key, flight)
        if not task.cancelled():
            task.exception()  # retrieved here so an error nobody awaited is not logged as lost

    def _forget(self, key: str, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
