"""Redis limits that survive Redis: fall back to local limits (or refuse) while it is down.

A small state machine: *up* (every decision on Redis) → a Redis error → *down* for
``retry_seconds`` (decisions local or refused, Redis not tried, so a dead Redis adds no
timeout to every request) → one probe decision on Redis → *up* again, or *down* once more.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Literal

import structlog

from dtecho.config import LimitProfile
from dtecho.limits._rules import DecisionCounts, active_scopes, check_tokens
from dtecho.limits.decision import Decision, Ticket
from dtecho.limits.headers import rate_limit_headers
from dtecho.limits.local import LocalLimiter
from dtecho.limits.redis_limiter import REDIS_ERRORS, RedisLimiter

__all__ = ["ResilientLimiter"]

_log = structlog.get_logger("dtecho.limits")

UNAVAILABLE_MESSAGE = "Rate limiting is unavailable right now; retry shortly."


class ResilientLimiter:
    """A :class:`RedisLimiter` with a :class:`LocalLimiter` (or a refusal) behind it.

    ``on_failure="local"`` decides with ``fallback`` while Redis is down; ``"deny"`` refuses
    with reason ``"unavailable"`` and ``retry_after = retry_seconds``. ``timeout_seconds``
    bounds each Redis call on top of the client's own socket timeouts (``None``: only
    those). A ticket settles with the backend that admitted it.
    """

    def __init__(
        self,
        primary: RedisLimiter,
        fallback: LocalLimiter,
        *,
        on_failure: Literal["local", "deny"] = "local",
        retry_seconds: float = 1.0,
        timeout_seconds: float | None = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if on_failure not in ("local", "deny"):
            raise ValueError(f"on_failure must be 'local' or 'deny', got {on_failure!r}")
        if not retry_seconds > 0:
            raise ValueError("retry_seconds must be > 0")
        if timeout_seconds is not None and not timeout_seconds > 0:
            raise ValueError("timeout_seconds must be > 0 or None")
        self.primary = primary
        self.fallback = fallback
        self.on_failure = on_failure
        self.retry_seconds = retry_seconds
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self.redis_available = True  # until a call says otherwise
        self._retry_at = 0.0
        self._probing = False
        self._counts = DecisionCounts()

    def __repr__(self) -> str:
        return (
            f"ResilientLimiter({self.primary!r}, {self.fallback!r}, "
            f"on_failure={self.on_failure!r}, retry_seconds={self.retry_seconds})"
        )

    async def admit(
        self,
        principal_id: str,
        model: str | None,
        principal_limits: LimitProfile,
        model_limits: LimitProfile,
        tokens: int,
    ) -> Decision:
        """Decide on Redis if it is up (or due for a probe), else fall back."""
        check_tokens(tokens)
        if not active_scopes(model, principal_limits, model_limits):
            # the fast path touches no Redis, whatever its state
            return await self.primary.admit(
                principal_id, model, principal_limits, model_limits, tokens
            )
        probe = not self.redis_available
        if probe and (self._probing or self.clock() < self._retry_at):
            return await self._fall_back(
                principal_id, model, principal_limits, model_limits, tokens
            )
        if probe:
            self._probing = True  # one probe at a time; the others stay local meanwhile
        try:
            async with asyncio.timeout(self.timeout_seconds):
                decision = await self.primary.admit(
                    principal_id, model, principal_limits, model_limits, tokens
                )
        except REDIS_ERRORS as exc:
            self._failed("admit", exc)
            return await self._fall_back(
                principal_id, model, principal_limits, model_limits, tokens
            )
        finally:
            if probe:
                self._probing = False
        self._succeeded()
        return decision

    async def _fall_back(
        self,
        principal_id: str,
        model: str | None,
        principal_limits: LimitProfile,
        model_limits: LimitProfile,
        tokens: int,
    ) -> Decision:
        if self.on_failure == "local":
            decision = await self.fallback.admit(
                principal_id, model, principal_limits, model_limits, tokens
            )
        else:
            decision = Decision(
                allowed=False,
                reason="unavailable",
                retry_after=self.retry_seconds,
                headers=rate_limit_headers(None, None, self.retry_seconds),
                ticket=None,
                backend="redis",
                message=UNAVAILABLE_MESSAGE,
            )
            self._counts.record(decision)
        self._counts.add("fallback", decision.reason, "redis")
        return decision

    async def settle(self, ticket: Ticket, actual_tokens: int) -> None:
        """Settle with the backend that admitted ``ticket``; never raises."""
        if ticket.backend == "local":
            await self.fallback.settle(ticket, actual_tokens)
            return
        # Tried even while Redis is thought down: a lease left behind would hold a
        # concurrency slot for a whole lease period once Redis is back.
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await self.primary.settle_or_raise(ticket, actual_tokens)
        except Exception as exc:  # the contract: settling never fails the request
            self._counts.add("settle_error", "", "redis")
            if isinstance(exc, REDIS_ERRORS):
                self._failed("settle", exc)
            else:
                _log.warning("limits_settle_failed", backend="redis", error=repr(exc))

    def _failed(self, operation: str, exc: BaseException) -> None:
        if self.redis_available:
            _log.warning(
                "limits_redis_unavailable",
                operation=operation,
                fallback=self.on_failure,
                retry_seconds=self.retry_seconds,
                error=f"{type(exc).__name__}: {exc}",
            )
        self.redis_available = False
        self._retry_at = self.clock() + self.retry_seconds

    def _succeeded(self) -> None:
        if not self.redis_available:
            _log.info("limits_redis_available")
        self.redis_available = True

    async def close(self) -> None:
        """Close both backends (the Redis client stays the caller's)."""
        await self.primary.close()
        await self.fallback.close()

    def counts(self) -> dict[tuple[str, str, str], int]:
        """Both backends' counts, plus fallbacks and settle errors seen here."""
        total: Counter[tuple[str, str, str]] = Counter(self.primary.counts())
        total.update(self.fallback.counts())
        total.update(self._counts.snapshot())
        return dict(total)
