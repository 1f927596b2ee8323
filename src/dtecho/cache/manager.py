"""The response cache: L1 memory → L2 compressed memory → L3 Redis, with single-flight."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

import structlog

from dtecho.cache.codec import (
    CorruptEntry,
    decode_envelope,
    encode_envelope,
    pack_value,
    unpack_value,
)
from dtecho.cache.compressed import CompressedTier
from dtecho.cache.entry import Entry
from dtecho.cache.invalidation import InvalidationListener, InvalidationMessage, Operation
from dtecho.cache.keys import check_namespace
from dtecho.cache.memory import MemoryTier
from dtecho.cache.policy import CachePolicy
from dtecho.cache.redis_tier import RedisTier
from dtecho.cache.singleflight import SingleFlight
from dtecho.cache.stats import CacheStats
from dtecho.config import CacheSettings

__all__ = ["CacheHit", "HitTier", "ResponseCache", "ResultTier"]

T = TypeVar("T")
MIB = 1024 * 1024

HitTier = Literal["L1", "L2", "L3"]
ResultTier = Literal["L1", "L2", "L3", "MISS", "BYPASS"]
"""Where a ``get_or_compute`` result came from: the ``X-Cache`` header's vocabulary."""

_log = structlog.get_logger("dtecho.cache")


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A value found in the cache, and the tier that had it."""

    value: Any
    tier: HitTier


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one flight produced: a payload every waiter decodes for itself, or a raw value."""

    tier: ResultTier
    payload: bytes | None
    value: Any = None


class ResponseCache:
    """A three-tier response cache shared by the replicas that share its Redis.

    ``settings`` gives the bounds, TTL strategy and namespace; ``redis_url`` the L3 Redis
    (``None``: in-process tiers only). L3 is used between :meth:`start` and :meth:`close`
    (or inside ``async with``). ``clock`` (seconds, monotonic) decides L1/L2 expiry; Redis
    expires entries itself. Values are anything msgpack can hold (dicts, lists, str, bytes,
    numbers, bool, None); every read returns a fresh copy, decoded from the stored bytes, so
    callers may mutate what they get and a miss returns exactly what a later hit will.

    Redis trouble never reaches the caller: it is counted (``l3_errors``), logged once per
    change of state, and requests are answered from L1/L2 or computed.

    Keyword arguments: ``l1_max_bytes``/``l2_max_bytes`` bound the serialised (L1) and
    compressed (L2) bytes held; ``conservative_min_compute_seconds`` is the ``conservative``
    strategy's floor; ``redis_timeout_seconds`` bounds every Redis call (pass
    ``Settings.redis_timeout_seconds``); ``redis_max_connections`` sizes the pool;
    ``redis_backoff_seconds`` is ``(first, longest)`` pause before retrying a Redis that
    failed; ``compression_level`` is zstd's. One instance serves one event loop (not threads).
    """

    def __init__(
        self,
        settings: CacheSettings,
        redis_url: str | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        l1_max_bytes: int = 64 * MIB,
        l2_max_bytes: int = 256 * MIB,
        conservative_min_compute_seconds: float = 0.01,
        redis_timeout_seconds: float = 0.05,
        redis_max_connections: int = 64,
        redis_backoff_seconds: tuple[float, float] = (0.1, 2.0),
        compression_level: int = 3,
    ) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.namespace = check_namespace(settings.namespace)
        self._prefix = f"{self.namespace}:"
        self.policy = CachePolicy.from_settings(
            settings, conservative_min_compute_seconds=conservative_min_compute_seconds
        )
        self.redis_timeout_seconds = redis_timeout_seconds
        self.redis_max_connections = redis_max_connections
        self.redis_backoff_seconds = redis_backoff_seconds
        self.instance_id = uuid.uuid4().hex  # tells our own pub/sub messages from others'
        self._clock = clock
        self._l1 = MemoryTier(settings.max_memory_entries, l1_max_bytes, clock=clock)
        self._l2: CompressedTier | None = None
        if settings.compression_enabled and settings.max_compressed_entries > 0:
            self._l2 = CompressedTier(
                settings.max_compressed_entries, l2_max_bytes, clock=clock, level=compression_level
            )
        self._l3: RedisTier | None = None
        self._closed_l3_errors = 0
        self._listener: InvalidationListener | None = None
        self._flights: SingleFlight[_Outcome] = SingleFlight()
        self._stats = CacheStats()
        # Bumped by every invalidation seen here. A Redis read or a computation that started
        # before an invalidation and ends after it must not refill the tiers with what the
        # invalidation just removed.
        self._epoch = 0
        # Invalidations that could not reach Redis; the listener replays them once it can.
        self._pending: list[tuple[Operation, tuple[str, ...]]] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the Redis pool and subscribe to invalidations. Never fails for Redis trouble."""
        if self.redis_url is None or self._l3 is not None or not self.settings.enabled:
            return
        self._l3 = RedisTier(
            self.redis_url,
            self.namespace,
            timeout_seconds=self.redis_timeout_seconds,
            max_connections=self.redis_max_connections,
            backoff_seconds=self.redis_backoff_seconds,
        )
        self._listener = InvalidationListener(
            self._l3, self._on_message, self._on_connected, self._replay_pending
        )
        await self._listener.start()

    async def close(self) -> None:
        """Stop listening and close the Redis pool; the in-process tiers keep working."""
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._l3 is not None:
            self._closed_l3_errors += self._l3.errors
            await self._l3.close()
            self._l3 = None

    async def __aenter__(self) -> ResponseCache:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- reading and writing -----------------------------------------------------------------

    async def get(self, key: str) -> CacheHit | None:
        """The cached value of ``key`` and its tier, promoting it to L1; ``None`` on a miss."""
        hit = self.get_local(key)
        if hit is not None or not self.settings.enabled:
            return hit
        started = time.perf_counter()
        read = await self._read_l3(key)
        if read is None:
            self._stats.misses += 1
            return None
        self._stats.record_hit("L3", time.perf_counter() - started)
        return CacheHit(read[1], "L3")

    def get_local(self, key: str) -> CacheHit | None:
        """A hit from the in-process tiers only (L1, else L2), never waiting on Redis.

        For a fast path that answers before any other work: a hit counts as one, a miss
        counts nothing (the caller goes on to a full lookup, which counts it)."""
        self._check_key(key)
        if not self.settings.enabled:
            return None
        started = time.perf_counter()
        found = self._get_local(key)
        if found is None:
            return None
        self._stats.record_hit(found[1], time.perf_counter() - started)
        return CacheHit(found[0], found[1])

    async def set(
        self,
        key: str,
        value: Any,
        *,
        compute_seconds: float,
        tags: Sequence[str] = (),
        model: str | None = None,
    ) -> bool:
        """Store ``value`` in every tier with the policy's TTL for ``compute_seconds``.

        Returns whether it was stored (not when the cache is disabled or the policy declines).
        ``compute_seconds`` also counts in the metrics as one computation.
        Raises ``TypeError`` if msgpack cannot represent ``value``.
        """
        self._check_key(key)
        tags, model = _check_labels(tags, model)
        if not self.settings.enabled:
            return False
        self._stats.record_compute(compute_seconds)
        ttl = self.policy.ttl(compute_seconds)
        if ttl is None:
            return False
        await self._store(key, pack_value(value), ttl, tags, model)
        return True

    def note_bypass(self) -> None:
        """Count a request that was answered without the cache (it opted out)."""
        self._stats.bypassed += 1

    async def get_or_compute(
        self,
        key: str,
        compute: Callable[[], Awaitable[T]],
        *,
        tags: Sequence[str] = (),
        model: str | None = None,
    ) -> tuple[T, ResultTier]:
        """The cached value of ``key``, or ``await compute()`` stored with its measured cost.

        Concurrent calls for one key that miss share one computation (and one Redis read);
        an exception from ``compute`` reaches all of them and nothing is cached. The tier is
        ``"L1"``/``"L2"``/``"L3"`` for a hit, ``"MISS"`` when computed (also for the callers
        that waited on another's computation), ``"BYPASS"`` when the cache is disabled.
        A result msgpack cannot represent raises ``TypeError`` (to every waiter).
        """
        self._check_key(key)
        tags, model = _check_labels(tags, model)
        if not self.settings.enabled:
            self._stats.bypassed += 1
            return await compute(), "BYPASS"
        started = time.perf_counter()
        found = self._get_local(key)
        if found is not None:
            self._stats.record_hit(found[1], time.perf_counter() - started)
            return found[0], found[1]
        outcome, shared = await self._flights.run(
            key, lambda: self._fill(key, compute, tags, model)
        )
        if shared:
            self._stats.coalesced += 1
        if outcome.tier == "MISS":
            self._stats.misses += 1
        else:
            self._stats.record_hit(outcome.tier, time.perf_counter() - started)
        value = outcome.value if outcome.payload is None else unpack_value(outcome.payload)
        return value, outcome.tier

    async def _fill(
        self,
        key: str,
        compute: Callable[[], Awaitable[Any]],
        tags: tuple[str, ...],
        model: str | None,
    ) -> _Outcome:
        """One flight: read L3, else compute and store."""
        read = await self._read_l3(key)
        if read is not None:
            return _Outcome("L3", read[0])
        epoch = self._epoch
        started = time.perf_counter()
        value = await compute()
        elapsed = time.perf_counter() - started
        self._stats.record_compute(elapsed)
        ttl = self.policy.ttl(elapsed)
        if ttl is None:
            return _Outcome("MISS", None, value)
        payload = pack_value(value)
        if epoch == self._epoch:
            await self._store(key, payload, ttl, tags, model)
        return _Outcome("MISS", payload)

    def _check_key(self, key: str) -> None:
        # A key of another namespace would be stored where clear() never looks.
        if not (isinstance(key, str) and key.startswith(self._prefix)):
            raise ValueError(f"cache key {key!r} is not in namespace {self.namespace!r}")

    def _get_local(self, key: str) -> tuple[Any, HitTier] | None:
        """A hit from L1, or from L2 (then promoted to L1)."""
        entry = self._l1.get(key)
        if entry is not None:
            return unpack_value(entry.payload), "L1"
        if self._l2 is None:
            return None
        entry = self._l2.get(key)
        if entry is None:
            return None
        self._remember(key, entry)  # moves it from L2 up to L1
        return unpack_value(entry.payload), "L2"

    async def _read_l3(self, key: str) -> tuple[bytes, Any] | None:
        """``(payload, value)`` from Redis, promoted to L1; ``None``: absent, bad or unreachable."""
        if self._l3 is None:
            return None
        epoch = self._epoch
        read = await self._l3.get(key)
        if read is None:
            return None
        data, ttl_ms = read
        try:
            payload, tags, model = decode_envelope(data)
            value = unpack_value(payload)
        except CorruptEntry as exc:
            # A poisoned or foreign value: a miss, and the next store overwrites it.
            self._stats.l3_corrupt += 1
            _log.warning("cache_redis_value_ignored", key=key, reason=str(exc))
            return None
        if epoch != self._epoch:
            return None  # an invalidation arrived while we waited: this copy may be stale
        ttl = ttl_ms / 1000.0 if ttl_ms is not None else self.policy.default_ttl_seconds
        self._remember(key, Entry(payload, self._clock() + ttl, tags, model))
        return payload, value

    async def _store(
        self, key: str, payload: bytes, ttl: float, tags: tuple[str, ...], model: str | None
    ) -> None:
        self._remember(key, Entry(payload, self._clock() + ttl, tags, model))
        if self._l3 is not None:
            index_keys = [self._l3.index_key("tag", tag) for tag in dict.fromkeys(tags)]
            if model is not None:
                index_keys.append(self._l3.index_key("model", model))
            envelope = encode_envelope(payload, tags, model)
            await self._l3.set(key, envelope, round(ttl * 1000), index_keys)

    def _remember(self, key: str, entry: Entry) -> None:
        """Put ``entry`` in L1 (the tiers are exclusive: any L2 copy goes); demote evictions."""
        if self._l2 is not None:
            self._l2.discard(key)
        for evicted_key, evicted in self._l1.put(key, entry):
            self._stats.evictions["L1"] += 1
            self._demote(evicted_key, evicted)

    def _demote(self, key: str, entry: Entry) -> None:
        """Keep an L1 eviction in L2 if it is large enough to be worth compressing."""
        if (
            self._l2 is None
            or entry.nbytes < self.settings.compression_threshold
            or entry.expires_at <= self._clock()
        ):
            return
        self._stats.demotions += 1
        self._stats.evictions["L2"] += len(self._l2.put(key, entry))

    # -- invalidation ------------------------------------------------------------------------

    async def invalidate_tags(self, tags: Sequence[str]) -> int:
        """Remove every entry carrying any of ``tags`` from all tiers and all replicas.

        Returns how many distinct entries were removed here and from Redis (other replicas'
        in-process copies are dropped when the published message reaches them).
        """
        labels, _ = _check_labels(tags, None)
        if not labels:
            return 0
        wanted = frozenset(labels)
        return await self._invalidate("tags", labels, lambda e: not wanted.isdisjoint(e.tags))

    async def invalidate_model(self, model: str) -> int:
        """Remove every entry stored for ``model`` from all tiers and all replicas."""
        _, checked = _check_labels((), model)
        return await self._invalidate("model", (model,), lambda e: e.model == checked)

    async def clear(self) -> int:
        """Remove every entry of this namespace (in-process, Redis, other replicas' memory).

        Only this namespace's keys are deleted (SCAN + UNLINK), never the whole database.
        """
        return await self._invalidate("clear", (), lambda e: True)

    async def _invalidate(
        self, operation: Operation, targets: tuple[str, ...], matches: Callable[[Entry], bool]
    ) -> int:
        removed = self._drop_local(matches)
        if self._l3 is not None:
            remote = await self._invalidate_remote(operation, targets)
            if remote is None:
                self._pending.append((operation, targets))
                _log.warning(
                    "cache_invalidation_deferred",
                    operation=operation,
                    targets=list(targets),
                    reason="redis unavailable; replayed when it is back",
                )
            else:
                removed |= remote
        self._stats.invalidations += len(removed)
        return len(removed)

    async def _invalidate_remote(
        self, operation: Operation, targets: tuple[str, ...]
    ) -> set[str] | None:
        """Delete from Redis and tell the other replicas; ``None`` if Redis failed."""
        assert self._l3 is not None
        if operation == "clear":
            removed = await self._l3.clear()
        else:
            kind = "tag" if operation == "tags" else "model"
            removed = await self._l3.invalidate(self._l3.index_key(kind, t) for t in targets)
        if removed is None:
            return None
        message = InvalidationMessage(self.instance_id, operation, targets)
        if not await self._l3.publish(message.encode()):
            return None
        return removed

    def _drop_local(self, matches: Callable[[Entry], bool]) -> set[str]:
        self._epoch += 1
        removed = set(self._l1.remove_matching(matches))
        if self._l2 is not None:
            removed.update(self._l2.remove_matching(matches))
        return removed

    def _on_message(self, message: InvalidationMessage) -> None:
        """Another replica invalidated: drop our in-process copies."""
        if message.origin == self.instance_id:
            return
        if message.operation == "tags":
            wanted = frozenset(message.targets)
            self._drop_local(lambda e: not wanted.isdisjoint(e.tags))
        elif message.operation == "model":
            models = frozenset(message.targets)
            self._drop_local(lambda e: e.model in models)
        else:
            self._drop_local(lambda e: True)

    async def _on_connected(self, resumed: bool) -> None:
        """The invalidation subscription is (back) up."""
        if resumed:
            # Messages published while we were not subscribed are lost for good, so any
            # in-process entry may have been invalidated elsewhere: start again from Redis.
            dropped = len(self._drop_local(lambda e: True))
            _log.info("cache_local_tiers_dropped", entries=dropped, reason="resubscribed")
        await self._replay_pending()

    async def _replay_pending(self) -> None:
        """Apply the invalidations Redis missed, oldest first (called by the listener)."""
        while self._pending:
            operation, targets = self._pending[0]
            if await self._invalidate_remote(operation, targets) is None:
                return  # still failing: the listener's next poll tries again
            self._pending.pop(0)
            _log.info("cache_invalidation_replayed", operation=operation, targets=list(targets))

    # -- metrics -----------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        """A snapshot for the metrics endpoint (``entries.L3`` is ``None``; see ``l3_entries``).

        ``total_requests`` counts lookups (hits + misses; bypassed calls are apart);
        ``hit_ratio`` is 0.0 before the first; ``mean_*_ms`` are ``None`` before the first.
        """
        return {
            "enabled": self.settings.enabled,
            "strategy": self.policy.strategy,
            "namespace": self.namespace,
            **self._stats.snapshot(),
            "entries": {
                "L1": len(self._l1),
                "L2": len(self._l2) if self._l2 is not None else 0,
                "L3": None,
            },
            "bytes": {
                "L1": self._l1.nbytes,
                "L2": self._l2.nbytes if self._l2 is not None else 0,
            },
            "l3_available": self._l3.available if self._l3 is not None else None,
            "l3_subscribed": self._listener.subscribed if self._listener is not None else None,
            "l3_errors": self._l3_errors(),
            "pending_invalidations": len(self._pending),
        }

    def counts(self) -> dict[tuple[str, str], int]:
        """Monotonic counters keyed by ``(event, tier)``, for a Prometheus counter family.

        Events: ``hit`` (tier ``L1``/``L2``/``L3``), ``miss``, ``bypass``, ``coalesced``,
        ``compute``, ``eviction`` (``L1``/``L2``), ``demotion`` (``L2``), ``invalidation``,
        ``l3_error``, ``l3_corrupt``; the tier label is ``""`` where it does not apply.
        """
        return self._stats.counts(self._l3_errors())

    async def l3_entries(self) -> int | None:
        """Entries of this namespace in Redis (a full SCAN), or ``None`` without Redis."""
        return None if self._l3 is None else await self._l3.count_entries()

    def _l3_errors(self) -> int:
        # Kept across close()/start() by folding a closed tier's count in.
        return self._closed_l3_errors + (self._l3.errors if self._l3 is not None else 0)


def _check_labels(tags: Sequence[str], model: str | None) -> tuple[tuple[str, ...], str | None]:
    """Validate tags and model at the boundary: a bare string is not a sequence of tags."""
    if isinstance(tags, (str, bytes)) or not all(isinstance(tag, str) for tag in tags):
        raise TypeError("tags must be a sequence of strings (got a single string?)")
    if model is not None and not isinstance(model, str):
        raise TypeError(f"model must be a string or None (got {type(model).__name__})")
    return tuple(tags), model
