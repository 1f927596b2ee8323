"""Redis slow, down, or back: requests never fail, errors are counted, L3 comes back."""

import asyncio
import socket
import time

import pytest
import redis
import structlog
from cache_support import *  # noqa: F403  (fixtures)

from dtecho.cache import cache_key

# Not a speed check: without its timeouts the cache would wait on a dead or frozen Redis
# indefinitely. 40× the 50 ms timeout keeps a loaded test machine from failing it.
BOUND_SECONDS = 2.0


@pytest.fixture
def key(namespace):
    return lambda name: cache_key(namespace, "/r", "m", 1, {"name": name})


def make_compute():
    calls = []

    async def compute():
        calls.append(1)
        return {"n": len(calls)}

    compute.calls = calls
    return compute


async def timed(awaitable):
    started = time.perf_counter()
    result = await awaitable
    return result, time.perf_counter() - started


async def exercise_without_redis(cache, key, prefix):
    """Every operation answers quickly and without an exception while Redis is unreachable."""
    compute = make_compute()
    (value, tier), elapsed = await timed(cache.get_or_compute(key(f"{prefix}a"), compute))
    assert (value, tier) == ({"n": 1}, "MISS") and elapsed < BOUND_SECONDS
    (value, tier), elapsed = await timed(cache.get_or_compute(key(f"{prefix}a"), compute))
    assert (value, tier) == ({"n": 1}, "L1") and elapsed < BOUND_SECONDS
    hit, elapsed = await timed(cache.get(key(f"{prefix}nothing")))
    assert hit is None and elapsed < BOUND_SECONDS
    stored, elapsed = await timed(cache.set(key(f"{prefix}b"), "v", compute_seconds=0.1))
    assert stored is True and elapsed < BOUND_SECONDS
    assert (await cache.get(key(f"{prefix}b"))).tier == "L1"


async def test_a_redis_where_nothing_listens_degrades_to_memory(make_cache, key):
    with socket.socket() as sock, structlog.testing.capture_logs() as logs:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused
        started = time.perf_counter()
        cache = await make_cache(redis=f"redis://:hunter2@127.0.0.1:{port}/0")
        assert time.perf_counter() - started < 1.0
        for round_ in range(3):
            await exercise_without_redis(cache, key, f"r{round_}")
        assert await cache.invalidate_tags(["t"]) == 0
        assert await cache.clear() >= 1  # the in-process entries
        metrics = cache.metrics()
    assert "hunter2" not in repr(logs)
    assert any(entry["event"] == "cache_redis_unavailable" for entry in logs)
    assert metrics["l3_errors"] > 0 and cache.counts()[("l3_error", "")] > 0
    assert metrics["l3_available"] is False and metrics["l3_subscribed"] is False
    assert metrics["pending_invalidations"] == 2


async def test_redis_killed_mid_test_then_restarted(make_cache, key, redis_process, eventually):
    a = await make_cache(redis=redis_process.url)
    b = await make_cache(redis=redis_process.url)
    # what is tested is the kill and restart: start from two caches connected and subscribed
    # (on a loaded machine a first subscribe can time out and is retried in the background)
    ready = ("l3_available", "l3_subscribed")
    await eventually(lambda: all(c.metrics()[k] for c in (a, b) for k in ready))
    await a.set(key("before"), "shared", compute_seconds=0.1, tags=["t"])
    assert (await b.get(key("before"))).tier == "L3"
    assert b.metrics()["l3_subscribed"] is True

    redis_process.kill()
    for round_ in range(5):
        await exercise_without_redis(a, key, f"down{round_}")
        await exercise_without_redis(b, key, f"b-down{round_}")
    assert (await b.get(key("before"))).value == "shared"  # still served from memory
    # An invalidation while Redis is down is applied locally and replayed later.
    assert await a.invalidate_tags(["t"]) == 1  # a's own in-process copy
    assert a.metrics()["pending_invalidations"] == 1
    assert a.metrics()["l3_errors"] > 0 and b.metrics()["l3_errors"] > 0
    assert a.metrics()["l3_available"] is False

    redis_process.start()  # same port, empty (no persistence)
    await eventually(lambda: a.metrics()["l3_subscribed"] and b.metrics()["l3_subscribed"])
    # b resubscribed after missing messages, so it dropped its in-process copies.
    await eventually(lambda: b.metrics()["entries"]["L1"] == 0)
    await eventually(lambda: a.metrics()["pending_invalidations"] == 0)

    async def computed_on_a():
        return "after restart"

    assert await a.get_or_compute(key("after"), computed_on_a) == ("after restart", "MISS")
    hit = await eventually(lambda: b.get(key("after")))
    assert hit.tier == "L3" and hit.value == "after restart"
    assert a.metrics()["l3_available"] is True

    # Pub/sub works again too: an invalidation on a empties b's copy.
    await a.set(key("tagged"), 1, compute_seconds=0.1, tags=["again"])
    await b.get(key("tagged"))
    await a.invalidate_tags(["again"])
    await eventually(lambda: b.metrics()["entries"]["L1"] == 1)  # only "after" is left


async def test_an_invalidation_redis_missed_is_replayed_when_it_answers_again(
    make_cache, key, redis_process, eventually
):
    cache = await make_cache(redis=redis_process.url)
    await cache.set(key("k"), "stale", compute_seconds=0.1, tags=["t"])
    client = redis.Redis.from_url(redis_process.url)
    try:
        redis_process.freeze()
        try:
            assert await cache.invalidate_tags(["t"]) == 1  # its own L1 copy
            assert cache.metrics()["pending_invalidations"] == 1
        finally:
            redis_process.thaw()
        assert client.exists(key("k")) == 1  # Redis still has it...
        await eventually(lambda: client.exists(key("k")) == 0)  # ...until the replay
        await eventually(lambda: cache.metrics()["pending_invalidations"] == 0)
    finally:
        client.close()


async def test_a_frozen_redis_costs_a_bounded_wait_and_no_errors(
    make_cache, key, redis_process, eventually
):
    cache = await make_cache(redis=redis_process.url)
    await cache.set(key("warm"), "w", compute_seconds=0.1)
    redis_process.freeze()  # accepts connections, never answers: the "slow Redis" case
    try:
        for round_ in range(3):
            await exercise_without_redis(cache, key, f"frozen{round_}")
        assert (await cache.get(key("warm"))).tier == "L1"
        assert cache.metrics()["l3_errors"] > 0
    finally:
        redis_process.thaw()

    async def compute():
        return "thawed"

    assert await eventually(cache.l3_entries) == 1  # Redis answers again ("warm")
    assert cache.metrics()["l3_available"] is True
    assert await cache.get_or_compute(key("new"), compute) == ("thawed", "MISS")
    fresh = await make_cache(redis=redis_process.url)
    assert (await fresh.get(key("new"))).tier == "L3"


async def test_redis_trouble_is_logged_once_per_change_of_state_without_passwords(
    make_cache, key, redis_process, eventually
):
    with structlog.testing.capture_logs() as logs:
        cache = await make_cache(redis=redis_process.url)
        redis_process.kill()
        for round_ in range(5):
            await exercise_without_redis(cache, key, f"log{round_}")
            await asyncio.sleep(0.05)
        redis_process.start()
        await eventually(lambda: cache.metrics()["l3_available"])
    events = [entry["event"] for entry in logs if entry["event"].startswith("cache_redis")]
    assert events == ["cache_redis_unavailable", "cache_redis_available"]
    assert cache.metrics()["l3_errors"] > 1
