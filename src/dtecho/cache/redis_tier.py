"""L3: responses in Redis, shared by every replica, with tag and model indexes.

Layout under the namespace ``ns`` (nothing else is ever written or deleted):

- ``ns:v1:<sha256>``: an entry, the msgpack envelope of :mod:`dtecho.cache.codec`, ``PX`` TTL;
- ``ns:tag:<tag>`` and ``ns:model:<model>``: sorted sets of entry keys scored by their expiry
  (Redis time, ms), so members whose entries have expired can be pruned on the next write; the
  set itself expires with its longest-lived member;
- ``ns:invalidate``: the pub/sub channel of :mod:`dtecho.cache.invalidation`.

Redis being slow or down must never fail a request. Every call is bounded by a short timeout
(no retries inside redis-py: a retry would multiply the bound); failures are counted and
logged once per change of state, and for a short, growing back-off after a failure the hot
path (get, set, publish) skips Redis instead of paying the timeout on every request. The
connection pool reconnects by itself once Redis answers again.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from dtecho.cache.keys import KEY_VERSION
from dtecho.config import redact_url

__all__ = ["RedisTier"]

R = TypeVar("R")

_log = structlog.get_logger("dtecho.cache")

# One round trip, atomic: the entry and its index memberships appear together or not at all.
# TIME comes from Redis so replicas with skewed clocks agree on when members expire.
_SET_SCRIPT = """
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
if #KEYS > 1 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  for i = 2, #KEYS do
    redis.call('ZADD', KEYS[i], now + ttl, KEYS[1])
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    if redis.call('PTTL', KEYS[i]) < ttl then
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
  end
end
return 1
"""

_CONNECTION_ERRORS = (RedisError, OSError, TimeoutError)
_BATCH = 1000  # keys per pipeline / SCAN page for the admin operations


class RedisTier:
    """L3 operations on one Redis, under one namespace, each bounded by ``timeout_seconds``.

    Hot-path methods (:meth:`get`, :meth:`set`, :meth:`publish`) never raise for Redis
    trouble: they answer "nothing" (``None``/``False``) and count the error. Admin methods
    (:meth:`invalidate`, :meth:`clear`, :meth:`count_entries`) always try, even while Redis is
    considered down, and answer ``None`` when they could not complete.
    """

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        timeout_seconds: float = 0.05,
        max_connections: int = 64,
        backoff_seconds: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        if not timeout_seconds > 0:
            raise ValueError("timeout_seconds must be > 0")
        self.url = url
        self.namespace = namespace
        self.timeout_seconds = timeout_seconds
        self.backoff_seconds = backoff_seconds
        self.channel = f"{namespace}:invalidate"
        self._entry_key = re.compile(rf"^{re.escape(namespace)}:{KEY_VERSION}:[0-9a-f]{{64}}$")
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_seconds,  # waiting for a free connection counts against the bound too
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=10,  # PING idle connections first, so a dead peer shows fast
        )
        self.client: Redis = Redis.from_pool(pool)
        self._set_script = self.client.register_script(_SET_SCRIPT)
        self.available: bool | None = None  # None until the first call
        self.errors = 0
        self.skipped = 0
        self._retry_at = 0.0
        self._next_backoff = backoff_seconds[0]

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.client.aclose()

    # -- keys --------------------------------------------------------------------------------

    def index_key(self, kind: str, label: str) -> str:
        """The index sorted set of a tag (``kind="tag"``) or a model (``kind="model"``)."""
        return f"{self.namespace}:{kind}:{label}"

    def is_entry_key(self, key: str) -> bool:
        """Whether ``key`` is an entry of this namespace (anything else is never deleted)."""
        return self._entry_key.match(key) is not None

    # -- health ------------------------------------------------------------------------------

    def record_failure(self, operation: str, exc: BaseException) -> None:
        """Count a failed call; log it if Redis was not already known to be down."""
        self.errors += 1
        now = time.monotonic()
        if self.available is not False:
            _log.warning(
                "cache_redis_unavailable",
                url=redact_url(self.url),
                operation=operation,
                error=f"{type(exc).__name__}: {exc}",
            )
            self.available = False
            self._next_backoff = self.backoff_seconds[0]
        self._retry_at = now + self._next_backoff
        self._next_backoff = min(self._next_backoff * 2, self.backoff_seconds[1])

    def record_success(self) -> None:
        """Note that Redis answered; log it if it had been down."""
        if self.available is False:
            _log.info("cache_redis_available", url=redact_url(self.url))
        self.available = True
        self._next_backoff = self.backoff_seconds[0]

    async def _call(
        self, operation: str, call: Callable[[], Awaitable[R]], *, force: bool = False
    ) -> tuple[bool, R | None]:
        """``(True, result)``, or ``(False, None)`` when Redis failed or is being skipped."""
        if not force and self.available is False and time.monotonic() < self._retry_at:
            self.skipped += 1
            return False, None
        try:
            # redis-py's own socket timeouts bound each read and connect; this bounds the whole
            # call (pool wait + connect + write + read) with the same figure.
            async with asyncio.timeout(self.timeout_seconds):
                result = await call()
        except ResponseError as exc:
            # Redis answered with an error (a key of the wrong type in a poisoned Redis, OOM):
            # count it, but Redis is up, so no change of state and no back-off.
            self.errors += 1
            _log.debug("cache_redis_error_reply", operation=operation, error=str(exc))
            return False, None
        except _CONNECTION_ERRORS as exc:
            self.record_failure(operation, exc)
            return False, None
        self.record_success()
        return True, result

    # -- hot path ----------------------------------------------------------------------------

    async def ping(self) -> bool:
        """Whether Redis answers now (forces a try even while backing off)."""
        ok, _ = await self._call("ping", self.client.ping, force=True)
        return ok

    async def get(self, key: str) -> tuple[bytes, int | None] | None:
        """``(stored bytes, remaining TTL in ms or None if it has none)``, or ``None``.

        ``None`` for a missing key and for Redis trouble alike; a key holding another type
        than a string (a poisoned Redis) reads as missing too.
        """

        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                return await pipe.execute()

        ok, result = await self._call("get", read)
        if not ok or result is None:
            return None
        data, pttl = result
        if data is None or pttl == -2:  # absent, or expired between the two commands
            return None
        return data, (int(pttl) if pttl >= 0 else None)

    async def set(self, key: str, data: bytes, ttl_ms: int, index_keys: Iterable[str] = ()) -> bool:
        """Store ``data`` under ``key`` for ``ttl_ms`` and add it to ``index_keys``."""
        keys = [key, *index_keys]
        ok, _ = await self._call(
            "set", lambda: self._set_script(keys=keys, args=[data, max(1, int(ttl_ms))])
        )
        return ok

    async def publish(self, message: bytes) -> bool:
        """Publish ``message`` on the namespace's invalidation channel."""
        ok, _ = await self._call(
            "publish", lambda: self.client.publish(self.channel, message), force=True
        )
        return ok

    # -- admin -------------------------------------------------------------------------------

    async def invalidate(self, index_keys: Iterable[str]) -> set[str] | None:
        """Delete every entry listed in ``index_keys``; the keys that existed, or ``None``.

        Index members are removed one by one (``ZREM``), never by deleting the whole set: an
        entry written with the same tag while this runs keeps its membership.
        """
        index_keys = list(index_keys)

        async def members() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for index_key in index_keys:
                    pipe.zrange(index_key, 0, -1)
                return await pipe.execute(raise_on_error=False)

        ok, listed = await self._call("invalidate", members, force=True)
        if not ok or listed is None:
            return None
        removed: set[str] = set()
        for index_key, found in zip(index_keys, listed, strict=True):
            if isinstance(found, Exception):
                continue  # not a sorted set: nothing of ours is indexed there
            names = [m.decode("utf-8", "replace") if isinstance(m, bytes) else m for m in found]
            for start in range(0, len(names), _BATCH):
                members = names[start : start + _BATCH]
                # Only ever delete keys shaped like our entries, whatever a poisoned index says.
                entries = [name for name in members if self.is_entry_key(name)]
                gone = await self._delete(entries, index_key, members)
                if gone is None:
                    return None
                removed.update(gone)
        return removed

    async def _delete(
        self, entries: list[str], index_key: str | None, members: list[str]
    ) -> set[str] | None:
        """UNLINK ``entries`` (and ZREM ``members`` from ``index_key``); the ones that existed."""
        if not entries and not members:
            return set()

        async def unlink() -> list[Any]:
            async with self.client.pipeline(transaction=True) as pipe:
                for key in entries:
                    pipe.unlink(key)
                if index_key is not None and members:
                    pipe.zrem(index_key, *members)
                return await pipe.execute()

        ok, results = await self._call("delete", unlink, force=True)
        if not ok or results is None:
            return None
        return {key for key, existed in zip(entries, results, strict=False) if existed}

    async def clear(self) -> set[str] | None:
        """Delete this namespace's entries and indexes (SCAN + UNLINK, never FLUSHDB).

        Only keys of the cache's own shapes are deleted, so other users of the same prefix
        (or a namespace that extends this one, ``ns:more``) are left alone. Returns the entry
        keys deleted, or ``None`` if Redis failed part-way.
        """
        prefix = f"{self.namespace}:"
        removed: set[str] = set()
        cursor: int | str = 0
        while True:
            ok, page = await self._call(
                "clear",
                lambda c=cursor: self.client.scan(c, match=f"{prefix}*", count=_BATCH),
                force=True,
            )
            if not ok or page is None:
                return None
            cursor, names = page
            names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
            entries = [name for name in names if self.is_entry_key(name)]
            indexes = [
                name for name in names if name.startswith((f"{prefix}tag:", f"{prefix}model:"))
            ]
            gone = await self._delete(entries + indexes, None, [])
            if gone is None:
                return None
            removed.update(key for key in gone if self.is_entry_key(key))
            if int(cursor) == 0:
                return removed

    async def count_entries(self) -> int | None:
        """How many entries this namespace has in Redis (a full SCAN: for metrics pages only)."""
        count = 0
        cursor: int | str = 0
        while True:
            ok, page = await self._call(
                "count",
                lambda c=cursor: self.client.scan(
                    c, match=f"{self.namespace}:{KEY_VERSION}:*", count=_BATCH
                ),
                force=True,
            )
            if not ok or page is None:
                return None
            cursor, names = page
            count += len(names)
            if int(cursor) == 0:
                return count
