"""The contract both in-process tiers keep (L1 memory, L2 compressed), and what is L2's own."""

import random

import pytest
from cache_support import *  # noqa: F403  (fixtures)

from dtecho.cache.compressed import CompressedTier
from dtecho.cache.entry import Entry
from dtecho.cache.memory import MemoryTier

TIERS = {"L1": MemoryTier, "L2": CompressedTier}


def noise(size, seed=0):
    """Bytes zstd cannot shrink."""
    return random.Random(seed).randbytes(size)


def entry(size=10, *, expires_at=2000.0, tags=(), model=None, fill=b"x"):
    return Entry(fill * size, expires_at, tuple(tags), model)


@pytest.fixture(params=sorted(TIERS))
def make_tier(request, clock):
    def make(max_entries=3, max_bytes=1 << 20):
        return TIERS[request.param](max_entries, max_bytes, clock=clock)

    return make


def test_get_returns_what_put_stored(make_tier):
    tier = make_tier()
    stored = entry(100, tags=("a",), model="m")
    assert tier.put("k", stored) == []
    assert tier.get("k") == stored
    assert tier.get("absent") is None
    assert len(tier) == 1


def test_least_recently_used_is_evicted_first(make_tier):
    tier = make_tier(max_entries=3)
    for key in "abc":
        tier.put(key, entry(fill=key.encode()))
    tier.get("a")  # a is now the most recently used; b the least
    evicted = tier.put("d", entry(fill=b"d"))
    assert [key for key, _ in evicted] == ["b"]
    assert evicted[0][1].payload == b"b" * 10
    assert tier.get("b") is None
    assert all(tier.get(key) is not None for key in "acd")


def test_entry_count_bound_holds(make_tier):
    tier = make_tier(max_entries=5)
    evicted = []
    for i in range(20):
        evicted += tier.put(f"k{i}", entry())
    assert len(tier) == 5
    assert [key for key, _ in evicted] == [f"k{i}" for i in range(15)]


def test_byte_bound_holds_and_evicts_oldest_first():
    # Measured on L1 (raw payload bytes); L2 counts compressed bytes, checked below.
    tier = MemoryTier(100, 100)
    tier.put("a", entry(40))
    tier.put("b", entry(40))
    assert tier.nbytes == 80
    evicted = tier.put("c", entry(40))
    assert [key for key, _ in evicted] == ["a"]
    assert tier.nbytes == 80 and len(tier) == 2


def test_an_entry_larger_than_the_byte_bound_is_refused_alone(make_tier):
    tier = make_tier(max_entries=10, max_bytes=50)
    small = entry(5, fill=b"s")
    tier.put("small", small)
    huge = Entry(noise(1000), 2000.0)  # too large for L2 even compressed
    assert tier.put("huge", huge) == [("huge", huge)]
    assert tier.get("huge") is None
    assert tier.get("small") == small


def test_replacing_a_key_keeps_one_entry_and_exact_byte_count(make_tier):
    tier = make_tier()
    tier.put("k", entry(10))
    before = tier.nbytes
    tier.put("k", entry(10, fill=b"y"))
    assert len(tier) == 1 and tier.nbytes == before
    assert tier.get("k").payload == b"y" * 10


def test_expired_entries_are_never_served(make_tier, clock):
    tier = make_tier()
    tier.put("k", entry(expires_at=clock.now + 5))
    clock.advance(4.999)
    assert tier.get("k") is not None
    clock.advance(0.001)
    assert tier.get("k") is None
    assert len(tier) == 0 and tier.nbytes == 0


def test_remove_matching_discard_and_clear(make_tier):
    tier = make_tier(max_entries=10)
    tier.put("a", entry(tags=("red",)))
    tier.put("b", entry(tags=("red", "blue"), model="m"))
    tier.put("c", entry(model="m"))
    assert sorted(tier.remove_matching(lambda e: "red" in e.tags)) == ["a", "b"]
    assert tier.discard("c") is True
    assert tier.discard("c") is False
    tier.put("d", entry())
    assert tier.clear() == 1
    assert len(tier) == 0 and tier.nbytes == 0


def test_compressed_tier_holds_compressed_bytes(clock):
    tier = CompressedTier(10, 1 << 20, clock=clock)
    original = entry(10_000, fill=b"abcd")
    tier.put("k", original)
    assert tier.nbytes < original.nbytes / 50
    assert tier.get("k") == original


def test_compressed_tier_bounds_compressed_bytes(clock):
    incompressible = [noise(1000, seed) for seed in range(3)]
    tier = CompressedTier(10, 2500, clock=clock)
    evicted = []
    for i, payload in enumerate(incompressible):
        evicted += tier.put(f"k{i}", Entry(payload, 2000.0))
    assert [key for key, _ in evicted] == ["k0"]
    assert evicted[0][1].payload == incompressible[0]  # evictions come back decompressed
    assert tier.nbytes <= 2500
