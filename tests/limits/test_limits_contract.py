"""What every limiter must do, checked on the local and the Redis backend alike."""

from __future__ import annotations

import math
import re

import pytest
from limits_support import *  # noqa: F403  (fixtures and helpers)
from limits_support import NO_LIMITS, Backends, admit, header, keys_of

from dtecho.config import LimitProfile
from dtecho.limits import Limiter
from dtecho.limits._rules import period_bounds

# Redis keeps real time, so windows that must slide are short there; 2 s leaves room for a
# loaded machine to run a handful of round trips well inside one window.
SHORT_WINDOW = 2.0
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d{1,3})?s|\d+ms)$")


async def test_both_backends_implement_the_protocol(backends: Backends) -> None:
    assert isinstance(backends.make(), Limiter)


async def test_rpm_admits_exactly_the_limit_then_again_after_the_window_slides(
    backends: Backends,
) -> None:
    limiter = backends.make(window_seconds=SHORT_WINDOW)
    profile = LimitProfile(rpm=5)
    decisions = [await admit(limiter, profile) for _ in range(8)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
    assert {d.reason for d in decisions[5:]} == {"requests"}
    assert all(d.ticket is None for d in decisions[5:])
    assert all(0 < d.retry_after <= SHORT_WINDOW for d in decisions[5:])
    await backends.elapse(SHORT_WINDOW + 0.05)
    again = [await admit(limiter, profile) for _ in range(6)]
    assert [d.allowed for d in again] == [True] * 5 + [False]


async def test_refused_requests_are_not_recorded(backends: Backends) -> None:
    limiter = backends.make(window_seconds=SHORT_WINDOW)
    profile = LimitProfile(rpm=2)
    assert (await admit(limiter, profile)).allowed
    assert (await admit(limiter, profile)).allowed
    for _ in range(20):  # hammering while refused must not push the reset further out
        assert not (await admit(limiter, profile)).allowed
    await backends.elapse(SHORT_WINDOW + 0.05)
    assert [(await admit(limiter, profile)).allowed for _ in range(3)] == [True, True, False]


async def test_a_refusal_by_the_model_scope_records_nothing_in_the_principal_scope(
    backends: Backends,
) -> None:
    limiter = backends.make()
    principal = LimitProfile(rpm=5, tpm=10_000, max_parallel=10)
    on_model = LimitProfile(rpm=2)
    for _ in range(2):
        assert (await admit(limiter, principal, on_model, 100, model="a")).allowed
    for _ in range(3):
        refused = await admit(limiter, principal, on_model, 100, model="a")
        assert (refused.allowed, refused.reason) == (False, "requests")
        assert "model 'a'" in refused.message
    # had the refusals counted against the principal, fewer than 3 would pass on model "b"
    results = [await admit(limiter, principal, NO_LIMITS, 100, model="b") for _ in range(4)]
    assert [d.allowed for d in results] == [True, True, True, False]
    assert "model" not in results[-1].message  # the principal's own limit refused this one
    assert header(results[2], "x-ratelimit-remaining-tokens") == str(10_000 - 5 * 100)


async def test_a_token_refusal_in_one_scope_reserves_nothing_in_the_other(
    backends: Backends,
) -> None:
    limiter = backends.make()
    principal = LimitProfile(tpm=10_000, max_parallel=1, token_budget=50_000)
    on_model = LimitProfile(tpm=1_000)
    refused = await admit(limiter, principal, on_model, 2_000)
    assert (refused.allowed, refused.reason) == (False, "tokens")
    # no lease was taken and no tokens were reserved for the principal
    decision = await admit(limiter, principal, NO_LIMITS, 10_000)
    assert decision.allowed
    assert header(decision, "x-ratelimit-remaining-tokens") == "0"


async def test_tokens_are_reserved_and_settled_to_the_actual_count(backends: Backends) -> None:
    limiter = backends.make()
    profile = LimitProfile(tpm=1_000)
    first = await admit(limiter, profile, tokens=1_000)
    assert first.allowed and first.ticket is not None
    assert header(first, "x-ratelimit-remaining-tokens") == "0"
    refused = await admit(limiter, profile, tokens=1)
    assert (refused.allowed, refused.reason) == (False, "tokens")
    assert "1000 tokens per minute" in refused.message
    assert 0 < refused.retry_after <= 61
    await limiter.settle(first.ticket, 100)
    second = await admit(limiter, profile, tokens=900)
    assert second.allowed
    assert header(second, "x-ratelimit-remaining-tokens") == "0"
    assert not (await admit(limiter, profile, tokens=1)).allowed


async def test_settling_above_the_reservation_charges_the_difference(backends: Backends) -> None:
    limiter = backends.make()
    profile = LimitProfile(tpm=1_000)
    first = await admit(limiter, profile, tokens=100)
    await limiter.settle(first.ticket, 700)
    assert not (await admit(limiter, profile, tokens=301)).allowed
    assert (await admit(limiter, profile, tokens=300)).allowed


async def test_a_request_larger_than_the_tpm_is_refused_as_too_large(backends: Backends) -> None:
    limiter = backends.make()
    refused = await admit(limiter, LimitProfile(tpm=1_000), tokens=1_001)
    assert (refused.allowed, refused.reason) == (False, "tokens")
    assert refused.message.startswith("Request too large")
    assert "1001" in refused.message and "1000" in refused.message
    assert (await admit(limiter, LimitProfile(tpm=1_000), tokens=1_000)).allowed


async def test_tokens_return_once_their_bucket_leaves_the_window(backends: Backends) -> None:
    limiter = backends.make(window_seconds=1.0)
    profile = LimitProfile(tpm=500)
    assert (await admit(limiter, profile, tokens=500)).allowed
    assert not (await admit(limiter, profile, tokens=1)).allowed
    # a one-second bucket overlaps the window until its end plus the window
    await backends.elapse(2.05)
    assert (await admit(limiter, profile, tokens=500)).allowed


async def test_max_parallel_is_released_by_settle(backends: Backends) -> None:
    limiter = backends.make()
    profile = LimitProfile(max_parallel=2)
    first, second = [await admit(limiter, profile) for _ in range(2)]
    assert first.allowed and second.allowed
    refused = await admit(limiter, profile)
    assert (refused.allowed, refused.reason) == (False, "concurrency")
    assert "2 requests in flight" in refused.message
    assert refused.retry_after > 0
    await limiter.settle(first.ticket, 0)
    third = await admit(limiter, profile)
    assert third.allowed
    assert not (await admit(limiter, profile)).allowed
    await limiter.settle(second.ticket, 0)
    await limiter.settle(third.ticket, 0)
    assert all([(await admit(limiter, profile)).allowed for _ in range(2)])


async def test_leases_of_a_lost_request_expire(backends: Backends) -> None:
    limiter = backends.make(lease_seconds=0.5)
    profile = LimitProfile(max_parallel=1)
    assert (await admit(limiter, profile)).allowed  # never settled: its replica "crashed"
    assert not (await admit(limiter, profile)).allowed
    await backends.elapse(0.6)
    assert (await admit(limiter, profile)).allowed


@pytest.mark.parametrize("period", ["day", "month"])
async def test_budget_is_counted_per_period_and_corrected_on_settle(
    backends: Backends, period: str
) -> None:
    limiter = backends.make()
    profile = LimitProfile(token_budget=1_000, budget_period=period)
    first = await admit(limiter, profile, tokens=600)
    assert first.allowed
    refused = await admit(limiter, profile, tokens=600)
    assert (refused.allowed, refused.reason) == (False, "budget")
    assert f"1000 tokens per {period}" in refused.message
    _, end = period_bounds(backends.now(), period)
    # the two clocks (Redis's, this process's) are the same machine's
    assert refused.retry_after == pytest.approx(end - backends.now(), abs=5)
    assert header(refused, "retry-after") == str(math.ceil(refused.retry_after))
    await limiter.settle(first.ticket, 100)
    assert (await admit(limiter, profile, tokens=900)).allowed
    assert not (await admit(limiter, profile, tokens=1)).allowed


async def test_the_binding_limit_is_the_one_that_frees_up_last(backends: Backends) -> None:
    limiter = backends.make()
    profile = LimitProfile(rpm=1, token_budget=100)
    assert (await admit(limiter, profile, tokens=100)).allowed
    refused = await admit(limiter, profile, tokens=1)  # both rpm and budget refuse
    assert refused.reason == "budget"
    assert refused.retry_after > 60


async def test_headers_on_an_allowed_decision(backends: Backends) -> None:
    limiter = backends.make()
    profile = LimitProfile(rpm=3, tpm=1_000)
    decision = await admit(limiter, profile, tokens=400)
    assert decision.allowed and decision.retry_after == 0 and decision.reason is None
    assert header(decision, "x-ratelimit-limit-requests") == "3"
    assert header(decision, "x-ratelimit-remaining-requests") == "2"
    assert header(decision, "x-ratelimit-reset-requests") == "0s"
    assert header(decision, "x-ratelimit-limit-tokens") == "1000"
    assert header(decision, "x-ratelimit-remaining-tokens") == "600"
    assert header(decision, "x-ratelimit-reset-tokens") == "0s"
    assert header(decision, "retry-after") is None
    third = [await admit(limiter, profile, tokens=200) for _ in range(2)][-1]
    assert header(third, "x-ratelimit-remaining-requests") == "0"
    reset = header(third, "x-ratelimit-reset-requests")
    assert reset is not None and DURATION.match(reset) and reset != "0s"
    # 200 more tokens fit (200 are left), so the tokens reset is now
    assert header(third, "x-ratelimit-reset-tokens") == "0s"
    assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in third.headers)


async def test_headers_on_a_refused_decision(backends: Backends) -> None:
    limiter = backends.make()
    profile = LimitProfile(rpm=1, tpm=1_000)
    assert (await admit(limiter, profile, tokens=10)).allowed
    refused = await admit(limiter, profile, tokens=10)
    assert header(refused, "x-ratelimit-limit-requests") == "1"
    assert header(refused, "x-ratelimit-remaining-requests") == "0"
    assert header(refused, "x-ratelimit-remaining-tokens") == "990"  # nothing reserved
    reset = header(refused, "x-ratelimit-reset-requests")
    assert reset is not None and DURATION.match(reset)
    assert 59 < refused.retry_after <= 60
    assert header(refused, "retry-after") == "60"


async def test_headers_show_the_tightest_scope(backends: Backends) -> None:
    limiter = backends.make()
    decision = await admit(limiter, LimitProfile(rpm=100), LimitProfile(rpm=10, tpm=50), 20)
    assert header(decision, "x-ratelimit-limit-requests") == "10"
    assert header(decision, "x-ratelimit-remaining-requests") == "9"
    assert header(decision, "x-ratelimit-limit-tokens") == "50"
    # only the model has a tpm; 20 + 20 of its 50 would still fit, so no wait yet
    assert header(decision, "x-ratelimit-remaining-tokens") == "30"
    assert header(decision, "x-ratelimit-reset-tokens") == "0s"
    decision = await admit(limiter, LimitProfile(rpm=100), LimitProfile(rpm=10, tpm=50), 20)
    assert header(decision, "x-ratelimit-remaining-tokens") == "10"
    reset = header(decision, "x-ratelimit-reset-tokens")
    assert reset is not None and reset != "0s" and DURATION.match(reset)


async def test_no_limits_is_the_fast_path_and_records_nothing(backends: Backends) -> None:
    limiter = backends.make()
    decision = await admit(limiter, NO_LIMITS, NO_LIMITS, 1_000)
    assert decision.allowed and decision.headers == () and decision.ticket is not None
    await limiter.settle(decision.ticket, 5_000)
    # a model scope without a model, and a profile with only a period, limit nothing either
    assert (await admit(limiter, NO_LIMITS, LimitProfile(rpm=1), model=None)).allowed
    assert (await admit(limiter, NO_LIMITS, LimitProfile(rpm=1), model=None)).allowed
    assert (await admit(limiter, LimitProfile(budget_period="month"))).headers == ()
    if backends.kind == "redis":
        assert keys_of(backends.redis_url, backends.namespace) == {}
    else:
        assert limiter.tracked_scopes == 0
    assert limiter.counts() == {("allowed", "", backends.kind): 4}


async def test_principals_do_not_share_counters(backends: Backends) -> None:
    limiter = backends.make()
    profile = LimitProfile(rpm=1)
    for principal_id in ("key:a", "key:b", "key:a}x", "key:{a}"):
        assert (await admit(limiter, profile, principal_id=principal_id)).allowed
        assert not (await admit(limiter, profile, principal_id=principal_id)).allowed


async def test_counts_by_outcome_reason_and_backend(backends: Backends) -> None:
    limiter = backends.make()
    profile = LimitProfile(rpm=1, max_parallel=5)
    await admit(limiter, profile)
    await admit(limiter, profile)
    await admit(limiter, profile)
    assert limiter.counts() == {
        ("allowed", "", backends.kind): 1,
        ("refused", "requests", backends.kind): 2,
    }


async def test_a_negative_token_count_is_rejected(backends: Backends) -> None:
    with pytest.raises(ValueError, match="tokens"):
        await admit(backends.make(), LimitProfile(rpm=1), tokens=-1)
