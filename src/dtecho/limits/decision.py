"""What a limiter answers: a :class:`Decision`, the :class:`Ticket` to settle, the protocol.

Every backend (:class:`~dtecho.limits.LocalLimiter`, :class:`~dtecho.limits.RedisLimiter`,
:class:`~dtecho.limits.ResilientLimiter`) implements :class:`Limiter`; callers code against
the protocol only::

    decision = await limiter.admit(principal.id, model, principal.limits, model_limits, 256)
    if not decision.allowed:
        raise RateLimited(decision.message, headers=...)
    try:
        ...  # serve the request
    finally:
        await limiter.settle(decision.ticket, usage.total_tokens)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from dtecho.config import LimitProfile

__all__ = [
    "Backend",
    "Decision",
    "Limiter",
    "Outcome",
    "Reason",
    "ScopeCharge",
    "Ticket",
]

Reason = Literal["requests", "tokens", "concurrency", "budget", "unavailable"]
Backend = Literal["redis", "local"]
Outcome = Literal["allowed", "refused", "fallback", "settle_error"]


@dataclass(frozen=True, slots=True)
class ScopeCharge:
    """What one admission holds in one scope, so that :meth:`Limiter.settle` can undo or fix it.

    ``model`` is ``None`` for the principal scope ("all models").
    """

    model: str | None
    tokens: bool  # a tpm reservation sits in the bucket of ``Ticket.second``
    lease: bool  # a concurrency lease named ``Ticket.id`` is held
    budget_period: Literal["day", "month"] | None  # a budget reservation was made …
    period_start: int  # … in the period starting here (UTC epoch seconds; 0 without budget)


@dataclass(frozen=True, slots=True)
class Ticket:
    """What :meth:`Limiter.settle` needs to correct an admission; opaque to callers."""

    backend: Backend
    principal_id: str
    id: str  # unique: the lease and request-window member
    tokens: int  # reserved at admission
    second: int  # the tpm bucket the reservation went to (epoch seconds of the backend clock)
    charges: tuple[ScopeCharge, ...] = ()  # empty: nothing to settle


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one :meth:`Limiter.admit`.

    ``retry_after`` is in seconds (0 when allowed). ``headers`` are the OpenAI rate-limit
    headers as ASGI byte pairs, with ``retry-after`` added on refusals. ``message`` names the
    limit that refused (empty when allowed). ``ticket`` is set exactly when ``allowed``.
    """

    allowed: bool
    reason: Reason | None
    retry_after: float
    headers: tuple[tuple[bytes, bytes], ...]
    ticket: Ticket | None
    backend: Backend
    message: str = ""


@runtime_checkable
class Limiter(Protocol):
    """Admission control over two scopes: the principal, and the principal on one model."""

    async def admit(
        self,
        principal_id: str,
        model: str | None,
        principal_limits: LimitProfile,
        model_limits: LimitProfile,
        tokens: int,
    ) -> Decision:
        """Admit one request that reserves ``tokens`` (prompt + expected completion).

        The request passes only if every configured limit of both scopes allows it; a refused
        request records nothing anywhere. The model scope is skipped when ``model`` is
        ``None`` or ``model_limits`` sets no limit.
        """
        ...

    async def settle(self, ticket: Ticket, actual_tokens: int) -> None:
        """Release the ticket's lease and correct its reservation to ``actual_tokens``.

        Call once per admitted request, when it is done (successful or not). Never raises.
        """
        ...

    async def close(self) -> None:
        """Release the limiter's resources (not a Redis client that was handed in)."""
        ...

    def counts(self) -> dict[tuple[str, str, str], int]:
        """``(outcome, reason or "", backend) → count`` since start, for a metrics collector."""
        ...
