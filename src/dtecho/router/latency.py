"""Per-deployment latency: an EWMA for routing and a recent-window p95 for adaptive hedging."""

from __future__ import annotations

import math

__all__ = ["LatencyTracker"]


class LatencyTracker:
    """Per-deployment latency: an EWMA (for routing) and a recent-window p95 (for adaptive hedging).

    ``observe`` is O(1): it updates the EWMA and writes into a ring buffer of the last
    ``window`` observations. ``p95`` sorts that buffer only when its cached value is stale,
    so its amortised cost per request is a small fraction of one sort.

    Tolerance of :meth:`p95`: it is exactly ``numpy.percentile(last, 95)`` (linear
    interpolation) of the last ``window`` observations *as they were when it was last
    computed*, and it is recomputed once ``refresh`` observations have arrived since
    (``refresh`` defaults to ``window // 16``, at least 1; 16 for the default window of 256).
    So it may lag the newest ``refresh - 1`` observations, never more.

    Parameters
    ----------
    alpha:
        Weight of the newest observation in the EWMA, in (0, 1]. The first observation sets
        the EWMA outright, so early values are not dragged towards zero.
    window:
        How many of the most recent observations the p95 is computed over (≥ 1).
    refresh:
        How many new observations make the cached p95 stale; ``None``: ``window // 16``.
    """

    __slots__ = ("_alpha", "_buffer", "_count", "_ewma", "_next", "_p95", "_p95_at", "_refresh")

    def __init__(self, *, alpha: float = 0.2, window: int = 256, refresh: int | None = None):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window!r}")
        if refresh is None:
            refresh = max(1, window // 16)
        if refresh < 1:
            raise ValueError(f"refresh must be at least 1, got {refresh!r}")
        self._alpha = alpha
        self._refresh = refresh
        self._buffer = [0.0] * window  # ring buffer, preallocated: observe never allocates
        self._next = 0  # where the next observation goes
        self._count = 0
        self._ewma: float | None = None
        self._p95: float | None = None
        self._p95_at = 0  # the count when _p95 was computed; 0 means never

    def observe(self, seconds: float) -> None:
        """Record one latency, in seconds (finite, ≥ 0)."""
        # One NaN or inf would poison the EWMA for good, so refuse it loudly.
        if not 0.0 <= seconds < math.inf:
            raise ValueError(f"a latency must be finite and non-negative, got {seconds!r}")
        ewma = self._ewma
        self._ewma = seconds if ewma is None else ewma + self._alpha * (seconds - ewma)
        buffer = self._buffer
        position = self._next
        buffer[position] = seconds
        position += 1
        self._next = 0 if position == len(buffer) else position
        self._count += 1

    @property
    def ewma(self) -> float | None:
        """The exponentially weighted moving average, in seconds; None before any observation."""
        return self._ewma

    @property
    def count(self) -> int:
        """Observations recorded since construction (not capped by the window)."""
        return self._count

    def p95(self) -> float | None:
        """The 95th percentile of the last ``window`` observations, in seconds; None if none.

        Within the class's documented tolerance (it may lag ``refresh - 1`` observations).
        """
        count = self._count
        if count == 0:
            return None
        if self._p95_at == 0 or count - self._p95_at >= self._refresh:
            self._p95 = self._percentile(0.95)
            self._p95_at = count
        return self._p95

    def _percentile(self, q: float) -> float:
        # The same definition as numpy.percentile's default ("linear"): rank (n - 1)·q,
        # interpolated between its neighbours in sorted order.
        n = min(self._count, len(self._buffer))
        values = sorted(self._buffer[:n]) if n < len(self._buffer) else sorted(self._buffer)
        rank = (n - 1) * q
        low = int(rank)
        if low + 1 >= n:
            return values[-1]
        fraction = rank - low
        return values[low] + (values[low + 1] - values[low]) * fraction

    def __repr__(self) -> str:
        return f"LatencyTracker(count={self._count}, ewma={self._ewma!r})"
