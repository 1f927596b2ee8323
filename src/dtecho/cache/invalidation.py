"""Invalidation across replicas: messages on a Redis pub/sub channel, and their listener.

Deleting entries from Redis is not enough: every replica may hold copies in its own memory
tiers. The replica that invalidates publishes what it invalidated; every other replica's
listener drops its matching in-process entries. Pub/sub is fire-and-forget, so a listener that
lost its subscription reports it when it is back (``on_connected(resumed=True)``): the owner
must then assume it missed messages. ``on_poll`` runs after every read (at least once per
``POLL_SECONDS``), for the owner's periodic work such as retrying deferred invalidations.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import msgpack
import structlog
from redis.exceptions import RedisError

from dtecho.cache.codec import CorruptEntry
from dtecho.cache.redis_tier import RedisTier

__all__ = ["InvalidationListener", "InvalidationMessage"]

_log = structlog.get_logger("dtecho.cache")

Operation = Literal["tags", "model", "clear"]
_OPERATIONS = ("tags", "model", "clear")
POLL_SECONDS = 1.0  # how long one read waits for a message before checking the connection


@dataclass(frozen=True, slots=True)
class InvalidationMessage:
    """``origin`` (the publishing cache's id) invalidated ``targets`` (tags, a model, or all)."""

    origin: str
    operation: Operation
    targets: tuple[str, ...] = ()

    def encode(self) -> bytes:
        """msgpack bytes for the channel (data only: never pickle, whatever Redis holds)."""
        return msgpack.packb(
            {"origin": self.origin, "op": self.operation, "targets": list(self.targets)},
            use_bin_type=True,
        )

    @classmethod
    def decode(cls, data: bytes) -> InvalidationMessage:
        """The message in ``data``; :class:`CorruptEntry` for anything else."""
        try:
            fields = msgpack.unpackb(data, raw=False)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CorruptEntry(f"undecodable invalidation message: {exc}") from None
        if not isinstance(fields, dict):
            raise CorruptEntry("invalidation message is not a map")
        origin, operation, targets = fields.get("origin"), fields.get("op"), fields.get("targets")
        if not (
            isinstance(origin, str)
            and operation in _OPERATIONS
            and isinstance(targets, list)
            and all(isinstance(target, str) for target in targets)
        ):
            raise CorruptEntry("invalidation message has fields of the wrong type")
        return cls(origin, operation, tuple(targets))


class InvalidationListener:
    """Keeps one subscription to ``tier.channel`` alive and hands each message to ``on_message``.

    When the subscription fails (Redis down, connection dropped) it is retried with a growing
    back-off; every successful (re)subscription calls ``on_connected(resumed)``, with
    ``resumed`` true unless it is the very first attempt succeeding.
    """

    def __init__(
        self,
        tier: RedisTier,
        on_message: Callable[[InvalidationMessage], None],
        on_connected: Callable[[bool], Awaitable[None]],
        on_poll: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.tier = tier
        self.on_message = on_message
        self.on_connected = on_connected
        self.on_poll = on_poll
        self.subscribed = False
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()

    async def start(self) -> None:
        """Start listening; return once the first subscription attempt has succeeded or failed."""
        if self._task is None:
            name = f"cache-listener:{self.tier.channel}"
            self._task = asyncio.create_task(self._run(), name=name)
        await self._first_attempt.wait()

    async def close(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        low, high = self.tier.backoff_seconds
        backoff = low
        resumed = False
        while True:
            pubsub = self.tier.client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self.tier.timeout_seconds):
                    await pubsub.subscribe(self.tier.channel)
                self.subscribed = True
                self.tier.record_success()
                self._first_attempt.set()
                backoff = low
                await self.on_connected(resumed)
                while True:
                    message = await pubsub.get_message(timeout=POLL_SECONDS)
                    if message is not None and message.get("type") == "message":
                        self._deliver(message["data"])
                    if self.on_poll is not None:
                        await self.on_poll()
            except (RedisError, OSError, TimeoutError) as exc:
                self.tier.record_failure("subscribe", exc)  # logged once per state change
            except Exception:
                # Broad on purpose: whatever else went wrong (a bug in a handler), the listener
                # must come back, or this replica would silently keep invalidated entries.
                _log.exception("cache_listener_failed")
            finally:
                self.subscribed = False
                self._first_attempt.set()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.tier.timeout_seconds):
                        await pubsub.aclose()
            self.restarts += 1
            resumed = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, high)

    def _deliver(self, data: object) -> None:
        if not isinstance(data, bytes):
            return
        try:
            message = InvalidationMessage.decode(data)
        except CorruptEntry as exc:
            _log.warning("cache_invalidation_message_ignored", reason=str(exc))
            return
        self.on_message(message)
