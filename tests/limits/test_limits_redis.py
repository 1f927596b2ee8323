"""The Redis limiter: exact under contention, one script per decision, tidy keys."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis
import redis.asyncio as aioredis
from limits_support import *  # noqa: F403  (fixtures)
from limits_support import NO_LIMITS, admit, keys_of, new_client
from redis.crc import key_slot

from dtecho.config import LimitProfile
from dtecho.limits import RedisLimiter
from dtecho.limits._lua import CALENDAR_LUA
from dtecho.limits._rules import period_bounds
from support import RedisProcess

pytestmark = pytest.mark.redis

EVERYTHING = LimitProfile(rpm=100, tpm=100_000, max_parallel=10, token_budget=1_000_000)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = new_client(redis_url)
    yield connection
    await connection.aclose()


async def test_two_replicas_on_two_connections_admit_exactly_the_limit(
    redis_url: str, namespace: str
) -> None:
    first, second = new_client(redis_url), new_client(redis_url)
    try:
        replicas = [RedisLimiter(c, namespace=namespace) for c in (first, second)]
        profile = LimitProfile(rpm=100)
        decisions = await asyncio.gather(
            *(admit(replicas[i % 2], profile, tokens=1) for i in range(400))
        )
        assert sum(d.allowed for d in decisions) == 100
        assert {d.reason for d in decisions if not d.allowed} == {"requests"}
        # refusals recorded nothing, and the 100 admissions fill the window
        assert not (await admit(replicas[0], profile)).allowed
    finally:
        await first.aclose()
        await second.aclose()


async def test_contention_across_both_scopes_is_all_or_nothing(
    redis_url: str, namespace: str
) -> None:
    first, second = new_client(redis_url), new_client(redis_url)
    try:
        replicas = [RedisLimiter(c, namespace=namespace) for c in (first, second)]
        principal = LimitProfile(rpm=60)
        on_model = LimitProfile(rpm=25)
        calls = [(replicas[i % 2], "a" if i % 3 else "b") for i in range(300)]
        random.Random(7).shuffle(calls)
        decisions = await asyncio.gather(
            *(admit(r, principal, on_model, model=m) for r, m in calls)
        )
        allowed_on = {m: 0 for m in "ab"}
        for (_, model), decision in zip(calls, decisions, strict=True):
            allowed_on[model] += decision.allowed
        # each model is held to 25 by its own scope; 50 in all, under the principal's 60
        assert allowed_on == {"a": 25, "b": 25}
        # so the principal recorded exactly those 50: ten more fit on a third model
        more = [await admit(replicas[0], principal, NO_LIMITS, model="c") for _ in range(11)]
        assert sum(d.allowed for d in more) == 10
    finally:
        await first.aclose()
        await second.aclose()


async def test_every_key_carries_the_principals_hash_tag_and_a_ttl(
    client: aioredis.Redis, redis_url: str, namespace: str
) -> None:
    limiter = RedisLimiter(client, namespace=namespace)
    held = await admit(limiter, EVERYTHING, EVERYTHING, 10, principal_id="key:{odd}%id")
    assert held.allowed
    await admit(limiter, EVERYTHING, LimitProfile(token_budget=5, budget_period="month"), 1)
    keys = keys_of(redis_url, namespace)
    tags = {limiter.tag("key:{odd}%id"), limiter.tag("key:alice")}
    assert limiter.tag("key:{odd}%id") == f"{{{namespace}:lim:key:%7Bodd%7D%25id}}"
    assert len(keys) == 4 + 4 + 4 + 1  # two principals' four, and one model budget key
    for key, pttl in keys.items():
        assert any(key.startswith(tag) for tag in tags), key
        assert pttl > 0, f"{key} has no TTL"
    for tag in tags:
        assert len({key_slot(key.encode()) for key in keys if key.startswith(tag)}) == 1


async def test_ttls_follow_the_window_the_lease_and_the_period(
    client: aioredis.Redis, redis_url: str, namespace: str
) -> None:
    limiter = RedisLimiter(client, namespace=namespace, lease_seconds=30)
    await admit(limiter, EVERYTHING, tokens=10)
    keys = keys_of(redis_url, namespace)
    by_kind = {
        key.rsplit(":", 1)[-1] if "bud" not in key else "bud": ttl for key, ttl in keys.items()
    }
    assert 59_000 < by_kind["req"] <= 61_000
    assert 60_000 < by_kind["tok"] <= 62_000
    assert 29_000 < by_kind["par"] <= 31_000
    _, end = period_bounds(datetime.now(UTC).timestamp(), "day")
    expected_ms = (end + 86_400 - datetime.now(UTC).timestamp()) * 1000
    assert by_kind["bud"] == pytest.approx(expected_ms, abs=5_000)


async def test_settling_the_last_lease_leaves_no_lease_key(
    client: aioredis.Redis, redis_url: str, namespace: str
) -> None:
    limiter = RedisLimiter(client, namespace=namespace)
    decision = await admit(limiter, LimitProfile(max_parallel=3))
    assert any(key.endswith(":par") for key in keys_of(redis_url, namespace))
    await limiter.settle(decision.ticket, 0)
    assert not any(key.endswith(":par") for key in keys_of(redis_url, namespace))


def _command_calls(server: redis.Redis, command: str) -> int:
    stats = server.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


async def test_one_evalsha_per_admit_and_per_settle_and_noscript_is_handled(
    redis_process: RedisProcess,
) -> None:
    connection = new_client(redis_process.url)
    server = redis.Redis.from_url(redis_process.url)
    try:
        limiter = RedisLimiter(connection, namespace="t")
        profile = LimitProfile(rpm=1_000, max_parallel=100, tpm=1_000_000)
        for _ in range(3):  # warm up: the first call loads the scripts (NOSCRIPT, LOAD, again)
            await limiter.settle((await admit(limiter, profile, tokens=5)).ticket, 3)
        before = _command_calls(server, "evalsha")
        tickets = [(await admit(limiter, profile, tokens=5)).ticket for _ in range(10)]
        assert _command_calls(server, "evalsha") == before + 10
        for ticket in tickets:
            await limiter.settle(ticket, 3)
        assert _command_calls(server, "evalsha") == before + 20
        server.script_flush()  # as after a Redis restart or failover
        decision = await admit(limiter, profile, tokens=5)
        assert decision.allowed and decision.backend == "redis"
        await limiter.settle(decision.ticket, 1)
        assert _command_calls(server, "script|load") >= 2
    finally:
        await connection.aclose()
        server.close()


async def test_a_settle_that_fails_is_counted_and_never_raises(redis_process: RedisProcess) -> None:
    connection = new_client(redis_process.url, timeout=0.5)
    try:
        limiter = RedisLimiter(connection, namespace="t")
        decision = await admit(limiter, LimitProfile(max_parallel=1))
        redis_process.kill()
        await limiter.settle(decision.ticket, 10)
        assert limiter.counts()[("settle_error", "", "redis")] == 1
        with pytest.raises((redis.RedisError, OSError)):
            await admit(limiter, LimitProfile(max_parallel=1))
    finally:
        await connection.aclose()


def _calendar_cases() -> list[float]:
    fixed = [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2000, 2, 29, 23, 59, 59, tzinfo=UTC),
        datetime(2024, 2, 29, 12, tzinfo=UTC),
        datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2025, 1, 1, tzinfo=UTC),
        datetime(2025, 2, 28, 23, 59, 59, tzinfo=UTC),
        datetime(2100, 2, 28, 12, tzinfo=UTC),
        datetime(2100, 3, 1, tzinfo=UTC),
    ]
    rng = random.Random(2025)
    drawn = [rng.uniform(0, 4_102_444_800) for _ in range(300)]  # 1970 … 2100
    return [moment.timestamp() for moment in fixed] + [int(t) for t in drawn]


async def test_the_scripts_calendar_agrees_with_python(client: aioredis.Redis) -> None:
    probe = (
        CALENDAR_LUA
        + """
local out = {}
for i = 1, #ARGV do
  local ds, de = period_bounds(tonumber(ARGV[i]), 'day')
  local ms, me = period_bounds(tonumber(ARGV[i]), 'month')
  out[#out + 1] = {ds, de, ms, me}
end
return out
"""
    )
    cases = _calendar_cases()
    replies = await client.eval(probe, 0, *[int(t) for t in cases])
    for moment, reply in zip(cases, replies, strict=True):
        expected = (*period_bounds(int(moment), "day"), *period_bounds(int(moment), "month"))
        assert tuple(reply) == expected, datetime.fromtimestamp(moment, UTC)


def test_a_namespace_with_braces_is_refused() -> None:
    with pytest.raises(ValueError, match="braces"):
        RedisLimiter(aioredis.Redis(), namespace="a{b}")
