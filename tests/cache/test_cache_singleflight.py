"""Single-flight: concurrent calls for one key run the work once."""

import asyncio

import pytest

from dtecho.cache.singleflight import SingleFlight


async def test_concurrent_calls_share_one_execution():
    flights = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def work():
        nonlocal calls
        calls += 1
        await release.wait()
        return {"answer": 42}

    tasks = [asyncio.create_task(flights.run("k", work)) for _ in range(20)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert [shared for _, shared in results].count(False) == 1
    assert all(value == {"answer": 42} for value, _ in results)
    assert len(flights) == 0


async def test_different_keys_do_not_share():
    flights = SingleFlight()
    calls = []

    async def work(key):
        calls.append(key)
        await asyncio.sleep(0.01)
        return key

    results = await asyncio.gather(*(flights.run(k, lambda k=k: work(k)) for k in "abab"))
    assert sorted(calls) == ["a", "b"]
    assert [value for value, _ in results] == list("abab")


async def test_an_exception_reaches_every_waiter_and_the_next_call_runs_again():
    flights = SingleFlight()
    calls = 0

    async def failing():
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise ValueError("boom")

    results = await asyncio.gather(
        *(flights.run("k", failing) for _ in range(10)), return_exceptions=True
    )
    assert calls == 1
    assert all(isinstance(r, ValueError) and str(r) == "boom" for r in results)
    with pytest.raises(ValueError):
        await flights.run("k", failing)
    assert calls == 2


async def test_a_cancelled_caller_does_not_cancel_the_work_for_the_others():
    flights = SingleFlight()
    started = asyncio.Event()

    async def work():
        started.set()
        await asyncio.sleep(0.05)
        return "done"

    first = asyncio.create_task(flights.run("k", work))
    await started.wait()
    second = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == ("done", True)
    assert first.cancelled()


async def test_the_work_is_cancelled_when_every_caller_has_gone():
    flights = SingleFlight()
    cancelled = asyncio.Event()

    async def work():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    caller = asyncio.create_task(flights.run("k", work))
    await asyncio.sleep(0.01)
    caller.cancel()
    await asyncio.wait_for(cancelled.wait(), 1)
    assert len(flights) == 0
