"""The status page's in-memory history, fed by a real metrics registry."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from dtecho.observability.history import MetricsHistory, histogram_quantile
from dtecho.observability.metrics import LATENCY_BUCKETS, HttpMetrics


@dataclass
class Objective:
    name: str
    kind: str
    objective: float
    route: str | None = None
    model: str | None = None
    threshold_seconds: float | None = None


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    # 10 in (0, 1], 30 in (1, 2], none above. The median's rank 20 is the 10th of the 30 in
    # (1, 2]: a third of the way in. Rank 4 is 4/10 of the way into (0, 1].
    buckets = [(1.0, 10.0), (2.0, 40.0), (math.inf, 40.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(1 + 1 / 3)
    assert histogram_quantile(0.25, buckets) == pytest.approx(1.0)
    assert histogram_quantile(0.1, buckets) == pytest.approx(0.4)
    assert histogram_quantile(1.0, buckets) == pytest.approx(2.0)
    assert histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None
    # A rank in +Inf answers the highest finite bound, as Prometheus does.
    assert histogram_quantile(0.99, [(1.0, 1.0), (math.inf, 10.0)]) == 1.0


def test_rates_percentiles_and_ratios_come_from_the_differences_between_samples() -> None:
    metrics, clock = HttpMetrics(), Clock()
    history = MetricsHistory(metrics.registry, interval=10.0, span=60.0, clock=clock)
    history.sample()
    latencies = np.random.default_rng(0).uniform(0.01, 0.02, size=200)
    for seconds in latencies:
        metrics.observe("/v1/chat/completions", "POST", 200, float(seconds))
    for _ in range(10):
        metrics.observe("/v1/chat/completions", "POST", 503, 0.001)
        metrics.observe("/status", "GET", 200, 0.001)  # not API traffic
    clock.now += 10.0
    history.sample()
    series = history.series()
    assert series["request_rate"] == [pytest.approx(21.0)]
    assert series["error_rate"] == [pytest.approx(1.0)]
    # Every latency lies in the (10 ms, 25 ms] bucket; 10 fast errors sit in (0.5, 1] ms.
    p50 = series["latency_ms"]["p50"][0]
    assert 10.0 < p50 <= 25.0
    assert series["cache_hit_ratio"] == [None]
    # A quiet interval: zero rates, no percentiles.
    clock.now += 10.0
    history.sample()
    series = history.series()
    assert series["request_rate"][1] == 0.0 and series["latency_ms"]["p99"][1] is None


def test_the_ring_keeps_only_the_span() -> None:
    metrics, clock = HttpMetrics(), Clock()
    history = MetricsHistory(metrics.registry, interval=10.0, span=60.0, clock=clock)
    for _ in range(20):
        history.sample()
        clock.now += 10.0
    assert len(history.samples()) == 7
    assert len(history.series()["at"]) == 6


def test_error_budget_and_burn_rate_follow_their_definitions() -> None:
    metrics, clock = HttpMetrics(), Clock()
    objectives = [
        Objective("chat availability", "availability", 0.99, route="/v1/chat/completions"),
        Objective("chat latency", "latency", 0.9, route="/v1/chat/completions",
                  threshold_seconds=0.1),
    ]  # fmt: skip
    assert 0.1 in LATENCY_BUCKETS
    history = MetricsHistory(metrics.registry, objectives, interval=10.0, clock=clock)
    history.sample()
    # 1000 requests, 5 server errors: the bad share 0.5% is half the 1% budget.
    for i in range(1000):
        status = 500 if i < 5 else 200
        seconds = 0.5 if i < 50 else 0.05  # 5% slower than 100 ms: half the 10% budget
        metrics.observe("/v1/chat/completions", "POST", status, seconds)
    metrics.observe("/v1/embeddings", "POST", 500, 0.01)  # another route: not counted
    clock.now += 10.0
    history.sample()
    availability, latency = history.slo_state()
    assert availability["events"] == 1000
    assert availability["sli"] == pytest.approx(0.995)
    assert availability["error_budget_left"] == pytest.approx(0.5)
    assert availability["burn_rate_5m"] == pytest.approx(0.5)
    assert latency["sli"] == pytest.approx(0.95)
    assert latency["error_budget_left"] == pytest.approx(0.5)
    # Then 100 requests all failing: over the last 5 minutes the bad share is 105/1100.
    for _ in range(100):
        metrics.observe("/v1/chat/completions", "POST", 502, 0.05)
    clock.now += 10.0
    history.sample()
    availability, _ = history.slo_state()
    assert availability["burn_rate_5m"] == pytest.approx((105 / 1100) / 0.01)
    assert availability["error_budget_left"] == pytest.approx(1 - (105 / 1100) / 0.01)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        MetricsHistory(HttpMetrics().registry, interval=0)
