"""L3 against a real Redis: sharing between instances, invalidation across them, poisoning."""

import asyncio
import os
import pickle

import msgpack
import pytest
from cache_support import *  # noqa: F403  (fixtures)

from dtecho.cache import cache_key
from dtecho.cache.codec import encode_envelope, pack_value


@pytest.fixture
def key(namespace):
    return lambda name: cache_key(namespace, "/v1/dtesn/process", "m", 1, {"name": name})


async def test_a_value_stored_by_one_instance_is_an_l3_hit_on_another(make_cache, key):
    a = await make_cache()
    b = await make_cache()
    calls = 0

    async def compute():
        nonlocal calls
        calls += 1
        return {"y": [0.25, -1.0], "raw": b"\x01\x02"}

    assert await a.get_or_compute(key("k"), compute) == (
        {"y": [0.25, -1.0], "raw": b"\x01\x02"},
        "MISS",
    )
    assert await b.get_or_compute(key("k"), compute) == (
        {"y": [0.25, -1.0], "raw": b"\x01\x02"},
        "L3",
    )
    assert (await b.get(key("k"))).tier == "L1"  # promoted
    assert calls == 1
    assert b.metrics()["hits"] == {"L1": 1, "L2": 0, "L3": 1}
    assert await b.l3_entries() == 1


async def test_redis_holds_msgpack_with_the_policy_ttl(make_cache, key, sync_redis):
    cache = await make_cache(default_ttl_seconds=100, strategy="balanced")
    await cache.set(key("k"), {"a": 1}, compute_seconds=0.5, tags=["t"], model="m")
    raw = sync_redis.get(key("k"))
    version, tags, model, payload = msgpack.unpackb(raw)
    assert (version, tags, model, msgpack.unpackb(payload)) == (1, ["t"], "m", {"a": 1})
    assert 99_000 < sync_redis.pttl(key("k")) <= 100_000


@pytest.mark.parametrize(
    ("strategy", "compute_seconds", "ttl_seconds"),
    [
        ("aggressive", 0.0, 200),
        ("balanced", 0.0, 100),
        ("conservative", 0.05, 50),
        ("conservative", 0.001, None),
        ("dynamic", 0.0, 100),
        ("dynamic", 0.03, 300),
        ("dynamic", 5.0, 400),
    ],
)
async def test_each_strategy_sets_the_redis_ttl(
    make_cache, key, sync_redis, strategy, compute_seconds, ttl_seconds
):
    cache = await make_cache(strategy=strategy, default_ttl_seconds=100)
    await cache.set(key("k"), "value", compute_seconds=compute_seconds, tags=["t"])
    if ttl_seconds is None:
        assert sync_redis.exists(key("k")) == 0
        return
    pttl = sync_redis.pttl(key("k"))
    assert ttl_seconds * 1000 - 1000 < pttl <= ttl_seconds * 1000
    # The tag index lives as long as its longest-lived member.
    index = f"{cache.namespace}:tag:t"
    assert ttl_seconds * 1000 - 1000 < sync_redis.pttl(index) <= ttl_seconds * 1000


async def test_expired_redis_entries_are_not_served(make_cache, key, sync_redis):
    a = await make_cache(default_ttl_seconds=0.2)
    b = await make_cache()
    await a.set(key("k"), "short-lived", compute_seconds=0.0)
    assert (await b.get(key("k"))).tier == "L3"
    c = await make_cache()
    await asyncio.sleep(0.3)
    assert sync_redis.exists(key("k")) == 0
    assert await c.get(key("k")) is None
    # b promoted it with Redis's remaining TTL, so its L1 copy has expired too.
    assert await b.get(key("k")) is None


async def test_invalidation_by_tag_on_one_instance_reaches_the_other(
    make_cache, key, sync_redis, eventually
):
    a = await make_cache()
    b = await make_cache()
    await a.set(key("red"), "r", compute_seconds=0.1, tags=["red", "x"])
    await a.set(key("blue"), "b", compute_seconds=0.1, tags=["blue"])
    assert (await b.get(key("red"))).tier == "L3"
    assert (await b.get(key("red"))).tier == "L1"  # b now holds its own copy

    assert await a.invalidate_tags(["red"]) == 1
    assert sync_redis.exists(key("red")) == 0
    await eventually(lambda: b.metrics()["entries"]["L1"] == 0)  # pub/sub reached b
    assert await b.get(key("red")) is None
    assert (await b.get(key("blue"))).value == "b"  # other tags untouched
    assert a.metrics()["invalidations"] == 1


async def test_invalidation_by_model_on_one_instance_reaches_the_other(
    make_cache, namespace, sync_redis, eventually
):
    a = await make_cache()
    b = await make_cache()
    old = cache_key(namespace, "/v1/chat", "echo", "1", {"p": 1})
    other = cache_key(namespace, "/v1/chat", "other", "1", {"p": 1})
    await a.set(old, "old answer", compute_seconds=0.1, model="echo")
    await a.set(other, "other answer", compute_seconds=0.1, model="other")
    await b.get(old)
    await b.get(other)
    assert b.metrics()["entries"]["L1"] == 2

    assert await a.invalidate_model("echo") == 1
    assert sync_redis.exists(old) == 0 and sync_redis.exists(other) == 1
    await eventually(lambda: b.metrics()["entries"]["L1"] == 1)
    assert await b.get(old) is None
    assert (await b.get(other)).tier == "L1"


async def test_entries_stored_on_b_are_removed_by_invalidation_on_a(make_cache, key, sync_redis):
    a = await make_cache()
    b = await make_cache()
    await b.set(key("k"), "from b", compute_seconds=0.1, tags=["shared"])
    assert await a.invalidate_tags(["shared"]) == 1  # found through the Redis tag index
    assert sync_redis.exists(key("k")) == 0


async def test_clear_removes_only_its_own_namespace(make_cache, namespace, redis_url, sync_redis):
    from dtecho.cache import ResponseCache
    from dtecho.config import CacheSettings

    other_ns = f"{namespace}-other"
    other = ResponseCache(CacheSettings(namespace=other_ns), redis_url)
    await other.start()
    try:
        mine = await make_cache()
        other_key = cache_key(other_ns, "/r", None, None, {})
        await other.set(other_key, "keep me", compute_seconds=0.1, tags=["t"])
        extending = f"{namespace}:sub:v1:{'0' * 64}"  # a namespace that extends ours
        foreign = f"{namespace}:ratelimit:alice"  # someone else's key under our prefix
        sync_redis.set(extending, b"x")
        sync_redis.set(foreign, b"y")
        for i in range(5):
            await mine.set(
                cache_key(namespace, "/r", None, None, {"i": i}), i, compute_seconds=0.1, tags=["t"]
            )

        assert await mine.clear() == 5
        assert list(sync_redis.scan_iter(match=f"{namespace}:v1:*")) == []
        assert sync_redis.exists(f"{namespace}:tag:t") == 0
        assert sync_redis.get(other_key) is not None
        assert sync_redis.exists(f"{other_ns}:tag:t") == 1
        assert sync_redis.get(extending) == b"x" and sync_redis.get(foreign) == b"y"
        assert mine.metrics()["entries"]["L1"] == 0
        assert (await other.get(other_key)).value == "keep me"
    finally:
        await other.close()
        sync_redis.unlink(other_key, f"{other_ns}:tag:t")


async def test_clear_reaches_other_instances_memory(make_cache, key, eventually):
    a = await make_cache()
    b = await make_cache()
    await a.set(key("k"), 1, compute_seconds=0.1)
    await b.get(key("k"))
    assert await a.clear() == 1
    await eventually(lambda: b.metrics()["entries"]["L1"] == 0)


async def test_single_flight_holds_with_redis_in_the_path(make_cache, key, sync_redis):
    cache = await make_cache()
    calls = 0

    async def compute():
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return list(range(10))

    results = await asyncio.gather(*(cache.get_or_compute(key("k"), compute) for _ in range(20)))
    assert calls == 1 and {tier for _, tier in results} == {"MISS"}
    assert all(value == list(range(10)) for value, _ in results)
    assert sync_redis.exists(key("k")) == 1


@pytest.mark.parametrize(
    "poison",
    [
        b"\xc1\xff garbage",  # not msgpack at all
        msgpack.packb({"not": "an envelope"}),
        msgpack.packb([1, ["t"], None, "payload is not bytes"]),
        encode_envelope(b"\xc1\xc1", (), None),  # envelope fine, value undecodable
    ],
    ids=["garbage", "wrong-layout", "wrong-types", "bad-payload"],
)
async def test_a_poisoned_redis_value_is_a_miss_not_a_crash(make_cache, key, sync_redis, poison):
    sync_redis.set(key("k"), poison)
    cache = await make_cache()
    assert await cache.get(key("k")) is None
    assert cache.metrics()["l3_corrupt"] == 1

    async def compute():
        return "fresh"

    assert await cache.get_or_compute(key("k"), compute) == ("fresh", "MISS")
    reader = await make_cache()
    assert await reader.get(key("k")) is not None  # the poison was overwritten


async def test_a_pickle_in_redis_is_never_unpickled(make_cache, key, sync_redis, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    sync_redis.set(key("k"), pickle.dumps(Exploit()))
    sync_redis.set(key("k2"), encode_envelope(pickle.dumps(Exploit()), (), None))
    cache = await make_cache()
    assert await cache.get(key("k")) is None
    assert await cache.get(key("k2")) is None
    assert not marker.exists()


async def test_a_key_of_the_wrong_type_is_a_miss(make_cache, key, sync_redis):
    sync_redis.rpush(key("k"), b"a list, not a string")
    cache = await make_cache()
    assert await cache.get(key("k")) is None
    assert cache.metrics()["l3_available"] is True  # Redis answered: not an outage


async def test_a_poisoned_index_cannot_delete_foreign_keys(make_cache, namespace, sync_redis):
    foreign = f"{namespace}-victim:important"
    sync_redis.set(foreign, b"precious")
    sync_redis.zadd(f"{namespace}:tag:t", {foreign: 1e15, "anything": 1e15})
    try:
        cache = await make_cache()
        assert await cache.invalidate_tags(["t"]) == 0
        assert sync_redis.get(foreign) == b"precious"
    finally:
        sync_redis.unlink(foreign)


async def test_garbage_on_the_invalidation_channel_is_ignored(
    make_cache, key, sync_redis, eventually
):
    a = await make_cache()
    b = await make_cache()
    sync_redis.publish(f"{a.namespace}:invalidate", b"\xc1 garbage")
    sync_redis.publish(f"{a.namespace}:invalidate", msgpack.packb({"op": "explode"}))
    await a.set(key("k"), pack_value("v"), compute_seconds=0.1, tags=["t"])
    await b.get(key("k"))
    await a.invalidate_tags(["t"])
    await eventually(lambda: b.metrics()["entries"]["L1"] == 0)  # b's listener survived
    assert b.metrics()["l3_subscribed"] is True
