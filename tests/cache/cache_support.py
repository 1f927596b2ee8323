"""Fixtures for the cache tests: unique namespaces, started caches, a Redis we can kill.

Test modules take them with ``from cache_support import *``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis

from dtecho.cache import ResponseCache
from dtecho.config import CacheSettings
from support import RedisProcess

__all__ = [
    "clock",
    "eventually_fixture",
    "make_cache",
    "namespace",
    "redis_process",
    "sync_redis",
]

# Short back-off so the tests see recovery within a fraction of a second.
FAST_BACKOFF = (0.05, 0.2)
TEST_REDIS_TIMEOUT = 0.5  # seconds; see make_cache


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def eventually(
    condition: Callable[[], Any] | Callable[[], Awaitable[Any]],
    timeout: float = 5.0,
    interval: float = 0.01,
) -> Any:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def delete_namespace(url: str, namespace: str) -> None:
    """Remove one namespace's keys (never FLUSHDB: the Redis is shared)."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="eventually")
def eventually_fixture() -> Callable[..., Awaitable[Any]]:
    """:func:`eventually` as a fixture."""
    return eventually


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A namespace no other test uses; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    delete_namespace(redis_url, name)


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


CacheFactory = Callable[..., Awaitable[ResponseCache]]


@pytest.fixture
async def make_cache(namespace: str, redis_url: str) -> AsyncIterator[CacheFactory]:
    """Build and start caches on the test's namespace (and the shared Redis by default).

    ``make_cache(redis=None, strategy="dynamic", clock=..., ...)``: keyword arguments that are
    ``CacheSettings`` fields go to the settings, the rest to ``ResponseCache``.
    """
    caches: list[ResponseCache] = []
    fields = set(CacheSettings.model_fields)

    async def factory(*, redis: str | None = redis_url, **options: Any) -> ResponseCache:
        settings = {"namespace": namespace}
        settings.update({k: v for k, v in options.items() if k in fields})
        kwargs = {k: v for k, v in options.items() if k not in fields}
        kwargs.setdefault("redis_backoff_seconds", FAST_BACKOFF)
        # The production bound (50 ms) is tight for a shared 2-core VM, where a stall now
        # and then made a first connect or SET time out and a test about something else
        # fail; no test here is about the bound's size, so they get room.
        kwargs.setdefault("redis_timeout_seconds", TEST_REDIS_TIMEOUT)
        cache = ResponseCache(CacheSettings(**settings), redis, **kwargs)
        await cache.start()
        caches.append(cache)
        return cache

    yield factory
    for cache in caches:
        await cache.close()


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    yield server
    server.kill()
