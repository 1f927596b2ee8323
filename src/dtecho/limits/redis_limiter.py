"""Limits shared by every replica: one Lua script per decision on one Redis (or Cluster slot).

Key layout under ``namespace`` for a principal ``P`` (its id with ``{``, ``}`` and ``%``
percent-encoded, so that the hash tag is exactly the principal's)::

    {ns:lim:P}:p:req          ZSET  admission member → Redis time (µs)       PEXPIRE window
    {ns:lim:P}:p:tok          HASH  second → tokens reserved in it           PEXPIRE window+
    {ns:lim:P}:p:par          ZSET  lease member → expiry (µs)               PEXPIRE lease
    {ns:lim:P}:p:bud:day      HASH  start → period start, used → tokens      EXPIREAT end+1d
    {ns:lim:P}:m:req:<model>  … the same four for the principal on one model

All keys of one principal share the hash tag, so both scopes live in one Cluster slot and
one ``EVALSHA`` decides atomically; every key carries a TTL, so idle principals leave
nothing behind. Errors of Redis propagate from :meth:`RedisLimiter.admit` (wrap the limiter
in :class:`~dtecho.limits.ResilientLimiter` to fall back); :meth:`RedisLimiter.settle` never
raises.
"""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from dtecho.config import LimitProfile
from dtecho.limits._lua import ADMIT_SCRIPT, SETTLE_SCRIPT
from dtecho.limits._rules import (
    DecisionCounts,
    Scope,
    ScopeReport,
    active_scopes,
    allowed_without_limits,
    build_decision,
    charge_for,
    check_tokens,
)
from dtecho.limits.decision import Decision, Ticket

__all__ = ["REDIS_ERRORS", "RedisLimiter"]

_log = structlog.get_logger("dtecho.limits")

# What "Redis failed" means to the callers: a reply error, a broken or refused connection,
# a timeout (TimeoutError and ConnectionError are OSErrors).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)

_REPORT_FIELDS = 8  # integers per scope in the admit script's reply


def _escape(text: str) -> str:
    # Braces would end the hash tag early and let two principals share keys' prefixes.
    if "%" in text or "{" in text or "}" in text:
        return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return text


class RedisLimiter:
    """The :class:`~dtecho.limits.Limiter` on Redis; every replica sees the same counts.

    ``client`` is owned by the caller (``close`` leaves it open). Its timeouts bound every
    call; :class:`~dtecho.limits.ResilientLimiter` adds its own bound as well.
    ``window_seconds`` is the rate window, 60 in production (tests shorten it).
    """

    def __init__(
        self,
        client: Redis,
        *,
        namespace: str = "dtecho",
        lease_seconds: float = 600.0,
        window_seconds: float = 60.0,
    ) -> None:
        if not namespace or "{" in namespace or "}" in namespace:
            raise ValueError(f"namespace must be non-empty and hold no braces, got {namespace!r}")
        if not lease_seconds > 0:
            raise ValueError("lease_seconds must be > 0")
        if not window_seconds > 0:
            raise ValueError("window_seconds must be > 0")
        self.client = client
        self.namespace = namespace
        self.lease_seconds = lease_seconds
        self.window_seconds = window_seconds
        self._window_us = round(window_seconds * 1_000_000)
        self._lease_us = round(lease_seconds * 1_000_000)
        # register_script: EVALSHA, and on NOSCRIPT (a restarted or flushed Redis) one
        # SCRIPT LOAD and a second EVALSHA.
        self._admit_script = client.register_script(ADMIT_SCRIPT)
        self._settle_script = client.register_script(SETTLE_SCRIPT)
        self._counts = DecisionCounts()

    def __repr__(self) -> str:
        return (
            f"RedisLimiter(namespace={self.namespace!r}, lease_seconds={self.lease_seconds}, "
            f"window_seconds={self.window_seconds})"
        )

    # -- keys --------------------------------------------------------------------------------

    def tag(self, principal_id: str) -> str:
        """The hash tag every key of ``principal_id`` starts with."""
        return f"{{{self.namespace}:lim:{_escape(principal_id)}}}"

    def keys(self, principal_id: str, model: str | None, period: str = "day") -> list[str]:
        """The request, token, lease and budget keys of one scope."""
        scope = f"{self.tag(principal_id)}:p:" if model is None else f"{self.tag(principal_id)}:m:"
        suffix = "" if model is None else f":{model}"
        return [
            f"{scope}req{suffix}",
            f"{scope}tok{suffix}",
            f"{scope}par{suffix}",
            f"{scope}bud:{period}{suffix}",
        ]

    # -- the protocol ------------------------------------------------------------------------

    async def admit(
        self,
        principal_id: str,
        model: str | None,
        principal_limits: LimitProfile,
        model_limits: LimitProfile,
        tokens: int,
    ) -> Decision:
        """Decide in one ``EVALSHA``; raises what Redis raises (see :data:`REDIS_ERRORS`)."""
        check_tokens(tokens)
        scopes = active_scopes(model, principal_limits, model_limits)
        if not scopes:
            decision = allowed_without_limits(principal_id, "redis")
            self._counts.record(decision)
            return decision
        member = uuid.uuid4().hex
        keys: list[str] = []
        args: list[Any] = [tokens, self._window_us, self._lease_us, member]
        for scope in scopes:
            profile = scope.profile
            keys += self.keys(principal_id, scope.model, profile.budget_period)
            args += [
                profile.rpm or 0,
                profile.tpm or 0,
                profile.max_parallel or 0,
                profile.token_budget or 0,
                profile.budget_period,
            ]
        reply = await self._admit_script(keys=keys, args=args)
        allowed, now_us = int(reply[0]) == 1, int(reply[1])
        now = now_us / 1_000_000
        reports = tuple(
            _report(scope, reply[2 + i * _REPORT_FIELDS : 2 + (i + 1) * _REPORT_FIELDS])
            for i, scope in enumerate(scopes)
        )
        ticket = None
        if allowed:
            ticket = Ticket(
                backend="redis",
                principal_id=principal_id,
                id=member,
                tokens=tokens,
                second=now_us // 1_000_000,
                charges=tuple(charge_for(report) for report in reports),
            )
        decision = build_decision(
            allowed=allowed,
            reports=reports,
            tokens=tokens,
            now=now,
            window=self.window_seconds,
            backend="redis",
            ticket=ticket,
        )
        self._counts.record(decision)
        return decision

    async def settle(self, ticket: Ticket, actual_tokens: int) -> None:
        """Release the lease and correct the reservations in one ``EVALSHA``; never raises."""
        try:
            await self.settle_or_raise(ticket, actual_tokens)
        except Exception as exc:  # the contract: settling never fails the request
            self._counts.add("settle_error", "", "redis")
            _log.warning(
                "limits_settle_failed",
                backend="redis",
                principal=ticket.principal_id,
                error=f"{type(exc).__name__}: {exc}",
            )

    async def settle_or_raise(self, ticket: Ticket, actual_tokens: int) -> None:
        """:meth:`settle`, raising what Redis raises (for callers that track Redis health)."""
        correction = max(0, int(actual_tokens)) - ticket.tokens
        charges = ticket.charges
        if not charges or (correction == 0 and not any(charge.lease for charge in charges)):
            return  # nothing held, nothing to correct: no round trip
        keys: list[str] = []
        args: list[Any] = [correction, ticket.second, ticket.id, self._window_us]
        for charge in charges:
            _, tok, par, bud = self.keys(
                ticket.principal_id, charge.model, charge.budget_period or "day"
            )
            keys += [tok, par, bud]
            args += [int(charge.tokens), int(charge.lease), charge.period_start]
        await self._settle_script(keys=keys, args=args)

    async def close(self) -> None:
        """Nothing to release: the client belongs to the caller."""

    def counts(self) -> dict[tuple[str, str, str], int]:
        """Decisions and settle errors since start, by ``(outcome, reason, "redis")``."""
        return self._counts.snapshot()


def _report(scope: Scope, values: list[Any]) -> ScopeReport:
    requests, requests_reset, used, tokens_reset, in_flight, budget_used, start, end = (
        int(value) for value in values
    )
    return ScopeReport(
        scope=scope,
        requests=requests,
        requests_reset=requests_reset / 1_000_000,
        tokens_used=used,
        tokens_reset=tokens_reset / 1_000_000,
        in_flight=in_flight,
        budget_used=budget_used,
        period_start=start,
        period_end=end,
    )
