"""Process/runtime collectors and the event-loop lag monitor on an app's own registry."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from dtecho.observability.exposition import render_metrics
from dtecho.observability.runtime import EventLoopLagMonitor, register_runtime_collectors


def families(registry: CollectorRegistry) -> dict[str, list]:
    body, _ = render_metrics(registry, None)
    return {f.name: f.samples for f in text_string_to_metric_families(body.decode())}


def test_runtime_collectors_report_this_process() -> None:
    registry = CollectorRegistry()
    register_runtime_collectors(registry)
    found = families(registry)
    assert {"python_info", "python_gc_collections"} <= set(found)
    if sys.platform.startswith("linux"):  # the process collector reads /proc
        assert found["process_resident_memory_bytes"][0].value > 0
        assert found["process_open_fds"][0].value > 0


def test_two_registries_each_get_their_own_collectors() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    register_runtime_collectors(first)
    register_runtime_collectors(second)  # no duplicate-timeseries error across registries
    assert "python_info" in families(second)


def lag_count(registry: CollectorRegistry) -> float:
    samples = families(registry)["dtecho_event_loop_lag_seconds"]
    return next(s.value for s in samples if s.name.endswith("_count"))


def lag_over(registry: CollectorRegistry, bound: str) -> float:
    samples = families(registry)["dtecho_event_loop_lag_seconds"]
    within = next(
        s.value for s in samples if s.name.endswith("_bucket") and s.labels["le"] == bound
    )
    return lag_count(registry) - within


async def test_a_blocked_loop_shows_as_lag() -> None:
    registry = CollectorRegistry()
    monitor = EventLoopLagMonitor(registry, interval=0.01)
    await monitor.start()
    await monitor.start()  # idempotent
    assert monitor.running
    while lag_count(registry) < 1:
        await asyncio.sleep(0.01)
    time.sleep(0.3)  # block the loop: the sleeping monitor wakes at least 0.29 s late
    before = lag_count(registry)
    while lag_count(registry) == before:
        await asyncio.sleep(0.01)
    assert lag_over(registry, "0.25") >= 1
    await monitor.stop()
    assert not monitor.running
    stopped_at = lag_count(registry)
    await asyncio.sleep(0.05)
    assert lag_count(registry) == stopped_at


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="interval"):
        EventLoopLagMonitor(CollectorRegistry(), interval=0)
