"""The arithmetic every backend shares: scopes, periods, refusals, and the Decision itself.

A backend measures each scope (the local limiter in Python, the Redis limiter in Lua with the
same formulas) and hands a :class:`ScopeReport` per scope to :func:`build_decision`, so the
reasons, retry times, messages and headers are computed in exactly one place.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from dtecho.config import LimitProfile
from dtecho.limits.decision import Backend, Decision, Reason, ScopeCharge, Ticket
from dtecho.limits.headers import LimitState, rate_limit_headers

__all__ = [
    "CONCURRENCY_RETRY_SECONDS",
    "DecisionCounts",
    "Refusal",
    "Scope",
    "ScopeReport",
    "active_scopes",
    "allowed_without_limits",
    "build_decision",
    "ceil_millis",
    "charge_for",
    "check_tokens",
    "is_unlimited",
    "period_bounds",
    "refusals",
    "seconds_until_fits",
]

# When a concurrency limit refuses, nobody knows when a request in flight will finish; a
# short retry keeps clients polite without making them wait out a whole lease.
CONCURRENCY_RETRY_SECONDS = 1.0
_DAY = 86_400


def is_unlimited(profile: LimitProfile) -> bool:
    """Whether ``profile`` sets no limit at all (``budget_period`` alone limits nothing)."""
    return (
        profile.rpm is None
        and profile.tpm is None
        and profile.max_parallel is None
        and profile.token_budget is None
    )


@dataclass(frozen=True, slots=True)
class Scope:
    """One scope of a decision: the principal (``model is None``) or the principal on a model."""

    model: str | None
    profile: LimitProfile


def active_scopes(
    model: str | None, principal_limits: LimitProfile, model_limits: LimitProfile
) -> tuple[Scope, ...]:
    """The scopes that limit something, principal first; empty means "allow, record nothing"."""
    scopes: list[Scope] = []
    if not is_unlimited(principal_limits):
        scopes.append(Scope(None, principal_limits))
    if model is not None and not is_unlimited(model_limits):
        scopes.append(Scope(model, model_limits))
    return tuple(scopes)


def check_tokens(tokens: int) -> int:
    """Validate a token count at the boundary."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens must be an int >= 0, got {tokens!r}")
    return tokens


def period_bounds(now: float, period: Literal["day", "month"]) -> tuple[int, int]:
    """``(start, end)`` of the UTC calendar day or month holding ``now`` (epoch seconds)."""
    if period == "day":
        start = int(now // _DAY) * _DAY
        return start, start + _DAY
    moment = datetime.fromtimestamp(now, UTC)
    first = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    following = (
        datetime(moment.year + 1, 1, 1, tzinfo=UTC)
        if moment.month == 12
        else datetime(moment.year, moment.month + 1, 1, tzinfo=UTC)
    )
    return int(first.timestamp()), int(following.timestamp())


def seconds_until_fits(
    buckets: Iterable[tuple[int, int]],
    used: int,
    tokens: int,
    limit: int,
    now: float,
    window: float,
) -> float:
    """Seconds until ``tokens`` more fit under ``limit`` as the oldest buckets leave the window.

    ``buckets`` are ``(second, tokens)`` in ascending order, summing to ``used``; bucket ``s``
    counts while it overlaps the window ``(now - window, now]``, i.e. until ``s + 1 + window``.
    A request larger than ``limit`` never fits: the answer is then the time until the whole
    window has emptied.
    """
    excess = used + tokens - limit
    if excess <= 0:
        return 0.0
    freed = 0
    last_gone = now
    for second, count in buckets:
        freed += count
        last_gone = second + 1 + window
        if freed >= excess and tokens <= limit:
            return max(0.0, last_gone - now)
    return max(0.0, last_gone - now) if tokens <= limit else max(window, last_gone - now)


@dataclass(frozen=True, slots=True)
class ScopeReport:
    """One scope's state after a decision, as the backend measured it.

    Counts include this request when it was admitted; when it was refused they are the state
    the refusal was judged on.
    """

    scope: Scope
    requests: int  # admitted requests in the window
    requests_reset: float  # seconds until one more request would be admitted
    tokens_used: int  # tokens in the window's buckets
    tokens_reset: float  # seconds until this request's tokens would fit once more
    in_flight: int  # concurrency leases held
    budget_used: int  # tokens of the current budget period
    period_start: int  # of the budget period (epoch seconds; 0 without a budget)
    period_end: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """A limit that refused, and when a retry could pass it."""

    reason: Reason
    retry_after: float
    report: ScopeReport


def charge_for(report: ScopeReport) -> ScopeCharge:
    """What an admission judged on ``report`` holds in its scope."""
    profile = report.scope.profile
    has_budget = profile.token_budget is not None
    return ScopeCharge(
        model=report.scope.model,
        tokens=profile.tpm is not None,
        lease=profile.max_parallel is not None,
        budget_period=profile.budget_period if has_budget else None,
        period_start=report.period_start if has_budget else 0,
    )


def refusals(report: ScopeReport, tokens: int, now: float, window: float) -> list[Refusal]:
    """Each limit of the scope that refuses ``tokens`` more, judged on ``report``."""
    profile = report.scope.profile
    found: list[Refusal] = []
    if profile.rpm is not None and report.requests >= profile.rpm:
        found.append(Refusal("requests", report.requests_reset, report))
    if profile.tpm is not None and (
        tokens > profile.tpm or report.tokens_used + tokens > profile.tpm
    ):
        retry = window if tokens > profile.tpm else report.tokens_reset
        found.append(Refusal("tokens", retry, report))
    if profile.max_parallel is not None and report.in_flight >= profile.max_parallel:
        found.append(Refusal("concurrency", CONCURRENCY_RETRY_SECONDS, report))
    budget = profile.token_budget
    if budget is not None and (tokens > budget or report.budget_used + tokens > budget):
        found.append(Refusal("budget", report.period_end - now, report))
    return found


def _scope_name(scope: Scope) -> str:
    return "this key" if scope.model is None else f"this key on model '{scope.model}'"


def refusal_message(refusal: Refusal, tokens: int) -> str:
    """Human text naming the limit, its size and the scope."""
    report, profile = refusal.report, refusal.report.scope.profile
    where = _scope_name(report.scope)
    if refusal.reason == "requests":
        return f"Rate limit reached: {profile.rpm} requests per minute for {where}."
    if refusal.reason == "tokens":
        if profile.tpm is not None and tokens > profile.tpm:
            return (
                f"Request too large: it needs {tokens} tokens, but the limit is "
                f"{profile.tpm} tokens per minute for {where}. Reduce max_tokens or the prompt."
            )
        return (
            f"Rate limit reached: {profile.tpm} tokens per minute for {where} "
            f"(used {report.tokens_used}, requested {tokens})."
        )
    if refusal.reason == "concurrency":
        return (
            f"Concurrency limit reached: {profile.max_parallel} requests in flight at once "
            f"for {where}."
        )
    end = datetime.fromtimestamp(report.period_end, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if profile.token_budget is not None and tokens > profile.token_budget:
        return (
            f"Request too large: it needs {tokens} tokens, but the budget is "
            f"{profile.token_budget} tokens per {profile.budget_period} for {where}."
        )
    return (
        f"Token budget exhausted: {profile.token_budget} tokens per {profile.budget_period} "
        f"for {where} (used {report.budget_used}, requested {tokens}); it renews at {end}."
    )


def _tightest(states: list[LimitState]) -> LimitState | None:
    # The scope with the least left is the one a client must respect; on a tie, the later
    # reset is the honest one.
    if not states:
        return None
    return min(states, key=lambda state: (state.remaining, -state.reset_seconds))


def _header_states(
    reports: Iterable[ScopeReport],
) -> tuple[LimitState | None, LimitState | None]:
    requests: list[LimitState] = []
    tokens: list[LimitState] = []
    for report in reports:
        profile = report.scope.profile
        if profile.rpm is not None:
            requests.append(
                LimitState(profile.rpm, profile.rpm - report.requests, report.requests_reset)
            )
        if profile.tpm is not None:
            tokens.append(
                LimitState(profile.tpm, profile.tpm - report.tokens_used, report.tokens_reset)
            )
    return _tightest(requests), _tightest(tokens)


def build_decision(
    *,
    allowed: bool,
    reports: tuple[ScopeReport, ...],
    tokens: int,
    now: float,
    window: float,
    backend: Backend,
    ticket: Ticket | None,
) -> Decision:
    """The Decision for a backend's verdict and measurements."""
    requests_state, tokens_state = _header_states(reports)
    if allowed:
        return Decision(
            allowed=True,
            reason=None,
            retry_after=0.0,
            headers=rate_limit_headers(requests_state, tokens_state),
            ticket=ticket,
            backend=backend,
            message="",
        )
    found = [refusal for report in reports for refusal in refusals(report, tokens, now, window)]
    if not found:  # a backend refused on state it did not report: a bug, say so loudly
        raise RuntimeError("the limiter refused, but no limit in its report refuses")
    # A retry must pass every refusing limit, so the one that frees up last is the reason.
    binding = max(found, key=lambda refusal: refusal.retry_after)
    retry_after = max(binding.retry_after, 0.001)
    return Decision(
        allowed=False,
        reason=binding.reason,
        retry_after=retry_after,
        headers=rate_limit_headers(requests_state, tokens_state, retry_after),
        ticket=None,
        backend=backend,
        message=refusal_message(binding, tokens),
    )


def allowed_without_limits(principal_id: str, backend: Backend) -> Decision:
    """The fast path: nothing is limited, nothing is recorded, the ticket settles to a no-op."""
    return Decision(
        allowed=True,
        reason=None,
        retry_after=0.0,
        headers=(),
        ticket=Ticket(backend=backend, principal_id=principal_id, id="", tokens=0, second=0),
        backend=backend,
        message="",
    )


class DecisionCounts:
    """``(outcome, reason or "", backend) → count``; plain ints, read by a metrics collector."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str, str]] = Counter()

    def add(self, outcome: str, reason: str | None, backend: Backend) -> None:
        self._counts[(outcome, reason or "", backend)] += 1

    def record(self, decision: Decision) -> None:
        self.add("allowed" if decision.allowed else "refused", decision.reason, decision.backend)

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        return dict(self._counts)


def ceil_millis(seconds: float) -> int:
    """Seconds as whole milliseconds, rounded up (key TTLs must not cut a window short)."""
    return math.ceil(seconds * 1000)
