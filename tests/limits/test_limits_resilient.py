"""Redis down, frozen, back: decisions go on locally (or are refused), then return to Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from limits_support import *  # noqa: F403  (fixtures)
from limits_support import FakeClock, admit, new_client

from dtecho.config import LimitProfile, LimitsSettings
from dtecho.limits import (
    Limiter,
    LocalLimiter,
    RedisLimiter,
    ResilientLimiter,
    UnlimitedLimiter,
    build_limiter,
)
from support import RedisProcess

pytestmark = pytest.mark.redis

PROFILE = LimitProfile(rpm=2, max_parallel=5)
RETRY_SECONDS = 5.0  # on the fake monotonic clock: the tests move it, nobody waits

Factory = Callable[..., ResilientLimiter]


@pytest.fixture
async def client(redis_process: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    connection = new_client(redis_process.url, timeout=0.5)
    yield connection
    await connection.aclose()


@pytest.fixture
def monotonic() -> FakeClock:
    return FakeClock(1_000.0)


@pytest.fixture
def make(client: aioredis.Redis, monotonic: FakeClock) -> Factory:
    def factory(**options: object) -> ResilientLimiter:
        options.setdefault("retry_seconds", RETRY_SECONDS)
        return ResilientLimiter(
            RedisLimiter(client, namespace="t"), LocalLimiter(), clock=monotonic, **options
        )

    return factory


async def test_a_killed_redis_falls_back_to_local_limits_and_counts_it(
    make: Factory, redis_process: RedisProcess
) -> None:
    limiter = make()
    decision = await admit(limiter, PROFILE)
    assert decision.allowed and decision.backend == "redis"
    redis_process.kill()
    local = [await admit(limiter, PROFILE) for _ in range(3)]
    assert [d.backend for d in local] == ["local"] * 3
    # the local counters start empty and still enforce the limit
    assert [d.allowed for d in local] == [True, True, False]
    assert local[2].reason == "requests"
    assert limiter.redis_available is False
    counts = limiter.counts()
    assert counts[("fallback", "", "redis")] == 2
    assert counts[("fallback", "requests", "redis")] == 1
    assert counts[("allowed", "", "redis")] == 1
    assert counts[("allowed", "", "local")] == 2


async def test_with_deny_a_dead_redis_refuses_as_unavailable(
    make: Factory, redis_process: RedisProcess
) -> None:
    limiter = make(on_failure="deny", retry_seconds=2.5)
    redis_process.kill()
    for _ in range(2):  # the first tries Redis, the second does not even try
        refused = await admit(limiter, PROFILE)
        assert (refused.allowed, refused.reason) == (False, "unavailable")
        assert refused.retry_after == 2.5 and refused.ticket is None
        assert (b"retry-after", b"3") in refused.headers
        assert "unavailable" in refused.message
    assert limiter.counts()[("fallback", "unavailable", "redis")] == 2
    # a request without limits needs no Redis
    assert (await admit(limiter, LimitProfile())).allowed


async def test_back_on_redis_after_retry_seconds(
    make: Factory, redis_process: RedisProcess, monotonic: FakeClock
) -> None:
    limiter = make()
    redis_process.kill()
    assert (await admit(limiter, PROFILE)).backend == "local"
    redis_process.start()
    # Redis answers again, but within retry_seconds it is not tried
    monotonic.advance(RETRY_SECONDS - 0.1)
    assert (await admit(limiter, PROFILE)).backend == "local"
    monotonic.advance(0.2)
    back = await admit(limiter, PROFILE)
    assert back.allowed and back.backend == "redis"
    assert limiter.redis_available is True
    assert (await admit(limiter, PROFILE)).backend == "redis"


async def test_a_probe_that_fails_keeps_redis_down_for_another_period(
    make: Factory, redis_process: RedisProcess, monotonic: FakeClock
) -> None:
    limiter = make()
    redis_process.kill()
    await admit(limiter, PROFILE)
    monotonic.advance(RETRY_SECONDS + 0.1)
    assert (await admit(limiter, PROFILE)).backend == "local"  # the probe failed
    redis_process.start()
    monotonic.advance(RETRY_SECONDS - 0.1)
    assert (await admit(limiter, PROFILE)).backend == "local"
    monotonic.advance(0.2)
    assert (await admit(limiter, PROFILE)).backend == "redis"


async def test_a_frozen_redis_is_bounded_by_the_timeout(
    make: Factory, redis_process: RedisProcess
) -> None:
    limiter = make(timeout_seconds=0.2)
    assert (await admit(limiter, PROFILE)).backend == "redis"
    redis_process.freeze()
    try:
        decision = await admit(limiter, PROFILE)
        assert decision.allowed and decision.backend == "local"
    finally:
        redis_process.thaw()


async def test_tickets_settle_with_the_backend_that_admitted_them(
    make: Factory, redis_process: RedisProcess
) -> None:
    limiter = make()
    profile = LimitProfile(max_parallel=1)
    on_redis = await admit(limiter, profile)
    assert on_redis.backend == "redis"
    redis_process.kill()
    on_local = await admit(limiter, profile)
    assert on_local.allowed and on_local.backend == "local"
    assert not (await admit(limiter, profile)).allowed  # the local slot is taken
    await limiter.settle(on_redis.ticket, 10)  # Redis is gone: counted, not raised
    assert limiter.counts()[("settle_error", "", "redis")] == 1
    await limiter.settle(on_local.ticket, 10)  # frees the local slot
    assert (await admit(limiter, profile)).allowed


async def test_build_limiter_follows_the_settings(client: aioredis.Redis) -> None:
    settings = LimitsSettings(
        on_redis_failure="deny", redis_retry_seconds=3.0, concurrency_lease_seconds=42.0
    )
    local = build_limiter(settings, None)
    assert isinstance(local, LocalLimiter) and local.lease_seconds == 42.0
    resilient = build_limiter(settings, client, namespace="t")
    assert isinstance(resilient, ResilientLimiter)
    assert (resilient.on_failure, resilient.retry_seconds) == ("deny", 3.0)
    assert resilient.primary.lease_seconds == 42.0 and resilient.primary.namespace == "t"
    assert (await admit(resilient, PROFILE)).backend == "redis"
    disabled = build_limiter(LimitsSettings(enabled=False), client)
    assert isinstance(disabled, UnlimitedLimiter) and isinstance(disabled, Limiter)
    decisions = [await admit(disabled, LimitProfile(rpm=1)) for _ in range(3)]
    assert all(d.allowed for d in decisions)
    for limiter in (local, resilient, disabled):
        await limiter.close()
