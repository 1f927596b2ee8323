"""Circuit breakers: the state machine on a fake clock, and its sharing across two replicas
through a real Redis (each replica a SharedBreakers on its own connection)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from dtecho.config import BreakerSettings
from dtecho.router.breaker import BreakerState, CircuitBreaker, SharedBreakers
from support import RedisProcess, wait_until

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_settings(**overrides: Any) -> BreakerSettings:
    values: dict[str, Any] = {
        "failure_rate_threshold": 0.5,
        "slow_call_rate_threshold": 1.0,
        "slow_call_duration_seconds": 1.0,
        "sliding_window_size": 10,
        "minimum_number_of_calls": 4,
        "wait_duration_open_seconds": 10.0,
        "permitted_calls_in_half_open": 3,
    }
    values.update(overrides)
    return BreakerSettings(**values)


def make_breaker(
    clock: FakeClock | None = None, name: str = "primary", **overrides: Any
) -> CircuitBreaker:
    return CircuitBreaker(name, make_settings(**overrides), clock=clock or FakeClock())


def call(breaker: CircuitBreaker, *, success: bool, duration: float = 0.1) -> None:
    """One call through the breaker, which must admit it."""
    assert breaker.try_acquire()
    breaker.record(success=success, duration=duration)


def calls(breaker: CircuitBreaker, outcomes: str) -> None:
    """``outcomes`` as letters: S a success, F a failure."""
    for letter in outcomes:
        call(breaker, success=letter == "S")


def trip(breaker: CircuitBreaker) -> None:
    """Fail calls until the breaker opens."""
    while breaker.state is CLOSED:
        call(breaker, success=False)
    assert breaker.state is OPEN


def half_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    trip(breaker)
    clock.advance(breaker.settings.wait_duration_open_seconds)
    assert breaker.state is HALF_OPEN


# -- the state machine ------------------------------------------------------------------------


def test_opens_at_the_failure_rate_threshold_only_after_the_minimum_number_of_calls() -> None:
    breaker = make_breaker()
    calls(breaker, "FFF")  # a rate of 1.0, but three calls are not a sample
    assert breaker.state is CLOSED
    calls(breaker, "S")  # 3/4 with the minimum reached
    assert breaker.state is OPEN


def test_opens_exactly_at_the_threshold_not_below_it() -> None:
    breaker = make_breaker()
    calls(breaker, "SFSSF")  # 2/5 = 0.4
    assert breaker.state is CLOSED
    calls(breaker, "F")  # 3/6 = 0.5
    assert breaker.state is OPEN
    assert breaker.snapshot()["failure_rate"] == 0.5


def test_the_sliding_window_forgets_old_calls() -> None:
    breaker = make_breaker(sliding_window_size=4, failure_rate_threshold=0.75)
    calls(breaker, "FFSS")  # 0.5
    calls(breaker, "SS")  # both failures have left the window
    snapshot = breaker.snapshot()
    assert (snapshot["calls"], snapshot["failure_rate"]) == (4, 0.0)
    calls(breaker, "FF")  # SSFF: 0.5 (over every call ever: 4/8)
    assert breaker.state is CLOSED
    calls(breaker, "F")  # SFFF: 0.75 — over every call ever it would be 5/9
    assert breaker.state is OPEN


def test_the_slow_call_rate_opens_even_when_every_call_succeeds() -> None:
    breaker = make_breaker(slow_call_rate_threshold=0.5, slow_call_duration_seconds=1.0)
    for duration in (1.0, 0.999, 0.1):  # 1.0 is slow: at or over the duration
        call(breaker, success=True, duration=duration)
    assert breaker.state is CLOSED
    call(breaker, success=True, duration=5.0)  # 2/4 slow
    assert breaker.state is OPEN
    snapshot = breaker.snapshot()
    assert (snapshot["failure_rate"], snapshot["slow_rate"]) == (0.0, 0.5)


def test_open_refuses_until_the_wait_has_passed_then_half_open_admits_exactly_n() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    trip(breaker)
    clock.advance(9.999)
    assert not breaker.try_acquire()
    assert breaker.state is OPEN
    clock.advance(0.001)
    assert breaker.state is HALF_OPEN
    assert [breaker.try_acquire() for _ in range(4)] == [True, True, True, False]
    breaker.record(success=True, duration=0.1)  # one trial back, two still out
    assert not breaker.try_acquire()
    assert breaker.state is HALF_OPEN


def test_the_lazy_transition_happens_on_the_next_acquire_too() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    trip(breaker)
    clock.advance(10.0)
    assert breaker.try_acquire()  # no state read first: try_acquire itself half-opens
    assert breaker.transitions == {("closed", "open"): 1, ("open", "half_open"): 1}


def test_trials_that_all_succeed_close_the_breaker_with_a_clean_window() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    half_open(breaker, clock)
    calls(breaker, "SS")
    assert breaker.state is HALF_OPEN
    calls(breaker, "S")
    assert breaker.state is CLOSED
    snapshot = breaker.snapshot()
    assert (snapshot["calls"], snapshot["failure_rate"], snapshot["opened_at"]) == (0, 0.0, None)
    calls(breaker, "FFF")  # the old failures are gone: the minimum must be reached again
    assert breaker.state is CLOSED


def test_trials_at_the_failure_rate_reopen_with_a_new_wait() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    half_open(breaker, clock)
    clock.advance(3.0)
    calls(breaker, "SFF")  # 2/3 of the trials failed
    assert breaker.state is OPEN
    assert not breaker.try_acquire()
    clock.advance(9.9)  # 12.9 s after the first opening, 9.9 s after the second
    assert breaker.state is OPEN
    clock.advance(0.1)
    assert breaker.state is HALF_OPEN


def test_trials_below_the_failure_rate_close_the_breaker() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    half_open(breaker, clock)
    calls(breaker, "SFS")  # 1/3 < 0.5
    assert breaker.state is CLOSED


def test_concurrent_trials_are_judged_only_when_all_have_reported() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    half_open(breaker, clock)
    assert all(breaker.try_acquire() for _ in range(3))
    breaker.record(success=False, duration=0.1)
    breaker.record(success=False, duration=0.1)
    assert breaker.state is HALF_OPEN  # 2/3 failed already, but one trial is still out
    breaker.record(success=True, duration=0.1)
    assert breaker.state is OPEN


def test_release_frees_a_half_open_slot_and_records_nothing() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    half_open(breaker, clock)
    assert all(breaker.try_acquire() for _ in range(3))
    assert not breaker.try_acquire()
    breaker.release()  # e.g. the losing hedge
    assert breaker.try_acquire()
    assert not breaker.try_acquire()
    breaker.record(success=True, duration=0.1)
    breaker.record(success=True, duration=0.1)
    assert breaker.state is HALF_OPEN  # the released call was no verdict: one more is due
    breaker.record(success=True, duration=0.1)
    assert breaker.state is CLOSED


def test_verdicts_of_calls_admitted_before_the_opening_change_nothing() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    assert breaker.try_acquire()  # a long call that started while CLOSED
    trip(breaker)
    breaker.record(success=False, duration=0.1)  # arrives while OPEN
    clock.advance(10.0)
    assert breaker.state is HALF_OPEN
    breaker.record(success=False, duration=0.1)  # arrives with no trial out
    breaker.release()
    assert [breaker.try_acquire() for _ in range(4)] == [True, True, True, False]


def test_a_disabled_breaker_always_allows_and_records_nothing() -> None:
    breaker = make_breaker(enabled=False)
    for _ in range(50):
        call(breaker, success=False, duration=100.0)
    breaker.force(OPEN)
    assert breaker.try_acquire()
    assert breaker.state is CLOSED
    assert breaker.snapshot()["calls"] == 0
    assert breaker.transitions == {}


def test_transitions_are_counted_and_reported_to_the_callback() -> None:
    clock = FakeClock()
    seen: list[tuple[str, BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(
        "eu-1",
        make_settings(),
        clock=clock,
        on_transition=lambda name, old, new: seen.append((name, old, new)),
    )
    half_open(breaker, clock)
    calls(breaker, "FFF")
    clock.advance(10.0)
    assert breaker.try_acquire()
    breaker.release()
    calls(breaker, "SSS")
    breaker.force(OPEN)
    breaker.force(OPEN)  # the same state again: no transition
    assert seen == [
        ("eu-1", CLOSED, OPEN),
        ("eu-1", OPEN, HALF_OPEN),
        ("eu-1", HALF_OPEN, OPEN),
        ("eu-1", OPEN, HALF_OPEN),
        ("eu-1", HALF_OPEN, CLOSED),
        ("eu-1", CLOSED, OPEN),
    ]
    assert breaker.transitions == {
        ("closed", "open"): 2,
        ("open", "half_open"): 2,
        ("half_open", "open"): 1,
        ("half_open", "closed"): 1,
    }


def test_force_open_takes_the_given_start_of_the_wait() -> None:
    clock = FakeClock()
    breaker = make_breaker(clock)
    breaker.force(OPEN, opened_at=clock.now - 7.0)  # opened 7 s ago elsewhere: 3 s left
    assert not breaker.try_acquire()
    clock.advance(2.9)
    assert breaker.state is OPEN
    clock.advance(0.1)
    assert breaker.state is HALF_OPEN


def test_the_snapshot_gives_wall_clock_times() -> None:
    breaker = make_breaker()
    before = time.time()
    trip(breaker)
    snapshot = breaker.snapshot()
    assert snapshot["state"] == "open"
    assert before - 1 < snapshot["opened_at"] <= time.time()
    assert snapshot["open_until"] == pytest.approx(snapshot["opened_at"] + 10.0)


# -- sharing through Redis --------------------------------------------------------------------

MODEL = "chat"
WAIT = 30.0  # long, on fake clocks: a wait never runs out by itself during a test

Replica = Callable[..., Awaitable[SharedBreakers]]


async def eventually(condition: Callable[[], Any], timeout: float = 1.0) -> None:
    """``wait_until`` in a worker thread, so that the replicas' tasks run meanwhile."""
    await asyncio.to_thread(wait_until, condition, timeout)


@pytest.fixture
async def replica(redis_url: str) -> AsyncIterator[Replica]:
    """Make a replica: a started SharedBreakers on its own connection, sharing ``breaker``.

    Every replica of one test shares a namespace no other test uses.
    """
    namespace = f"test-breakers-{uuid.uuid4().hex}"
    made: list[tuple[SharedBreakers, Redis]] = []

    async def make(
        breaker: CircuitBreaker, *, url: str = redis_url, poll_seconds: float = 0.5
    ) -> SharedBreakers:
        client = Redis.from_url(url)
        shared = SharedBreakers(client, namespace=namespace, poll_seconds=poll_seconds)
        shared.attach(MODEL, breaker)
        made.append((shared, client))
        await shared.start()
        return shared

    yield make
    for shared, client in made:
        await shared.close()
        await client.aclose()


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    process = RedisProcess()
    process.start()
    yield process
    process.kill()


def pair() -> tuple[FakeClock, CircuitBreaker, FakeClock, CircuitBreaker]:
    """One deployment's breaker on each of two replicas, each on its own fake clock."""
    clock_a, clock_b = FakeClock(), FakeClock()
    clock_b.advance(-400.0)  # replicas' monotonic clocks have nothing in common
    settings = {"wait_duration_open_seconds": WAIT}
    return (
        clock_a,
        make_breaker(clock_a, **settings),
        clock_b,
        make_breaker(clock_b, **settings),
    )


async def test_an_opening_on_one_replica_is_seen_on_the_other_within_a_second(
    replica: Replica,
) -> None:
    _, a, _, b = pair()
    shared_a, shared_b = await replica(a), await replica(b)
    trip(a)
    await eventually(lambda: b.state is OPEN)
    assert not b.try_acquire()
    assert shared_a.counts()[("publish",)] == 1
    assert shared_b.counts()[("applied",)] == 1
    assert b.transitions == {("closed", "open"): 1}


async def test_the_other_replica_half_opens_after_the_remaining_wait_and_only_once(
    replica: Replica,
) -> None:
    _, a, clock_b, b = pair()
    await replica(a)
    shared_b = await replica(b)
    trip(a)
    await eventually(lambda: b.state is OPEN)
    assert b.snapshot()["open_until"] == pytest.approx(a.snapshot()["open_until"], abs=1.0)
    clock_b.advance(WAIT - 1.0)
    assert b.state is OPEN
    clock_b.advance(1.0)
    assert b.state is HALF_OPEN
    # The record in Redis lives on (its TTL is real time): it must not be applied again.
    await asyncio.sleep(3 * shared_b.poll_seconds)
    assert b.state is HALF_OPEN
    assert shared_b.counts()[("applied",)] == 1


async def test_a_later_opening_elsewhere_extends_an_open_replica_s_wait(
    replica: Replica,
) -> None:
    clock_a, a, clock_b, b = pair()
    shared_a = await replica(a)
    shared_b = await replica(b)
    trip(b)  # B opens first, on its own evidence; A follows
    await eventually(lambda: a.state is OPEN)
    assert shared_a.counts()[("publish",)] == 0  # a forced opening is not published again
    clock_b.advance(10.0)
    clock_a.advance(WAIT)
    calls(a, "FFF")  # A's trials fail: it opens anew for a full wait, 20 s past B's own end
    await eventually(lambda: shared_b.counts()[("applied",)] == 1)
    clock_b.advance(WAIT - 10.0)
    assert b.state is OPEN
    clock_b.advance(10.0)
    assert b.state is HALF_OPEN


async def test_a_closing_moves_the_other_open_replica_to_half_open(replica: Replica) -> None:
    clock_a, a, _, b = pair()
    await replica(a)
    await replica(b)
    trip(a)
    await eventually(lambda: b.state is OPEN)
    clock_a.advance(WAIT)
    calls(a, "SSS")
    assert a.state is CLOSED
    await eventually(lambda: b.state is HALF_OPEN)  # B's own clock has not moved
    # B probes with its own trials; its closing leaves the already closed A alone.
    assert [b.try_acquire() for _ in range(4)] == [True, True, True, False]
    for _ in range(3):
        b.record(success=True, duration=0.1)
    assert b.state is CLOSED
    await asyncio.sleep(1.0)
    assert a.state is CLOSED
    assert a.transitions == {
        ("closed", "open"): 1,
        ("open", "half_open"): 1,
        ("half_open", "closed"): 1,
    }


async def test_a_failed_probe_on_the_other_replica_reopens_both(replica: Replica) -> None:
    clock_a, a, _, b = pair()
    await replica(a)
    await replica(b)
    trip(a)
    await eventually(lambda: b.state is OPEN)
    clock_a.advance(WAIT)
    calls(a, "SSS")
    await eventually(lambda: b.state is HALF_OPEN)
    calls(b, "FFS")
    assert b.state is OPEN
    await eventually(lambda: a.state is OPEN)
    assert not a.try_acquire()


async def test_messages_alone_propagate_an_opening(replica: Replica) -> None:
    _, a, _, b = pair()
    await replica(a)
    await replica(b, poll_seconds=60.0)  # B's first poll happened at start, the next is far off
    trip(a)
    await eventually(lambda: b.state is OPEN)


async def test_the_poll_applies_an_opening_whose_message_was_missed(replica: Replica) -> None:
    _, a, _, b = pair()
    shared_a = await replica(a)
    trip(a)
    await eventually(lambda: shared_a.counts()[("publish",)] == 1)
    await replica(b)  # subscribed after the message went out
    await eventually(lambda: b.state is OPEN)


async def test_the_poll_applies_a_closing_whose_message_was_missed(replica: Replica) -> None:
    clock_a, a, _, b = pair()
    shared_a = await replica(a)
    shared_b = await replica(b)
    trip(a)
    await eventually(lambda: b.state is OPEN)
    await shared_b.close()  # B hears nothing for a while
    clock_a.advance(WAIT)
    calls(a, "SSS")
    await eventually(lambda: shared_a.counts()[("publish",)] == 2)
    assert b.state is OPEN
    await replica(b)
    await eventually(lambda: b.state is HALF_OPEN)


async def test_without_redis_both_replicas_keep_working_locally(
    replica: Replica, redis_process: RedisProcess
) -> None:
    clock_a, a, clock_b, b = pair()
    shared_a = await replica(a, url=redis_process.url)
    shared_b = await replica(b, url=redis_process.url)
    trip(a)
    await eventually(lambda: b.state is OPEN)
    redis_process.kill()

    clock_a.advance(WAIT)
    calls(a, "SSS")  # A closes; its notice cannot go out
    await eventually(lambda: shared_a.counts()[("publish_error",)] >= 1, timeout=10.0)
    assert a.state is CLOSED
    clock_b.advance(WAIT)
    calls(b, "FFF")  # B reopens on its own trials; its notice cannot go out either
    await eventually(lambda: shared_b.counts()[("publish_error",)] >= 1, timeout=10.0)
    assert not b.try_acquire()
    trip(a)
    clock_a.advance(WAIT)
    assert a.try_acquire()
    for shared in (shared_a, shared_b):
        await eventually(lambda shared=shared: shared.counts()[("poll_error",)] >= 1, timeout=10.0)
    assert a.state is HALF_OPEN  # nothing from the dead Redis changed either breaker
    assert b.state is OPEN
