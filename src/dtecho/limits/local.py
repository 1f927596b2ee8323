"""Limits of one process, in plain Python structures: no Redis, the same semantics.

Used alone when no Redis is configured, and as :class:`~dtecho.limits.ResilientLimiter`'s
fallback while Redis is down. A decision runs without an ``await``, so on one event loop it
is atomic: concurrent tasks cannot interleave inside it, and no lock is needed.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from dtecho.config import LimitProfile
from dtecho.limits._rules import (
    DecisionCounts,
    Scope,
    ScopeReport,
    active_scopes,
    allowed_without_limits,
    build_decision,
    charge_for,
    check_tokens,
    period_bounds,
    seconds_until_fits,
)
from dtecho.limits.decision import Decision, Ticket

__all__ = ["LocalLimiter"]

_ScopeKey = tuple[str, str | None]  # (principal id, model or None for "all models")


class _ScopeState:
    """The counters of one scope."""

    __slots__ = ("buckets", "budgets", "leases", "stamps", "tokens")

    def __init__(self) -> None:
        self.stamps: deque[float] = deque()  # admission times in the window, ascending
        self.buckets: deque[list[int]] = deque()  # [second, tokens], ascending seconds
        self.tokens = 0  # sum of the buckets
        # lease id → expiry; insertion order is expiry order, so the oldest is first
        self.leases: OrderedDict[str, float] = OrderedDict()
        self.budgets: dict[str, list[int]] = {}  # period kind → [start, end, used]

    def trim(self, now: float, window: float) -> None:
        """Drop what no longer counts at ``now``."""
        cutoff = now - window
        stamps = self.stamps
        while stamps and stamps[0] <= cutoff:
            stamps.popleft()
        oldest_bucket = int(cutoff // 1)
        buckets = self.buckets
        while buckets and buckets[0][0] < oldest_bucket:
            self.tokens -= buckets.popleft()[1]
        leases = self.leases
        while leases:
            lease_id, expiry = next(iter(leases.items()))
            if expiry > now:
                break
            del leases[lease_id]

    def is_idle(self, now: float) -> bool:
        """Whether nothing here counts any more (after :meth:`trim`)."""
        return (
            not self.stamps
            and not self.buckets
            and not self.leases
            and all(end <= now for _, end, _ in self.budgets.values())
        )


class LocalLimiter:
    """The :class:`~dtecho.limits.Limiter` in process memory.

    ``clock`` is wall-clock seconds (budget periods are UTC calendar days and months);
    ``window_seconds`` is the rate window, 60 in production (tests may shorten it).
    Each call costs O(1) amortised: the deques are trimmed from the front, and idle scopes
    are swept once per window.
    """

    def __init__(
        self,
        *,
        lease_seconds: float = 600.0,
        clock: Callable[[], float] = time.time,
        window_seconds: float = 60.0,
    ) -> None:
        if not lease_seconds > 0:
            raise ValueError("lease_seconds must be > 0")
        if not window_seconds > 0:
            raise ValueError("window_seconds must be > 0")
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.window_seconds = window_seconds
        self._scopes: dict[_ScopeKey, _ScopeState] = {}
        self._ids = itertools.count(1)
        self._next_sweep = 0.0
        self._counts = DecisionCounts()

    def __repr__(self) -> str:
        return (
            f"LocalLimiter(lease_seconds={self.lease_seconds}, "
            f"window_seconds={self.window_seconds}, scopes={len(self._scopes)})"
        )

    @property
    def tracked_scopes(self) -> int:
        """How many scopes hold counters now (idle ones are swept once per window)."""
        return len(self._scopes)

    async def admit(
        self,
        principal_id: str,
        model: str | None,
        principal_limits: LimitProfile,
        model_limits: LimitProfile,
        tokens: int,
    ) -> Decision:
        """Decide now, from this process's counters alone."""
        check_tokens(tokens)
        scopes = active_scopes(model, principal_limits, model_limits)
        if not scopes:
            decision = allowed_without_limits(principal_id, "local")
            self._counts.record(decision)
            return decision
        decision = self._decide(principal_id, scopes, tokens)
        self._counts.record(decision)
        return decision

    def _decide(self, principal_id: str, scopes: tuple[Scope, ...], tokens: int) -> Decision:
        # No await in here: this is what makes a decision atomic on the event loop.
        now = self.clock()
        window = self.window_seconds
        if now >= self._next_sweep:
            self._sweep(now)
        states = []
        allowed = True
        for scope in scopes:
            state = self._scopes.get((principal_id, scope.model))
            if state is None:
                state = self._scopes[(principal_id, scope.model)] = _ScopeState()
            state.trim(now, window)
            states.append(state)
            allowed = allowed and self._fits(scope.profile, state, tokens, now)
        second = int(now // 1)
        lease_id = str(next(self._ids))
        if allowed:
            for scope, state in zip(scopes, states, strict=True):
                self._record(scope.profile, state, tokens, now, second, lease_id)
        reports = tuple(
            self._report(scope, state, tokens, now)
            for scope, state in zip(scopes, states, strict=True)
        )
        ticket = None
        if allowed:
            ticket = Ticket(
                backend="local",
                principal_id=principal_id,
                id=lease_id,
                tokens=tokens,
                second=second,
                charges=tuple(charge_for(report) for report in reports),
            )
        return build_decision(
            allowed=allowed,
            reports=reports,
            tokens=tokens,
            now=now,
            window=window,
            backend="local",
            ticket=ticket,
        )

    @staticmethod
    def _budget_used(profile: LimitProfile, state: _ScopeState, now: float) -> int:
        entry = state.budgets.get(profile.budget_period)
        return entry[2] if entry is not None and entry[0] <= now < entry[1] else 0

    def _fits(self, profile: LimitProfile, state: _ScopeState, tokens: int, now: float) -> bool:
        if profile.rpm is not None and len(state.stamps) >= profile.rpm:
            return False
        if profile.tpm is not None and (
            tokens > profile.tpm or state.tokens + tokens > profile.tpm
        ):
            return False
        if profile.max_parallel is not None and len(state.leases) >= profile.max_parallel:
            return False
        budget = profile.token_budget
        return budget is None or self._budget_used(profile, state, now) + tokens <= budget

    def _record(
        self,
        profile: LimitProfile,
        state: _ScopeState,
        tokens: int,
        now: float,
        second: int,
        lease_id: str,
    ) -> None:
        if profile.rpm is not None:
            state.stamps.append(now)
        if profile.tpm is not None:
            buckets = state.buckets
            if buckets and buckets[-1][0] >= second:
                # the same second; or the clock stepped back, and the later bucket is the
                # conservative home (it leaves the window last)
                buckets[-1][1] += tokens
            else:
                buckets.append([second, tokens])
            state.tokens += tokens
        if profile.max_parallel is not None:
            state.leases[lease_id] = now + self.lease_seconds
        if profile.token_budget is not None:
            entry = state.budgets.get(profile.budget_period)
            if entry is None or not entry[0] <= now < entry[1]:
                start, end = period_bounds(now, profile.budget_period)
                entry = state.budgets[profile.budget_period] = [start, end, 0]
            entry[2] += tokens

    def _report(self, scope: Scope, state: _ScopeState, tokens: int, now: float) -> ScopeReport:
        profile = scope.profile
        window = self.window_seconds
        requests = len(state.stamps)
        requests_reset = 0.0
        if profile.rpm is not None and requests >= profile.rpm:
            # one more fits when the (requests - rpm)-th oldest admission leaves the window
            requests_reset = max(0.0, state.stamps[requests - profile.rpm] + window - now)
        tokens_reset = 0.0
        if profile.tpm is not None:
            tokens_reset = seconds_until_fits(
                ((second, count) for second, count in state.buckets),
                state.tokens,
                tokens,
                profile.tpm,
                now,
                window,
            )
        start = end = 0
        if profile.token_budget is not None:
            entry = state.budgets.get(profile.budget_period)
            if entry is not None and entry[0] <= now < entry[1]:
                start, end = entry[0], entry[1]
            else:
                start, end = period_bounds(now, profile.budget_period)
        return ScopeReport(
            scope=scope,
            requests=requests,
            requests_reset=requests_reset,
            tokens_used=state.tokens,
            tokens_reset=tokens_reset,
            in_flight=len(state.leases),
            budget_used=self._budget_used(profile, state, now),
            period_start=start,
            period_end=end,
        )

    async def settle(self, ticket: Ticket, actual_tokens: int) -> None:
        """Release the lease and correct the reservations; never raises."""
        try:
            self._settle(ticket, actual_tokens)
        except Exception:  # the contract: settling never fails the request
            self._counts.add("settle_error", "", "local")

    def _settle(self, ticket: Ticket, actual_tokens: int) -> None:
        if not ticket.charges:
            return
        correction = max(0, int(actual_tokens)) - ticket.tokens
        now = self.clock()
        oldest_bucket = int((now - self.window_seconds) // 1)
        for charge in ticket.charges:
            state = self._scopes.get((ticket.principal_id, charge.model))
            if state is None:  # swept: nothing of it counts any more
                continue
            if charge.lease:
                state.leases.pop(ticket.id, None)
            if correction and charge.tokens and ticket.second >= oldest_bucket:
                # the bucket is among the last few: search from the newest end
                for bucket in reversed(state.buckets):
                    if bucket[0] == ticket.second:
                        bucket[1] += correction
                        state.tokens += correction
                        break
                    if bucket[0] < ticket.second:
                        break
            if correction and charge.budget_period is not None:
                entry = state.budgets.get(charge.budget_period)
                if entry is not None and entry[0] == charge.period_start:
                    entry[2] += correction

    def _sweep(self, now: float) -> None:
        """Forget idle scopes, so that principals seen once do not stay in memory."""
        window = self.window_seconds
        idle = []
        for key, state in self._scopes.items():
            state.trim(now, window)
            if state.is_idle(now):
                idle.append(key)
        for key in idle:
            del self._scopes[key]
        self._next_sweep = now + window

    async def close(self) -> None:
        """Forget every counter."""
        self._scopes.clear()

    def counts(self) -> dict[tuple[str, str, str], int]:
        """Decisions and settle errors since start, by ``(outcome, reason, "local")``."""
        return self._counts.snapshot()
