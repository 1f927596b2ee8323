"""The in-process limiter: calendar periods on a controlled clock, idle sweeping, tasks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from limits_support import FakeClock, admit

from dtecho.config import LimitProfile
from dtecho.limits import LocalLimiter
from dtecho.limits._rules import period_bounds, seconds_until_fits


def at(*fields: int) -> float:
    return datetime(*fields, tzinfo=UTC).timestamp()


async def test_a_day_budget_renews_at_utc_midnight() -> None:
    clock = FakeClock(at(2025, 1, 31, 23, 59, 30))
    limiter = LocalLimiter(clock=clock)
    profile = LimitProfile(token_budget=100, budget_period="day")
    first = await admit(limiter, profile, tokens=100)
    refused = await admit(limiter, profile, tokens=1)
    assert (refused.reason, refused.retry_after) == ("budget", 30.0)
    assert "renews at 2025-02-01T00:00:00Z" in refused.message
    clock.advance(30)
    assert (await admit(limiter, profile, tokens=100)).allowed
    # settling the old period's ticket leaves the new period alone
    await limiter.settle(first.ticket, 0)
    assert not (await admit(limiter, profile, tokens=1)).allowed


async def test_a_month_budget_renews_on_the_first_of_the_month() -> None:
    clock = FakeClock(at(2024, 2, 29, 12))  # a leap day
    limiter = LocalLimiter(clock=clock)
    profile = LimitProfile(token_budget=100, budget_period="month")
    assert (await admit(limiter, profile, tokens=100)).allowed
    clock.advance(11 * 3600)
    refused = await admit(limiter, profile, tokens=1)
    assert (refused.reason, refused.retry_after) == ("budget", 3600.0)
    clock.advance(3600)
    assert (await admit(limiter, profile, tokens=100)).allowed


def test_period_bounds_are_utc_calendar_days_and_months() -> None:
    assert period_bounds(at(2025, 6, 11, 12), "day") == (at(2025, 6, 11), at(2025, 6, 12))
    assert period_bounds(at(2025, 12, 31, 23, 59), "month") == (at(2025, 12, 1), at(2026, 1, 1))
    assert period_bounds(at(2025, 2, 1), "month") == (at(2025, 2, 1), at(2025, 3, 1))


def test_seconds_until_fits_frees_the_oldest_buckets_first() -> None:
    buckets = [(100, 300), (110, 300), (120, 300)]
    # used 900 of 1000: 200 more need 100 freed, i.e. bucket 100 gone at 100 + 1 + 60
    assert seconds_until_fits(buckets, 900, 200, 1000, 125.0, 60.0) == 36.0
    assert seconds_until_fits(buckets, 900, 100, 1000, 125.0, 60.0) == 0.0
    # 500 more need 400 freed: buckets 100 and 110
    assert seconds_until_fits(buckets, 900, 500, 1000, 125.0, 60.0) == 46.0
    # larger than the limit: never fits, the whole window at least
    assert seconds_until_fits(buckets, 900, 2000, 1000, 125.0, 60.0) == 60.0


async def test_the_request_window_slides_request_by_request() -> None:
    clock = FakeClock(at(2025, 6, 11, 12))
    limiter = LocalLimiter(clock=clock)
    profile = LimitProfile(rpm=3)
    for _ in range(3):
        assert (await admit(limiter, profile)).allowed
        clock.advance(10)
    refused = await admit(limiter, profile)  # at +30 s: the first leaves at +60 s
    assert refused.retry_after == pytest.approx(30.0)
    clock.advance(30)
    assert (await admit(limiter, profile)).allowed
    assert not (await admit(limiter, profile)).allowed  # the second leaves at +70 s
    clock.advance(10)
    assert (await admit(limiter, profile)).allowed


async def test_a_correction_for_a_bucket_that_left_the_window_is_dropped() -> None:
    clock = FakeClock(at(2025, 6, 11, 12))
    limiter = LocalLimiter(clock=clock)
    profile = LimitProfile(tpm=1_000)
    old = await admit(limiter, profile, tokens=1_000)
    clock.advance(61)
    assert (await admit(limiter, profile, tokens=1_000)).allowed
    await limiter.settle(old.ticket, 0)  # must not hand the new window 1000 tokens back
    assert not (await admit(limiter, profile, tokens=1)).allowed


async def test_idle_scopes_are_forgotten_after_a_window() -> None:
    clock = FakeClock(at(2025, 6, 11, 12))
    limiter = LocalLimiter(clock=clock)
    for number in range(50):
        await admit(limiter, LimitProfile(rpm=5, tpm=100), tokens=1, principal_id=f"p{number}")
    held = await admit(limiter, LimitProfile(max_parallel=1), principal_id="busy")
    assert limiter.tracked_scopes == 51
    clock.advance(61)
    await admit(limiter, LimitProfile(rpm=5), principal_id="new")
    assert limiter.tracked_scopes == 2  # the one with a live lease, and the new one
    await limiter.settle(held.ticket, 0)
    assert (await admit(limiter, LimitProfile(max_parallel=1), principal_id="busy")).allowed


async def test_a_budget_keeps_its_scope_until_the_period_ends() -> None:
    clock = FakeClock(at(2025, 6, 11, 12))
    limiter = LocalLimiter(clock=clock)
    profile = LimitProfile(token_budget=100)
    assert (await admit(limiter, profile, tokens=100)).allowed
    clock.advance(3600)
    await admit(limiter, LimitProfile(rpm=1), principal_id="other")  # triggers a sweep
    assert not (await admit(limiter, profile, tokens=1)).allowed


async def test_concurrent_tasks_cannot_overrun_a_limit() -> None:
    limiter = LocalLimiter()
    profile = LimitProfile(rpm=10, max_parallel=7)

    async def one() -> bool:
        decision = await admit(limiter, profile)
        await asyncio.sleep(0)
        return decision.allowed

    results = await asyncio.gather(*(one() for _ in range(100)))
    assert sum(results) == 7
