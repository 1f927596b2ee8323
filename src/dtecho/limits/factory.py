"""Build the limiter the settings ask for."""

from __future__ import annotations

from redis.asyncio import Redis

from dtecho.config import LimitProfile, LimitsSettings
from dtecho.limits._rules import DecisionCounts, allowed_without_limits, check_tokens
from dtecho.limits.decision import Decision, Limiter, Ticket
from dtecho.limits.local import LocalLimiter
from dtecho.limits.redis_limiter import RedisLimiter
from dtecho.limits.resilient import ResilientLimiter

__all__ = ["UnlimitedLimiter", "build_limiter"]


class UnlimitedLimiter:
    """Admits everything and records nothing: ``limits.enabled: false``."""

    def __init__(self) -> None:
        self._counts = DecisionCounts()

    def __repr__(self) -> str:
        return "UnlimitedLimiter()"

    async def admit(
        self,
        principal_id: str,
        model: str | None,
        principal_limits: LimitProfile,
        model_limits: LimitProfile,
        tokens: int,
    ) -> Decision:
        """Always allowed, without headers."""
        check_tokens(tokens)
        decision = allowed_without_limits(principal_id, "local")
        self._counts.record(decision)
        return decision

    async def settle(self, ticket: Ticket, actual_tokens: int) -> None:
        """Nothing was held."""

    async def close(self) -> None:
        """Nothing to release."""

    def counts(self) -> dict[tuple[str, str, str], int]:
        """``("allowed", "", "local") → decisions``."""
        return self._counts.snapshot()


def build_limiter(
    settings: LimitsSettings, redis_client: Redis | None, *, namespace: str = "dtecho"
) -> Limiter:
    """Local limits without Redis; Redis limits with a local fallback otherwise.

    ``redis_client`` stays the caller's to close. With ``settings.enabled`` false the
    limiter admits everything.
    """
    if not settings.enabled:
        return UnlimitedLimiter()
    local = LocalLimiter(lease_seconds=settings.concurrency_lease_seconds)
    if redis_client is None:
        return local
    return ResilientLimiter(
        RedisLimiter(
            redis_client, namespace=namespace, lease_seconds=settings.concurrency_lease_seconds
        ),
        local,
        on_failure=settings.on_redis_failure,
        retry_seconds=settings.redis_retry_seconds,
    )
