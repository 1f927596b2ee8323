"""ResponseCache in one process: tiers, demotion and promotion, expiry, single-flight, bypass."""

import asyncio

import pytest
from cache_support import *  # noqa: F403  (fixtures)

from dtecho.cache import CacheHit, cache_key
from dtecho.cache.codec import pack_value

BIG = {"states": list(range(400)), "text": "echo " * 100}  # well over 1 KB packed
SMALL = {"ok": True}


@pytest.fixture
def key(namespace):
    return lambda name: cache_key(namespace, "/r", "m", 1, {"name": name})


async def test_keys_of_another_namespace_are_refused(make_cache):
    cache = await make_cache(redis=None)
    with pytest.raises(ValueError, match="namespace"):
        await cache.get(cache_key("elsewhere", "/r", None, None, {}))


async def test_set_then_get_is_an_l1_hit_with_an_equal_fresh_copy(make_cache, key):
    cache = await make_cache(redis=None)
    await cache.set(key("a"), {"xs": [1, 2], "b": b"\x00"}, compute_seconds=0.1)
    first = await cache.get(key("a"))
    assert first == CacheHit({"xs": [1, 2], "b": b"\x00"}, "L1")
    first.value["xs"].append(3)  # a caller mutating its copy changes nothing cached
    assert (await cache.get(key("a"))).value == {"xs": [1, 2], "b": b"\x00"}
    assert await cache.get(key("absent")) is None


async def test_values_msgpack_cannot_hold_are_refused(make_cache, key):
    cache = await make_cache(redis=None)
    with pytest.raises(TypeError):
        await cache.set(key("a"), object(), compute_seconds=0.1)
    with pytest.raises(TypeError, match="sequence of strings"):
        await cache.set(key("a"), 1, compute_seconds=0.1, tags="one-tag")


async def test_l1_evictions_above_the_threshold_are_demoted_to_l2_and_promoted_back(
    make_cache, key
):
    assert len(pack_value(BIG)) >= 1024 > len(pack_value(SMALL))
    cache = await make_cache(redis=None, max_memory_entries=2, compression_threshold=1024)
    for name in ("a", "b", "c"):
        await cache.set(key(name), {**BIG, "name": name}, compute_seconds=0.1)
    metrics = cache.metrics()
    assert metrics["entries"] == {"L1": 2, "L2": 1, "L3": None}
    assert metrics["evictions"]["L1"] == 1 and metrics["demotions"] == 1
    assert 0 < metrics["bytes"]["L2"] < len(pack_value(BIG))  # stored compressed

    hit = await cache.get(key("a"))
    assert hit.tier == "L2" and hit.value == {**BIG, "name": "a"}
    assert (await cache.get(key("a"))).tier == "L1"
    # Promoting "a" evicted "b" (least recently used) into L2 in its place.
    assert (await cache.get(key("b"))).tier == "L2"
    assert cache.metrics()["entries"] == {"L1": 2, "L2": 1, "L3": None}


async def test_small_evictions_are_dropped_not_demoted(make_cache, key):
    cache = await make_cache(redis=None, max_memory_entries=1, compression_threshold=1024)
    await cache.set(key("small"), SMALL, compute_seconds=0.1)
    await cache.set(key("next"), SMALL, compute_seconds=0.1)
    assert await cache.get(key("small")) is None
    assert cache.metrics()["entries"]["L2"] == 0


async def test_compression_disabled_means_no_l2(make_cache, key):
    cache = await make_cache(redis=None, max_memory_entries=1, compression_enabled=False)
    await cache.set(key("a"), BIG, compute_seconds=0.1)
    await cache.set(key("b"), BIG, compute_seconds=0.1)
    assert await cache.get(key("a")) is None
    assert cache.metrics()["entries"]["L2"] == 0


async def test_l2_is_bounded_by_max_compressed_entries(make_cache, key):
    cache = await make_cache(
        redis=None, max_memory_entries=1, max_compressed_entries=2, compression_threshold=1
    )
    for name in "abcd":
        await cache.set(key(name), BIG, compute_seconds=0.1)
    metrics = cache.metrics()
    assert metrics["entries"] == {"L1": 1, "L2": 2, "L3": None}
    assert metrics["evictions"] == {"L1": 3, "L2": 1}
    assert await cache.get(key("a")) is None  # evicted from L2: gone


async def test_l1_is_bounded_by_bytes_too(make_cache, key):
    size = len(pack_value(BIG))
    cache = await make_cache(redis=None, max_memory_entries=100, l1_max_bytes=3 * size)
    for name in "abcde":
        await cache.set(key(name), BIG, compute_seconds=0.1)
    metrics = cache.metrics()
    assert metrics["entries"]["L1"] == 3 and metrics["bytes"]["L1"] == 3 * size
    assert metrics["entries"]["L2"] == 2


async def test_entries_expire_in_l1_and_l2_by_the_injected_clock(make_cache, key, clock):
    cache = await make_cache(redis=None, clock=clock, default_ttl_seconds=10, max_memory_entries=1)
    await cache.set(key("old"), BIG, compute_seconds=0.1)
    clock.advance(5)
    await cache.set(key("new"), BIG, compute_seconds=0.1)  # "old" goes to L2
    clock.advance(4.9)
    assert (await cache.get(key("old"))).tier == "L2"
    clock.advance(0.1)  # "old" is now 10 s old; it was promoted to L1 and must expire there
    assert await cache.get(key("old")) is None
    assert (await cache.get(key("new"))).tier in ("L1", "L2")
    clock.advance(5)
    assert await cache.get(key("new")) is None


async def test_expired_l1_entries_are_not_demoted(make_cache, key, clock):
    cache = await make_cache(redis=None, clock=clock, default_ttl_seconds=1, max_memory_entries=1)
    await cache.set(key("a"), BIG, compute_seconds=0.1)
    clock.advance(2)
    await cache.set(key("b"), BIG, compute_seconds=0.1)
    assert cache.metrics()["entries"]["L2"] == 0


@pytest.mark.parametrize(
    ("strategy", "compute_seconds", "ttl"),
    [
        ("aggressive", 0.0, 200),
        ("balanced", 0.0, 100),
        ("conservative", 0.05, 50),
        ("conservative", 0.001, None),
        ("dynamic", 0.0, 100),
        ("dynamic", 1.0, 400),
    ],
)
async def test_strategy_sets_how_long_l1_keeps_an_entry(
    make_cache, key, clock, strategy, compute_seconds, ttl
):
    cache = await make_cache(redis=None, clock=clock, strategy=strategy, default_ttl_seconds=100)
    stored = await cache.set(key("k"), SMALL, compute_seconds=compute_seconds)
    if ttl is None:
        assert stored is False and await cache.get(key("k")) is None
        return
    clock.advance(ttl - 0.01)
    assert await cache.get(key("k")) is not None
    clock.advance(0.01)
    assert await cache.get(key("k")) is None


async def test_twenty_concurrent_misses_compute_once(make_cache, key):
    cache = await make_cache()
    calls = 0

    async def compute():
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return {"result": [1.5, 2.5], "n": calls}

    results = await asyncio.gather(*(cache.get_or_compute(key("k"), compute) for _ in range(20)))
    assert calls == 1
    assert all(result == ({"result": [1.5, 2.5], "n": 1}, "MISS") for result in results)
    assert len({id(value) for value, _ in results}) == 20  # each caller owns its copy
    metrics = cache.metrics()
    assert (metrics["misses"], metrics["coalesced"], metrics["computations"]) == (20, 19, 1)
    assert await cache.get_or_compute(key("k"), compute) == ({"result": [1.5, 2.5], "n": 1}, "L1")
    assert calls == 1


async def test_an_exception_in_compute_reaches_every_waiter_and_nothing_is_cached(
    make_cache, key, sync_redis
):
    cache = await make_cache()
    calls = 0

    async def compute():
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        raise RuntimeError("engine failed")

    results = await asyncio.gather(
        *(cache.get_or_compute(key("k"), compute) for _ in range(20)), return_exceptions=True
    )
    assert calls == 1
    assert all(isinstance(r, RuntimeError) and str(r) == "engine failed" for r in results)
    assert await cache.get(key("k")) is None
    assert sync_redis.exists(key("k")) == 0
    assert cache.metrics()["entries"]["L1"] == 0


async def test_cheap_results_under_conservative_are_returned_but_not_cached(make_cache, key):
    cache = await make_cache(redis=None, strategy="conservative")

    async def compute():
        return ("tuple", 1)

    assert await cache.get_or_compute(key("k"), compute) == (("tuple", 1), "MISS")
    assert await cache.get(key("k")) is None


async def test_disabled_cache_bypasses_everything(make_cache, key, sync_redis):
    cache = await make_cache(enabled=False)
    calls = 0

    async def compute():
        nonlocal calls
        calls += 1
        return calls

    assert await cache.set(key("k"), 1, compute_seconds=1.0) is False
    assert await cache.get(key("k")) is None
    assert await cache.get_or_compute(key("k"), compute) == (1, "BYPASS")
    assert await cache.get_or_compute(key("k"), compute) == (2, "BYPASS")
    assert sync_redis.exists(key("k")) == 0
    metrics = cache.metrics()
    assert metrics["bypassed"] == 2 and metrics["total_requests"] == 0
    assert metrics["l3_available"] is None  # start() opened nothing


async def test_metrics_and_counts_agree_with_what_happened(make_cache, key):
    cache = await make_cache(redis=None, max_memory_entries=1, compression_threshold=1)

    async def compute():
        await asyncio.sleep(0.02)
        return BIG

    assert (await cache.get_or_compute(key("a"), compute))[1] == "MISS"
    assert (await cache.get_or_compute(key("a"), compute))[1] == "L1"
    assert (await cache.get_or_compute(key("b"), compute))[1] == "MISS"
    assert (await cache.get_or_compute(key("a"), compute))[1] == "L2"
    assert await cache.get(key("zzz")) is None
    assert await cache.invalidate_tags(["none"]) == 0
    metrics = cache.metrics()
    assert metrics["total_requests"] == 5
    assert metrics["hits"] == {"L1": 1, "L2": 1, "L3": 0}
    assert metrics["misses"] == 3
    assert metrics["hit_ratio"] == pytest.approx(2 / 5)
    assert metrics["mean_miss_compute_ms"] >= 20
    assert 0 < metrics["mean_hit_ms"] < metrics["mean_miss_compute_ms"]
    counts = cache.counts()
    assert counts[("hit", "L1")] == 1 and counts[("hit", "L2")] == 1 and counts[("hit", "L3")] == 0
    assert counts[("miss", "")] == 3
    assert counts[("eviction", "L1")] == metrics["evictions"]["L1"] == 2
    assert counts[("l3_error", "")] == 0 and counts[("invalidation", "")] == 0
    assert all(isinstance(v, int) for v in counts.values())


async def test_local_invalidation_by_tag_and_model(make_cache, key):
    cache = await make_cache(redis=None, max_memory_entries=2, compression_threshold=1)
    await cache.set(key("a"), BIG, compute_seconds=0.1, tags=["red"], model="m1")
    await cache.set(key("b"), BIG, compute_seconds=0.1, tags=["blue"], model="m2")
    await cache.set(key("c"), BIG, compute_seconds=0.1, tags=["red", "blue"], model="m2")
    assert cache.metrics()["entries"]["L2"] == 1  # "a" was demoted: L2 is searched too
    assert await cache.invalidate_tags(["red"]) == 2
    assert await cache.get(key("a")) is None and await cache.get(key("c")) is None
    assert await cache.invalidate_model("m2") == 1
    assert await cache.get(key("b")) is None
    assert cache.metrics()["invalidations"] == 3
