"""Circuit breakers for upstream deployments, and their sharing across replicas through Redis.

:class:`CircuitBreaker` is resilience4j's count-based state machine: CLOSED records the
verdict of each call in a sliding window of the last ``sliding_window_size`` calls and opens
when the failure or slow-call rate reaches its threshold (once ``minimum_number_of_calls`` are
in the window); OPEN refuses every call for ``wait_duration_open_seconds`` and then, on the
next acquire, moves to HALF_OPEN; HALF_OPEN admits ``permitted_calls_in_half_open`` trials
and, when all of them have reported, opens again or closes with a fresh window. It is pure,
in-memory and O(1) per call (a ring buffer with running counts), so it can sit on the hot
path of every relayed request. It is not thread-safe: it belongs to one event loop.

:class:`SharedBreakers` makes a breaker's openings and closings seen by every replica within
a second. A replica whose breaker opens writes ``{ns:breaker:<model>}:<deployment>`` (names
URL-quoted) with a ``PX`` of the remaining wait and publishes the record on ``ns:breaker``;
the others force their breaker open for the same remaining time, converted to their own
monotonic clock (a breaker already open for longer keeps its later end). The remaining time
comes from the message
(computed by the publisher just before it sent it) or from ``PTTL`` on a poll, i.e. from
Redis's own clock: no two replicas ever compare wall clocks (the wall-clock ``until`` in the
record is for people reading Redis). A poll every ``poll_seconds`` is the backstop for lost
messages (pub/sub is fire-and-forget). A replica whose half-open trials all succeed writes a
short-lived ``closed`` record; other replicas that are still OPEN move to HALF_OPEN, i.e. they
probe the deployment now with their own trials instead of waiting out the rest of their wait,
and close on their own evidence. A closing is evidence about one replica's few trial calls,
so it shortens the others' wait but does not close them outright. Redis failures never reach
callers: breakers keep working locally and the failures are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import quote

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from dtecho.config import BreakerSettings

__all__ = ["BreakerState", "CircuitBreaker", "SharedBreakers"]

_log = structlog.get_logger("dtecho.router")

_FAILED = 1  # bits of one window slot
_SLOW = 2

#: A transition listener: ``(breaker, old, new, forced)``; ``forced`` for :meth:`force`.
Observer = Callable[["CircuitBreaker", "BreakerState", "BreakerState", bool], None]


class BreakerState(StrEnum):
    """The state of a :class:`CircuitBreaker` (a ``str`` and ``Enum``; ``str()`` is the value)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """One deployment's breaker (resilience4j's count-based state machine, see the module).

    ``clock`` gives monotonic seconds (injectable for tests); ``on_transition(name, old, new)``
    is called after every transition, local or forced. ``transitions`` counts them by
    ``(old.value, new.value)``.
    """

    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_transition: Callable[[str, BreakerState, BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.clock = clock
        self.on_transition = on_transition
        self.transitions: dict[tuple[str, str], int] = {}
        self._observers: list[Observer] = []
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0  # on ``clock``; meaningful while OPEN or HALF_OPEN
        self._size = settings.sliding_window_size
        # As in resilience4j: a minimum above the window size could never be reached.
        self._minimum = min(settings.minimum_number_of_calls, self._size)
        self._window = bytearray(self._size)  # _FAILED | _SLOW bits per call, oldest overwritten
        self._next = 0
        self._calls = 0
        self._failed = 0
        self._slow = 0
        self._trials_out = 0  # half-open trials admitted and not yet reported or released
        self._trials_done = 0
        self._trials_failed = 0
        self._trials_slow = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.value})"

    # -- the hot path -------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The state, after moving an OPEN breaker whose wait has passed to HALF_OPEN."""
        if self._state is BreakerState.OPEN and self._open_remaining() <= 0:
            self._enter(BreakerState.HALF_OPEN, forced=False)
        return self._state

    def try_acquire(self) -> bool:
        """Whether a call may go now; in HALF_OPEN an admitted call takes a trial slot.

        Every admitted call must end in :meth:`record` or :meth:`release`.
        """
        if not self.settings.enabled:
            return True
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        if self._trials_out + self._trials_done >= self.settings.permitted_calls_in_half_open:
            return False
        self._trials_out += 1
        return True

    def record(self, *, success: bool, duration: float) -> None:
        """The verdict of an admitted call; ``duration`` in seconds decides whether it was slow.

        A verdict that arrives while OPEN, or while HALF_OPEN with no trial out, belongs to a
        call admitted before the breaker opened: it is ignored (as in resilience4j, which has
        no memory of which state admitted a call, a late verdict in HALF_OPEN while trials are
        out is taken as a trial's).
        """
        if not self.settings.enabled:
            return
        code = (0 if success else _FAILED) | (
            _SLOW if duration >= self.settings.slow_call_duration_seconds else 0
        )
        state = self._state
        if state is BreakerState.CLOSED:
            if self._calls == self._size:
                old = self._window[self._next]
                self._failed -= old & _FAILED
                self._slow -= (old & _SLOW) >> 1
            else:
                self._calls += 1
            self._window[self._next] = code
            self._next = (self._next + 1) % self._size
            self._failed += code & _FAILED
            self._slow += (code & _SLOW) >> 1
            if self._calls >= self._minimum and self._over_threshold(
                self._failed, self._slow, self._calls
            ):
                self._enter(BreakerState.OPEN, forced=False)
        elif state is BreakerState.HALF_OPEN and self._trials_out > 0:
            self._trials_out -= 1
            self._trials_done += 1
            self._trials_failed += code & _FAILED
            self._trials_slow += (code & _SLOW) >> 1
            if self._trials_done >= self.settings.permitted_calls_in_half_open:
                failed = self._over_threshold(
                    self._trials_failed, self._trials_slow, self._trials_done
                )
                self._enter(BreakerState.OPEN if failed else BreakerState.CLOSED, forced=False)

    def release(self) -> None:
        """An admitted call ended without a verdict (cancelled): free its half-open slot."""
        if self._state is BreakerState.HALF_OPEN and self._trials_out > 0:
            self._trials_out -= 1

    # -- shared state and reporting -----------------------------------------------------------

    def force(self, state: BreakerState, *, opened_at: float | None = None) -> None:
        """Set the state from shared state (another replica's verdict); nothing is re-published.

        ``opened_at`` (on ``clock``, default now) is when an OPEN state began, so the wait ends
        at ``opened_at + wait_duration_open_seconds``. Forcing OPEN on an OPEN breaker only
        moves that time; forcing the current HALF_OPEN or CLOSED state changes nothing. A
        disabled breaker stays CLOSED: it never refuses.
        """
        if not self.settings.enabled:
            return
        if state is BreakerState.OPEN:
            self._opened_at = self.clock() if opened_at is None else opened_at
        if state is not self._state:
            self._enter(state, forced=True)

    def snapshot(self) -> dict[str, Any]:
        """The breaker for ``/admin/upstreams``.

        ``failure_rate``, ``slow_rate`` and ``calls`` are over the sliding window (as it was
        when the breaker opened, while OPEN) or, in HALF_OPEN, over the trials reported so far;
        ``opened_at`` and ``open_until`` are wall-clock epoch seconds (``None`` when CLOSED).
        """
        state = self.state
        if state is BreakerState.HALF_OPEN:
            calls, failed, slow = self._trials_done, self._trials_failed, self._trials_slow
        else:
            calls, failed, slow = self._calls, self._failed, self._slow
        opened_at = open_until = None
        if state is not BreakerState.CLOSED:
            opened_at = time.time() - (self.clock() - self._opened_at)
            open_until = opened_at + self.settings.wait_duration_open_seconds
        return {
            "name": self.name,
            "state": state.value,
            "failure_rate": failed / calls if calls else 0.0,
            "slow_rate": slow / calls if calls else 0.0,
            "calls": calls,
            "opened_at": opened_at,
            "open_until": open_until,
        }

    # -- internals ----------------------------------------------------------------------------

    def _open_remaining(self) -> float:
        """Seconds (on ``clock``) until an OPEN breaker may try again."""
        return self._opened_at + self.settings.wait_duration_open_seconds - self.clock()

    def _over_threshold(self, failed: int, slow: int, calls: int) -> bool:
        # Division, not ``failed >= threshold * calls``: both sides are then correctly rounded,
        # so a rate exactly at a decimal threshold (3/10 against 0.3) compares equal.
        settings = self.settings
        return (
            failed / calls >= settings.failure_rate_threshold
            or slow / calls >= settings.slow_call_rate_threshold
        )

    def _enter(self, new: BreakerState, *, forced: bool) -> None:
        old = self._state
        if new is BreakerState.OPEN and not forced:
            self._opened_at = self.clock()
        if new is BreakerState.CLOSED:
            self._window[:] = bytes(self._size)
            self._next = self._calls = self._failed = self._slow = 0
        self._trials_out = self._trials_done = self._trials_failed = self._trials_slow = 0
        self._state = new
        key = (old.value, new.value)
        self.transitions[key] = self.transitions.get(key, 0) + 1
        for observer in self._observers:
            observer(self, old, new, forced)
        if self.on_transition is not None:
            self.on_transition(self.name, old, new)


# -- sharing through Redis ------------------------------------------------------------------------

_COUNTERS = ("publish", "publish_error", "applied", "poll_error", "subscribe_error")
_BACKOFF_SECONDS = (0.1, 2.0)  # re-subscription back-off, first and longest
_MESSAGE_POLL_SECONDS = 1.0  # one pub/sub read waits this long before looping
_Key = tuple[str, str]  # (model, deployment)


@dataclass(frozen=True, slots=True)
class _Record:
    """One replica's verdict on a deployment, as stored in Redis and published."""

    state: Literal["open", "closed"]
    id: str  # unique per write: a replica applies each record once
    origin: str  # the writing SharedBreakers
    at: float  # wall clock when written, for people reading Redis
    until: float | None = None  # wall clock, likewise; appliers use PTTL or ``remaining_ms``

    def fields(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "id": self.id,
            "origin": self.origin,
            "at": self.at,
            "until": self.until,
        }

    @classmethod
    def parse(cls, fields: Any) -> _Record | None:
        """The record in decoded JSON ``fields``; ``None`` for anything malformed."""
        if not isinstance(fields, dict):
            return None
        state, id_, origin = fields.get("state"), fields.get("id"), fields.get("origin")
        at, until = fields.get("at"), fields.get("until")
        if (
            state not in ("open", "closed")
            or not isinstance(id_, str)
            or not isinstance(origin, str)
            or not isinstance(at, int | float)
            or not (until is None or isinstance(until, int | float))
        ):
            return None
        return cls(state, id_, origin, float(at), None if until is None else float(until))


def _loads(data: Any) -> Any:
    try:
        return json.loads(data)
    except (TypeError, ValueError):
        return None


class SharedBreakers:
    """Makes breaker openings (and closings) seen by every replica through Redis within 1 s.

    See the module docstring for the design. ``poll_seconds`` is the backstop poll's period;
    ``timeout_seconds`` bounds every Redis command, so a frozen Redis cannot stall the loop.
    """

    def __init__(
        self,
        client: Redis,
        *,
        namespace: str = "dtecho",
        poll_seconds: float = 0.5,
        timeout_seconds: float = 1.0,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.poll_seconds = poll_seconds
        self.timeout_seconds = timeout_seconds
        self.channel = f"{namespace}:breaker"
        # A closed record only has to outlive a few polls of every replica; kept short so a
        # stale one cannot shorten a later, unrelated opening's wait.
        self.closed_ttl_seconds = max(10 * poll_seconds, 5.0)
        self._origin = uuid.uuid4().hex
        self._sequence = 0
        self._breakers: dict[_Key, CircuitBreaker] = {}
        self._observers: dict[_Key, Observer] = {}
        self._pending: dict[_Key, tuple[Literal["open", "closed"], float]] = {}  # (state, at)
        self._seen: dict[_Key, str] = {}  # the last record id applied or written, per key
        self._counts: dict[tuple[str], int] = {(name,): 0 for name in _COUNTERS}
        self._wake = asyncio.Event()
        self._first_subscribe = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._redis_ok = True  # for logging each outage once, not every poll
        self._stopping = False

    # -- wiring -------------------------------------------------------------------------------

    def attach(self, model: str, breaker: CircuitBreaker) -> None:
        """Share ``breaker`` (named for its deployment) for ``model``; replaces an earlier one."""
        key = (model, breaker.name)
        self._detach(key)

        def observe(
            _source: CircuitBreaker, _old: BreakerState, new: BreakerState, forced: bool
        ) -> None:
            # Runs inside try_acquire/record: only note the change; the loop does the I/O.
            if forced or new is BreakerState.HALF_OPEN:
                return
            self._pending[key] = ("open" if new is BreakerState.OPEN else "closed", time.time())
            self._wake.set()

        self._breakers[key] = breaker
        self._observers[key] = observe
        breaker._observers.append(observe)

    def counts(self) -> dict[tuple[str], int]:
        """Events for metrics: publish, publish_error, applied, poll_error, subscribe_error."""
        return dict(self._counts)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the subscriber and the publish/poll loop; return after the first subscribe
        attempt (so a message published after ``start`` returns is not missed, Redis willing).
        """
        if self._tasks:
            return
        self._stopping = False
        self._first_subscribe.clear()
        self._tasks = [
            asyncio.create_task(self._listen(), name=f"breakers-listen:{self.namespace}"),
            asyncio.create_task(self._run(), name=f"breakers-sync:{self.namespace}"),
        ]
        await self._first_subscribe.wait()

    async def close(self) -> None:
        """Stop both tasks and detach the breakers (they keep working, unshared).

        To share them again, attach them to a new :class:`SharedBreakers`.
        """
        # The flag as well as the cancellation: a cancellation that lands just as a timeout
        # expires (ours, or redis-py's inside a read) can turn into a TimeoutError that the
        # loops expect and absorb; seen in tests. The loops then end at their next turn.
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for key in list(self._breakers):
            self._detach(key)

    # -- internals ----------------------------------------------------------------------------

    def _detach(self, key: _Key) -> None:
        breaker, observer = self._breakers.pop(key, None), self._observers.pop(key, None)
        if breaker is not None and observer is not None:
            breaker._observers.remove(observer)

    def _redis_key(self, key: _Key) -> str:
        # Quoted so that names holding ':' or braces cannot collide; the braces make one
        # model's keys share a Redis Cluster slot.
        model, deployment = (quote(part, safe="") for part in key)
        return f"{{{self.namespace}:breaker:{model}}}:{deployment}"

    def _count(self, event: str) -> None:
        self._counts[(event,)] += 1

    def _redis_failed(self, event: str, exc: BaseException) -> None:
        self._count(event)
        if self._redis_ok:
            _log.warning("breaker_sharing_degraded", operation=event, error=type(exc).__name__)
        self._redis_ok = False

    def _redis_succeeded(self) -> None:
        if not self._redis_ok:
            _log.info("breaker_sharing_restored")
        self._redis_ok = True

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._flush()
                await self._poll()
            except Exception:
                # Broad on purpose: a bug in a transition callback must not end sharing for
                # the life of the process; the loop logs it and goes on.
                _log.exception("breaker_sharing_failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await self._wake.wait()
            self._wake.clear()  # no await since the wait returned: no wake-up is lost

    async def _flush(self) -> None:
        """Write and publish the local transitions noted since the last flush."""
        pending, self._pending = self._pending, {}
        items = list(pending.items())
        for index, (key, (state, at)) in enumerate(items):
            breaker = self._breakers.get(key)
            if breaker is None:
                continue
            now = time.time()
            if state == "open":
                if breaker._state is not BreakerState.OPEN:
                    continue  # superseded (it moved on before we could publish)
                ttl = breaker._open_remaining()
                until: float | None = now + ttl
            else:
                ttl = self.closed_ttl_seconds - (now - at)
                until = None
            if ttl <= 0:
                continue  # too old to tell anyone
            self._sequence += 1
            record = _Record(state, f"{self._origin}:{self._sequence}", self._origin, now, until)
            # Before the write: our own message may be read while the write is still awaited.
            self._seen[key] = record.id
            model, deployment = key
            message = {"model": model, "deployment": deployment, **record.fields()}
            message["remaining_ms"] = int(ttl * 1000)
            try:
                async with asyncio.timeout(self.timeout_seconds):
                    async with self.client.pipeline(transaction=False) as pipe:
                        pipe.set(
                            self._redis_key(key),
                            json.dumps(record.fields()),
                            px=int(ttl * 1000) + 1,
                        )
                        pipe.publish(self.channel, json.dumps(message))
                        await pipe.execute()
            except (RedisError, OSError, TimeoutError) as exc:
                self._redis_failed("publish_error", exc)
                # Retried next round (unless a newer transition replaces them); the rest are
                # not tried now, so a frozen Redis costs one timeout per round, not one per key.
                for later_key, later in items[index:]:
                    self._pending.setdefault(later_key, later)
                return
            self._redis_succeeded()
            self._count("publish")

    async def _poll(self) -> None:
        """Read every attached deployment's record (the backstop for lost messages)."""
        keys = list(self._breakers)
        if not keys:
            return
        try:
            async with asyncio.timeout(self.timeout_seconds):
                async with self.client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        name = self._redis_key(key)
                        pipe.get(name)
                        pipe.pttl(name)
                    results = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_failed("poll_error", exc)
            return
        self._redis_succeeded()
        for index, key in enumerate(keys):
            raw, pttl = results[2 * index], results[2 * index + 1]
            if raw is None:
                continue
            record = _Record.parse(_loads(raw))
            if record is None:
                _log.warning("breaker_record_ignored", key=self._redis_key(key))
                continue
            # PTTL is Redis's own clock: no replica's wall clock enters the remaining wait.
            self._apply(key, record, pttl / 1000 if isinstance(pttl, int) and pttl > 0 else 0.0)

    async def _listen(self) -> None:
        backoff = _BACKOFF_SECONDS[0]
        while not self._stopping:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self.timeout_seconds):
                    await pubsub.subscribe(self.channel)
                self._first_subscribe.set()
                backoff = _BACKOFF_SECONDS[0]
                while not self._stopping:
                    message = await pubsub.get_message(timeout=_MESSAGE_POLL_SECONDS)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message["data"])
            except (RedisError, OSError, TimeoutError) as exc:
                self._redis_failed("subscribe_error", exc)
            except Exception:
                # Broad on purpose, as in _run: the subscription must come back.
                _log.exception("breaker_listener_failed")
            finally:
                self._first_subscribe.set()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.timeout_seconds):
                        await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_SECONDS[1])

    def _on_message(self, data: Any) -> None:
        fields = _loads(data)
        record = _Record.parse(fields)
        if record is None or not isinstance(fields, dict):
            _log.warning("breaker_message_ignored")
            return
        model, deployment = fields.get("model"), fields.get("deployment")
        remaining_ms = fields.get("remaining_ms")
        if not (
            isinstance(model, str) and isinstance(deployment, str) and isinstance(remaining_ms, int)
        ):
            _log.warning("breaker_message_ignored")
            return
        self._apply((model, deployment), record, remaining_ms / 1000)

    def _apply(self, key: _Key, record: _Record, remaining: float) -> None:
        """Apply another replica's record to the local breaker, once per record."""
        breaker = self._breakers.get(key)
        if breaker is None or record.origin == self._origin or record.id == self._seen.get(key):
            return
        if not breaker.settings.enabled:
            return  # a disabled breaker never refuses, whatever other replicas saw
        self._seen[key] = record.id
        if record.state == "open":
            if remaining <= 0:
                return
            if breaker.state is BreakerState.OPEN and breaker._open_remaining() >= remaining:
                return  # already open at least as long: keep the later end
            # The remote wait's end on the local clock, whatever this replica's own wait is.
            wait = breaker.settings.wait_duration_open_seconds
            breaker.force(BreakerState.OPEN, opened_at=breaker.clock() + remaining - wait)
            self._count("applied")
        elif breaker.state is BreakerState.OPEN:
            # Another replica's trials all succeeded: probe now rather than wait out the rest.
            breaker.force(BreakerState.HALF_OPEN)
            self._count("applied")
