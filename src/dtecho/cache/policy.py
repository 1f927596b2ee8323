"""How long a computed response is kept, by caching strategy and compute cost."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from dtecho.config import CacheSettings

__all__ = ["CachePolicy", "Strategy"]

Strategy = Literal["aggressive", "balanced", "conservative", "dynamic"]

_MULTIPLIERS: dict[str, float] = {"aggressive": 2.0, "balanced": 1.0, "conservative": 0.5}
DYNAMIC_MAX_MULTIPLIER = 4.0
DYNAMIC_SCALE_MS = 10.0


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The TTL of an entry as a function of what it cost to compute.

    - ``aggressive``: 2 × ``default_ttl_seconds``;
    - ``balanced``: 1 × ``default_ttl_seconds``;
    - ``conservative``: 0.5 × ``default_ttl_seconds``, and results that took less than
      ``conservative_min_compute_seconds`` to compute are not cached at all (cheap to redo);
    - ``dynamic``: ``default_ttl_seconds × clamp(1 + log2(1 + compute_ms / 10), 1, 4)``: instant
      results get the base TTL, 10 ms doubles it, from 70 ms on it is 4× — the costlier a
      result, the longer it is worth keeping.
    """

    strategy: Strategy = "balanced"
    default_ttl_seconds: float = 3600.0
    conservative_min_compute_seconds: float = 0.01

    def __post_init__(self) -> None:
        if self.strategy not in (*_MULTIPLIERS, "dynamic"):
            raise ValueError(f"unknown cache strategy {self.strategy!r}")
        if not self.default_ttl_seconds > 0:
            raise ValueError(f"default_ttl_seconds must be > 0 (got {self.default_ttl_seconds})")
        if not self.conservative_min_compute_seconds >= 0:
            raise ValueError("conservative_min_compute_seconds must be >= 0")

    @classmethod
    def from_settings(
        cls, settings: CacheSettings, *, conservative_min_compute_seconds: float = 0.01
    ) -> CachePolicy:
        """The policy the cache settings describe."""
        return cls(
            strategy=settings.strategy,
            default_ttl_seconds=settings.default_ttl_seconds,
            conservative_min_compute_seconds=conservative_min_compute_seconds,
        )

    def ttl(self, compute_seconds: float) -> float | None:
        """Seconds to keep a result that took ``compute_seconds``; ``None`` means don't cache."""
        if not compute_seconds >= 0:  # also refuses NaN
            raise ValueError(f"compute_seconds must be >= 0 (got {compute_seconds})")
        base = self.default_ttl_seconds
        if self.strategy == "dynamic":
            growth = 1.0 + math.log2(1.0 + compute_seconds * 1000.0 / DYNAMIC_SCALE_MS)
            return base * min(max(growth, 1.0), DYNAMIC_MAX_MULTIPLIER)
        if (
            self.strategy == "conservative"
            and compute_seconds < self.conservative_min_compute_seconds
        ):
            return None
        return base * _MULTIPLIERS[self.strategy]
