"""The micro-batcher's contract: own results, real batching, bounded queue, cancellation."""

from __future__ import annotations

import asyncio
import threading

import pytest

from dtecho.batching.micro import BatchObserver, MicroBatcher
from dtecho.errors import Overloaded


class Recorder(BatchObserver):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def batch(self, key, size, seconds) -> None:
        self.sizes.append(size)


def squares(key, items):
    return [item * item for item in items]


async def test_each_caller_gets_its_own_result() -> None:
    batcher = MicroBatcher(squares, max_batch_size=8)
    results = await asyncio.gather(*(batcher.submit("k", i) for i in range(50)))
    assert results == [i * i for i in range(50)]


async def test_a_lone_request_runs_at_once_as_a_batch_of_one() -> None:
    recorder = Recorder()
    batcher = MicroBatcher(squares, max_wait_ms=1000, observer=recorder)
    assert await asyncio.wait_for(batcher.submit("k", 3), timeout=0.5) == 9
    assert recorder.sizes == [1]


async def test_requests_arriving_during_a_batch_form_the_next_one() -> None:
    gate = threading.Event()
    calls: list[list[int]] = []

    def slow(key, items):
        calls.append(list(items))
        gate.wait(5)
        return list(items)

    batcher = MicroBatcher(slow, max_batch_size=64, max_wait_ms=0)
    first = asyncio.create_task(batcher.submit("k", 0))
    await asyncio.sleep(0.05)  # the first batch is running
    rest = [asyncio.create_task(batcher.submit("k", i)) for i in range(1, 11)]
    await asyncio.sleep(0.05)
    gate.set()
    assert await first == 0
    assert await asyncio.gather(*rest) == list(range(1, 11))
    assert calls[0] == [0]
    assert sum(len(call) for call in calls[1:]) == 10 and len(calls) <= 1 + 10
    assert max(len(call) for call in calls[1:]) > 1, "queued requests should share a batch"


async def test_keys_never_mix() -> None:
    seen: list[tuple[str, list[int]]] = []

    def record(key, items):
        seen.append((key, list(items)))
        return items

    batcher = MicroBatcher(record, max_wait_ms=5)
    await asyncio.gather(*(batcher.submit(("cfg", i % 3), i) for i in range(30)))
    for key, items in seen:
        assert all(item % 3 == key[1] for item in items)


async def test_a_failed_item_fails_alone_and_a_failed_batch_fails_all() -> None:
    def picky(key, items):
        return [ValueError(f"bad {i}") if i == 2 else i for i in items]

    batcher = MicroBatcher(picky, max_wait_ms=5)
    results = await asyncio.gather(
        *(batcher.submit("k", i) for i in range(4)), return_exceptions=True
    )
    assert [type(r).__name__ if isinstance(r, Exception) else r for r in results] == [
        0, 1, "ValueError", 3,
    ]  # fmt: skip

    def broken(key, items):
        raise RuntimeError("kernel failed")

    failing = MicroBatcher(broken)
    with pytest.raises(RuntimeError, match="kernel failed"):
        await failing.submit("k", 1)


async def test_queue_overflow_is_overloaded_with_retry_after() -> None:
    gate = threading.Event()

    def blocked(key, items):
        gate.wait(5)
        return items

    batcher = MicroBatcher(blocked, max_batch_size=1, queue_size=3, max_wait_ms=0)
    running = asyncio.create_task(batcher.submit("k", 0))
    await asyncio.sleep(0.05)
    waiting = [asyncio.create_task(batcher.submit("k", i)) for i in range(1, 4)]
    await asyncio.sleep(0.01)
    assert batcher.depth == 3
    with pytest.raises(Overloaded) as info:
        await batcher.submit("k", 99)
    assert info.value.status_code == 503 and "retry-after" in info.value.headers
    gate.set()
    assert await asyncio.gather(running, *waiting) == [0, 1, 2, 3]


async def test_a_cancelled_caller_is_removed_from_the_queue() -> None:
    gate = threading.Event()
    computed: list[int] = []

    def blocked(key, items):
        gate.wait(5)
        computed.extend(items)
        return items

    batcher = MicroBatcher(blocked, max_batch_size=1, max_wait_ms=0)
    running = asyncio.create_task(batcher.submit("k", 0))
    await asyncio.sleep(0.05)
    doomed = asyncio.create_task(batcher.submit("k", 1))
    kept = asyncio.create_task(batcher.submit("k", 2))
    await asyncio.sleep(0.01)
    doomed.cancel()
    await asyncio.sleep(0.01)
    assert batcher.depth == 1
    gate.set()
    assert await running == 0 and await kept == 2
    assert computed == [0, 2]


async def test_batch_size_adapts_to_the_latency_target() -> None:
    batcher = MicroBatcher(squares, max_batch_size=64, target_latency_ms=1000)
    start = batcher.limit("k")
    for _ in range(5):
        await asyncio.gather(*(batcher.submit("k", i) for i in range(64)))
    assert batcher.limit("k") > start

    def slow(key, items):
        threading.Event().wait(0.02)
        return items

    strict = MicroBatcher(slow, max_batch_size=64, target_latency_ms=1)
    before = strict.limit("k")
    await asyncio.gather(*(strict.submit("k", i) for i in range(8)))
    assert strict.limit("k") < before


async def test_parallel_batches_of_one_key_run_at_once() -> None:
    gate, started = threading.Event(), threading.Semaphore(0)

    def blocking(key, items):
        started.release()
        gate.wait(5)
        return items

    batcher = MicroBatcher(blocking, max_batch_size=4, max_wait_ms=0, parallel=2)
    first = asyncio.create_task(batcher.submit("k", 1))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(batcher.submit("k", 2))  # a second dispatcher, not a wait
    assert await asyncio.to_thread(started.acquire, True, 2)
    assert await asyncio.to_thread(started.acquire, True, 2)
    gate.set()
    assert await asyncio.gather(first, second) == [1, 2]
    with pytest.raises(ValueError):
        MicroBatcher(blocking, parallel=0)
