"""The cache's counters: plain integers, read by ``metrics()`` and by Prometheus at scrape time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["CacheStats"]

HIT_TIERS = ("L1", "L2", "L3")


@dataclass
class CacheStats:
    """What happened to lookups since the cache was built."""

    hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(HIT_TIERS, 0))
    misses: int = 0
    bypassed: int = 0  # calls while the cache is disabled
    coalesced: int = 0  # get_or_compute calls that joined another caller's flight
    computations: int = 0
    compute_seconds: float = 0.0
    hit_seconds: float = 0.0
    evictions: dict[str, int] = field(default_factory=lambda: {"L1": 0, "L2": 0})
    demotions: int = 0  # L1 evictions kept in L2
    invalidations: int = 0  # entries removed by invalidate_tags, invalidate_model and clear
    l3_corrupt: int = 0  # Redis values that did not decode (served as misses)

    @property
    def requests(self) -> int:
        """Lookups answered (hits + misses)."""
        return sum(self.hits.values()) + self.misses

    def record_hit(self, tier: str, seconds: float) -> None:
        self.hits[tier] += 1
        self.hit_seconds += seconds

    def record_compute(self, seconds: float) -> None:
        self.computations += 1
        self.compute_seconds += seconds

    def snapshot(self) -> dict[str, Any]:
        """The counters as the metrics endpoint shows them (times in milliseconds)."""
        hits = sum(self.hits.values())
        requests = self.requests
        return {
            "total_requests": requests,
            "hits": dict(self.hits),
            "misses": self.misses,
            "hit_ratio": hits / requests if requests else 0.0,
            "bypassed": self.bypassed,
            "coalesced": self.coalesced,
            "computations": self.computations,
            "evictions": dict(self.evictions),
            "demotions": self.demotions,
            "invalidations": self.invalidations,
            "l3_corrupt": self.l3_corrupt,
            "mean_miss_compute_ms": (
                1000.0 * self.compute_seconds / self.computations if self.computations else None
            ),
            "mean_hit_ms": 1000.0 * self.hit_seconds / hits if hits else None,
        }

    def counts(self, l3_errors: int) -> dict[tuple[str, str], int]:
        """Monotonic counters keyed by ``(event, tier)``, for a Prometheus counter family."""
        counts = {("hit", tier): self.hits[tier] for tier in HIT_TIERS}
        counts.update(
            {
                ("miss", ""): self.misses,
                ("bypass", ""): self.bypassed,
                ("coalesced", ""): self.coalesced,
                ("compute", ""): self.computations,
                ("eviction", "L1"): self.evictions["L1"],
                ("eviction", "L2"): self.evictions["L2"],
                ("demotion", "L2"): self.demotions,
                ("invalidation", ""): self.invalidations,
                ("l3_error", ""): l3_errors,
                ("l3_corrupt", ""): self.l3_corrupt,
            }
        )
        return counts
