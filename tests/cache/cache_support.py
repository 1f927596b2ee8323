"""Fixtures for the cache tests: unique namespaces, started caches, a Redis we can kill.

Test modules take them with ``from cache_support import *``. Not a ``conftest.py``: a second
module named ``conftest`` would shadow ``tests/conftest.py`` for the e2e tests that import
from it (``from conftest import ServerProcess``).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis

from dtecho.cache import ResponseCache
from dtecho.config import CacheSettings

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        cache = ResponseCache(CacheSettings(**settings), redis, **kwargs)
        await cache.start()
        caches.append(cache)
        return cache

    yield factory
    for cache in caches:
        await cache.close()


class RedisProcess:
    """A throwaway ``redis-server`` on a fixed port that a test can stop, freeze and restart."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is required for the Redis failure tests")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_timeout=0.5).ping()
                return
            except redis.RedisError:
                time.sleep(0.02)
        pytest.fail(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case it was frozen
            self.process.kill()
            self.process.wait()

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    yield server
    server.kill()
