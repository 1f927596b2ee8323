"""Prometheus metrics for the HTTP layer.

Each app owns its own :class:`~prometheus_client.CollectorRegistry`, so several apps in one
process (tests, embedded use) never share or clash on counters. With ``--workers N`` every
worker process reports its own series; scrape each worker or run one worker per replica.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from dtecho.observability.buckets import LATENCY_BUCKETS

__all__ = ["CONTENT_TYPE_LATEST", "LATENCY_BUCKETS", "HttpMetrics"]


class HttpMetrics:
    """Request counters, a latency histogram and an in-flight gauge, labelled by route template."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "dtecho_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "dtecho_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template and method.",
            ("route", "method"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "dtecho_http_requests_in_flight",
            "Requests being handled right now.",
            registry=self.registry,
        )
        # The labelled children by (route, method, status): ``labels()`` validates, locks and
        # looks the child up on every call, several microseconds per request; the children
        # live as long as their metric (nothing here removes one), so they can be kept.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method),
            )
        children[0].inc()
        children[1].observe(seconds)

    def watch_counters(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        source: Callable[[], Mapping[tuple[str, ...], int]],
    ) -> None:
        """Export counters that a component keeps as plain integers, read at scrape time.

        ``source`` returns ``{label values: count}``; the metric is ``<name>_total``.
        """
        self.registry.register(_ScrapedCounters(name, documentation, labels, source))

    def watch_gauges(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        source: Callable[[], Mapping[tuple[str, ...], float]],
    ) -> None:
        """Export labelled gauges a component keeps as plain numbers, read at scrape time."""
        self.registry.register(_ScrapedGauges(name, documentation, labels, source))

    def watch_gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """Export a gauge whose value ``read()`` gives at scrape time."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return generate_latest(self.registry)


class _ScrapedCounters:
    """A custom collector: components keep plain counters, read only when scraped."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        source: Callable[[], Mapping[tuple[str, ...], int]],
    ) -> None:
        self._name, self._documentation, self._labels = name, documentation, labels
        self._source = source

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for values, count in self._source().items():
            family.add_metric(values, count)
        yield family


class _ScrapedGauges(_ScrapedCounters):
    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self._name, self._documentation, labels=self._labels)
        for values, value in self._source().items():
            family.add_metric(values, value)
        yield family


class BatchMetrics:
    """Batch sizes, run times, queue depth and queue wait of a micro-batcher
    (a ``BatchObserver``)."""

    def __init__(self, registry: CollectorRegistry, operation: str) -> None:
        self.operation = operation
        self.sizes = Histogram(
            f"dtecho_{operation}_batch_size",
            f"Requests per executed {operation} batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=registry,
        )
        self.depth = Gauge(
            f"dtecho_{operation}_batch_queue_depth",
            f"{operation} requests waiting for a batch.",
            registry=registry,
        )
        self.wait = Histogram(
            f"dtecho_{operation}_batch_queue_wait_seconds",
            f"Time {operation} requests waited before their batch started.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.seconds = Histogram(
            f"dtecho_{operation}_batch_seconds",
            f"Run time of executed {operation} batches.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def batch(self, key: object, size: int, seconds: float) -> None:
        self.sizes.observe(size)
        self.seconds.observe(seconds)

    def queued(self, depth: int) -> None:
        self.depth.set(depth)

    def waited(self, seconds: float) -> None:
        self.wait.observe(seconds)
