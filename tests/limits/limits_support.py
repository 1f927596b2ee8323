"""Fixtures for the limits tests: both backends behind one face, clocks, a Redis to kill.

Test modules take them with ``from limits_support import *``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from dtecho.config import LimitProfile
from dtecho.limits import Decision, LocalLimiter, RedisLimiter
from support import RedisProcess

__all__ = [
    "NO_LIMITS",
    "Backends",
    "FakeClock",
    "admit",
    "backends",
    "delete_namespace",
    "header",
    "keys_of",
    "namespace",
    "new_client",
    "redis_process",
]

NO_LIMITS = LimitProfile()


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def new_client(url: str, timeout: float = 2.0, max_connections: int = 16) -> aioredis.Redis:
    """An asyncio client with its own pool, bounded timeouts and no retries.

    A retry would hide a kill; the blocking pool makes a burst of calls queue for one of
    ``max_connections`` connections instead of failing with "Too many connections".
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    return aioredis.Redis.from_pool(pool)


async def admit(
    limiter: Any,
    principal: LimitProfile = NO_LIMITS,
    model_limits: LimitProfile = NO_LIMITS,
    tokens: int = 0,
    *,
    principal_id: str = "key:alice",
    model: str | None = "m1",
) -> Decision:
    """``limiter.admit`` with the test's usual principal and model."""
    return await limiter.admit(principal_id, model, principal, model_limits, tokens)


def header(decision: Decision, name: str) -> str | None:
    """One header of a decision, decoded; ``None`` when absent."""
    values = [value.decode() for key, value in decision.headers if key == name.encode()]
    assert len(values) <= 1, f"{name} appears {len(values)} times"
    return values[0] if values else None


class Backends:
    """One backend ("local" or "redis") behind one face: make a limiter, let time pass."""

    def __init__(self, kind: str, redis_url: str, namespace: str) -> None:
        self.kind = kind
        self.redis_url = redis_url
        self.namespace = namespace
        # A Wednesday noon, far from any day or month boundary.
        self.clock = FakeClock(datetime(2025, 6, 11, 12, 0, tzinfo=UTC).timestamp())
        self.clients: list[aioredis.Redis] = []

    def make(self, *, window_seconds: float = 60.0, lease_seconds: float = 600.0) -> Any:
        """A fresh limiter of this backend (Redis: on this test's own namespace)."""
        if self.kind == "local":
            return LocalLimiter(
                lease_seconds=lease_seconds, clock=self.clock, window_seconds=window_seconds
            )
        client = new_client(self.redis_url)
        self.clients.append(client)
        return RedisLimiter(
            client,
            namespace=self.namespace,
            lease_seconds=lease_seconds,
            window_seconds=window_seconds,
        )

    def now(self) -> float:
        """The backend's idea of now (Redis runs on this machine's clock)."""
        return self.clock() if self.kind == "local" else time.time()

    async def elapse(self, seconds: float) -> None:
        """Let ``seconds`` pass: the fake clock moves, or the test really waits for Redis."""
        if self.kind == "local":
            self.clock.advance(seconds)
        else:
            await asyncio.sleep(seconds)

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


def delete_namespace(url: str, namespace: str) -> None:
    """Remove one namespace's keys (never FLUSHDB: the Redis is shared)."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{{{namespace}:*", count=1000))
        if keys:
            client.unlink(*keys)
    finally:
        client.close()


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A namespace no other test uses; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    delete_namespace(redis_url, name)


@pytest.fixture(params=["local", "redis"])
async def backends(
    request: pytest.FixtureRequest, redis_url: str, namespace: str
) -> AsyncIterator[Backends]:
    """Each test that takes it runs once per backend."""
    env = Backends(request.param, redis_url, namespace)
    yield env
    await env.close()


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    """A private redis-server the test may kill, freeze and restart."""
    server = RedisProcess()
    server.start()
    yield server
    server.kill()


def keys_of(url: str, namespace: str) -> dict[str, int]:
    """Every key of ``namespace`` with its PTTL."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return {key: client.pttl(key) for key in client.scan_iter(match=f"{{{namespace}:*")}
    finally:
        client.close()
