"""A retry (or hedge) budget: extra attempts as a share of recent requests, like Envoy's.

Retries that are not budgeted turn an upstream's brown-out into a retry storm: every
failing request becomes ``attempts`` requests just when the upstream can least take them.
A budget caps the extra load at ``ratio`` of the traffic, with a floor of ``minimum`` per
window so that a quiet model can still retry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["RatioBudget"]

# A ratio times a count can land a hair below the whole number it means (0.29 × 100 =
# 28.999999999999996); without this slack that request's last extra attempt would be refused.
_SLACK = 1e-9


class RatioBudget:
    """Allows extra attempts (retries or hedges) up to ``ratio`` of recent requests, or
    ``minimum`` per window, whichever is more — Envoy's retry budget.

    The window is ``buckets`` time slices of ``window_seconds / buckets`` each, so counting
    is O(1) amortised, memory is fixed, and old traffic is forgotten a slice at a time: a
    count is remembered for at least ``(buckets - 1) / buckets`` of the window and at most
    the whole window.

    Parameters
    ----------
    ratio:
        Extra attempts allowed per request in the window (≥ 0; 0.1 lets one in ten retry).
    minimum:
        Extra attempts allowed per window whatever the traffic (≥ 0).
    window_seconds:
        How far back requests and extra attempts count (> 0).
    clock:
        Monotonic seconds; injectable for tests.
    buckets:
        Time slices the window is kept in (≥ 1).

    Attributes
    ----------
    spent, refused:
        Totals since construction of extra attempts allowed and refused, for metrics.
    """

    __slots__ = (
        "_bucket",
        "_clock",
        "_extras",
        "_extras_total",
        "_requests",
        "_requests_total",
        "_width",
        "minimum",
        "ratio",
        "refused",
        "spent",
        "window_seconds",
    )

    def __init__(
        self,
        ratio: float,
        *,
        minimum: int = 0,
        window_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        buckets: int = 10,
    ) -> None:
        if not 0.0 <= ratio < math.inf:
            raise ValueError(f"ratio must be finite and non-negative, got {ratio!r}")
        if minimum < 0:
            raise ValueError(f"minimum must be non-negative, got {minimum!r}")
        if not 0.0 < window_seconds < math.inf:
            raise ValueError(f"window_seconds must be positive, got {window_seconds!r}")
        if buckets < 1:
            raise ValueError(f"buckets must be at least 1, got {buckets!r}")
        self.ratio = ratio
        self.minimum = minimum
        self.window_seconds = window_seconds
        self.spent = 0
        self.refused = 0
        self._clock = clock
        self._width = window_seconds / buckets
        self._requests = [0] * buckets  # per slice, indexed by slice number mod buckets
        self._extras = [0] * buckets
        self._requests_total = 0  # sums over the live slices, kept so reads are O(1)
        self._extras_total = 0
        self._bucket = math.floor(clock() / self._width)  # the current slice's number

    def _advance(self) -> int:
        """Move to the current slice, forgetting the slices that left the window; its index."""
        bucket = math.floor(self._clock() / self._width)
        current = self._bucket
        if bucket > current:  # a clock that stepped back keeps counting in the current slice
            requests, extras = self._requests, self._extras
            size = len(requests)
            if bucket - current >= size:
                for i in range(size):
                    requests[i] = 0
                    extras[i] = 0
                self._requests_total = 0
                self._extras_total = 0
            else:
                for number in range(current + 1, bucket + 1):
                    i = number % size
                    self._requests_total -= requests[i]
                    self._extras_total -= extras[i]
                    requests[i] = 0
                    extras[i] = 0
            self._bucket = current = bucket
        return current % len(self._requests)

    def _allowed(self) -> float:
        return max(self.ratio * self._requests_total, float(self.minimum))

    def record_request(self) -> None:
        """Count a client request (its primary attempt), which earns ``ratio`` extra attempts."""
        self._requests[self._advance()] += 1
        self._requests_total += 1

    def try_spend(self) -> bool:
        """Whether one extra attempt may go now; if so it is counted against the budget."""
        i = self._advance()
        allowed = self.ratio * self._requests_total  # _allowed() inlined: per retry and hedge
        if allowed < self.minimum:
            allowed = self.minimum
        if self._extras_total + 1 <= allowed + _SLACK:
            self._extras[i] += 1
            self._extras_total += 1
            self.spent += 1
            return True
        self.refused += 1
        return False

    def snapshot(self) -> dict[str, float]:
        """The window now: ``requests``, ``extra_attempts`` and ``allowed`` extra attempts."""
        self._advance()
        return {
            "requests": float(self._requests_total),
            "extra_attempts": float(self._extras_total),
            "allowed": self._allowed(),
        }

    def __repr__(self) -> str:
        return (
            f"RatioBudget(ratio={self.ratio!r}, minimum={self.minimum!r}, "
            f"window_seconds={self.window_seconds!r}, spent={self.spent}, "
            f"refused={self.refused})"
        )
