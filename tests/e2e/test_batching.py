"""Micro-batching over real HTTP: batched results equal unbatched ones, the queue is bounded."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import ServerProcess

pytestmark = pytest.mark.e2e


def body(index: int, seed: int = 0) -> dict:
    return {
        "input": f"request {index} " * (5 + index),
        "esn_size": 256,
        "membrane_depth": 3,
        "seed": seed,
        "include_states": True,
        "enable_caching": False,
    }  # fmt: skip  (repeats must be computed, not cache hits)


def without_timing(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "processing_time_ms"}


async def concurrently(server: ServerProcess, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
        return await asyncio.gather(*(client.post("/v1/dtesn/process", json=b) for b in bodies))


def batch_sizes(server: ServerProcess) -> tuple[float, float]:
    """(sum, count) of the dtesn batch-size histogram."""
    text = httpx.get(f"{server.base_url}/metrics").text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("dtecho_dtesn_batch_size_sum", "dtecho_dtesn_batch_size_count"):
                values[sample.name] = sample.value
    return values["dtecho_dtesn_batch_size_sum"], values["dtecho_dtesn_batch_size_count"]


def test_concurrent_requests_are_batched_and_equal_to_sequential(server: ServerProcess) -> None:
    # Two seeds: two incompatible configurations that must never share a batch.
    bodies = [body(i, seed=i % 2) for i in range(24)]
    sequential = [httpx.post(f"{server.base_url}/v1/dtesn/process", json=b).json() for b in bodies]
    before_sum, before_count = batch_sizes(server)
    responses = asyncio.run(concurrently(server, bodies))
    after_sum, after_count = batch_sizes(server)
    assert all(r.status_code == 200 for r in responses)
    for alone, batched in zip(sequential, responses, strict=True):
        assert without_timing(batched.json()) == without_timing(alone)  # bit-identical
    assert after_sum - before_sum == 24
    assert after_count - before_count < 24, "concurrent requests should have shared batches"


def test_batching_off_gives_the_same_numbers(server_factory, server: ServerProcess) -> None:
    unbatched = server_factory(env={"DTECHO_BATCHING_ENABLED": "false"})
    for index in (0, 3):
        on = httpx.post(f"{server.base_url}/v1/dtesn/process", json=body(index)).json()
        off = httpx.post(f"{unbatched.base_url}/v1/dtesn/process", json=body(index)).json()
        assert without_timing(on) == without_timing(off)


def test_queue_overflow_is_503_with_retry_after(server_factory) -> None:
    tight = server_factory(env={"DTECHO_BATCHING_QUEUE_SIZE": "1", "DTECHO_BATCHING_MAX_SIZE": "1"})
    heavy = {"input": "x" * 20_000, "esn_size": 1024, "membrane_depth": 2, "enable_caching": False}
    responses = asyncio.run(concurrently(tight, [heavy] * 12))
    statuses = sorted(r.status_code for r in responses)
    assert 200 in statuses and 503 in statuses
    assert set(statuses) == {200, 503}
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["retry-after"].isdigit()
    assert rejected.json()["error"]["code"] == "overloaded"
