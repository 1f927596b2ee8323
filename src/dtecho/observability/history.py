"""The last hour of the server's own metrics, in memory, for the live status page.

A :class:`MetricsHistory` reads the app's Prometheus registry every ``interval`` seconds and
keeps the cumulative values it needs in a ring buffer covering ``span`` seconds. Rates, latency
percentiles and ratios are computed from the differences between neighbouring samples, the
way Prometheus's ``rate`` and ``histogram_quantile`` compute them from scraped series, so the
page and a Prometheus dashboard over the same process agree.

What is sampled (API traffic: routes under ``/v1/``, so that the status page polling itself
does not show up as load):

- requests and server errors (5xx) from ``dtecho_http_requests_total``;
- the latency histogram ``dtecho_http_request_duration_seconds``;
- response cache hits and misses from ``dtecho_cache_events_total``;
- prompt and generated tokens from ``dtecho_prompt_tokens_total`` and
  ``dtecho_generation_tokens_total`` (absent series count as zero);
- for each service level objective, its good and total events (see :class:`Objective`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

__all__ = ["MetricsHistory", "Objective", "Sample", "histogram_quantile"]

API_PREFIX = "/v1/"
QUANTILES = (0.5, 0.95, 0.99)


class Objective(Protocol):
    """What the history needs of a service level objective (the ``slo`` settings' entries).

    ``kind`` is ``availability`` (good: answers that are not 5xx) or ``latency`` (good:
    answers within ``threshold_seconds``, a bucket bound of the latency histogram). ``route``
    selects a route template (``/v1/chat/completions``), ``model`` a served model; neither
    means every API route.
    """

    name: str
    kind: str
    objective: float
    route: str | None
    model: str | None
    threshold_seconds: float | None


@dataclass(frozen=True)
class Sample:
    """Cumulative values at one instant (seconds since the epoch)."""

    at: float
    requests: float
    errors: float
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), ascending
    cache_hits: float
    cache_misses: float
    tokens: float
    slo: tuple[tuple[float, float], ...]  # per objective: (good, total)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a cumulative histogram, as Prometheus's ``histogram_quantile``.

    Linear interpolation inside the bucket holding the rank; the lowest bucket starts at 0;
    a rank in the ``+Inf`` bucket answers the highest finite bound. None without counts.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass
class _Reading:
    """One pass over the registry, summed the way a sample needs it."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    cache_hits: float = 0.0
    cache_misses: float = 0.0
    tokens: float = 0.0
    # For objectives: per route and per model, totals, 5xx and latency buckets.
    route_requests: dict[str, float] = field(default_factory=dict)
    route_errors: dict[str, float] = field(default_factory=dict)
    route_buckets: dict[str, dict[float, float]] = field(default_factory=dict)
    model_requests: dict[str, float] = field(default_factory=dict)
    model_errors: dict[str, float] = field(default_factory=dict)
    model_buckets: dict[str, dict[float, float]] = field(default_factory=dict)


def _add(table: dict[Any, float], key: Any, value: float) -> None:
    table[key] = table.get(key, 0.0) + value


def _read(registry: CollectorRegistry) -> _Reading:
    reading = _Reading()
    for family in registry.collect():
        name = family.name
        if name == "dtecho_http_requests":
            for s in family.samples:
                if not s.name.endswith("_total"):
                    continue
                route = s.labels.get("route", "")
                server_error = s.labels.get("status", "").startswith("5")
                _add(reading.route_requests, route, s.value)
                if server_error:
                    _add(reading.route_errors, route, s.value)
                if route.startswith(API_PREFIX):
                    reading.requests += s.value
                    if server_error:
                        reading.errors += s.value
        elif name == "dtecho_http_request_duration_seconds":
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    route = s.labels.get("route", "")
                    bound = float(s.labels["le"])
                    _add(reading.route_buckets.setdefault(route, {}), bound, s.value)
                    if route.startswith(API_PREFIX):
                        _add(reading.buckets, bound, s.value)
        elif name == "dtecho_cache_events":
            for s in family.samples:
                if s.name.endswith("_total"):
                    event = s.labels.get("event")
                    if event == "hit":
                        reading.cache_hits += s.value
                    elif event == "miss":
                        reading.cache_misses += s.value
        elif name in ("dtecho_prompt_tokens", "dtecho_generation_tokens"):
            reading.tokens += sum(s.value for s in family.samples if s.name.endswith("_total"))
        elif name == "dtecho_model_requests":
            for s in family.samples:
                if s.name.endswith("_total"):
                    model = s.labels.get("model", "")
                    _add(reading.model_requests, model, s.value)
                    if s.labels.get("status", "").startswith("5"):
                        _add(reading.model_errors, model, s.value)
        elif name == "dtecho_e2e_request_latency_seconds":
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    model = s.labels.get("model", "")
                    bound = float(s.labels["le"])
                    _add(reading.model_buckets.setdefault(model, {}), bound, s.value)
    return reading


def _sum_over(table: dict[str, float], key: str | None) -> float:
    if key is not None:
        return table.get(key, 0.0)
    return sum(v for k, v in table.items() if k.startswith(API_PREFIX))


def _bucket_at(buckets: dict[float, float], threshold: float) -> tuple[float, float]:
    """(count within ``threshold``, total count) of one cumulative histogram."""
    within = buckets.get(threshold)
    if within is None:  # not a bound: the largest bound below it (the safe side)
        below = [b for b in buckets if b <= threshold]
        within = buckets[max(below)] if below else 0.0
    return within, buckets.get(math.inf, 0.0)


def _good_total(reading: _Reading, objective: Objective) -> tuple[float, float]:
    if objective.kind == "latency":
        threshold = objective.threshold_seconds or 0.0
        if objective.model is not None:
            return _bucket_at(reading.model_buckets.get(objective.model, {}), threshold)
        if objective.route is not None:
            return _bucket_at(reading.route_buckets.get(objective.route, {}), threshold)
        return _bucket_at(reading.buckets, threshold)
    if objective.model is not None:
        total = reading.model_requests.get(objective.model, 0.0)
        return total - reading.model_errors.get(objective.model, 0.0), total
    total = _sum_over(reading.route_requests, objective.route)
    return total - _sum_over(reading.route_errors, objective.route), total


class MetricsHistory:
    """A ring buffer of samples of the app's registry, and what the status page shows of it.

    Parameters
    ----------
    registry:
        The app's Prometheus registry (read only).
    objectives:
        Service level objectives (:class:`Objective`), in the order they are reported.
    interval:
        Seconds between samples (> 0).
    span:
        Seconds of history kept (≥ interval); the buffer holds ``span / interval + 1`` samples.
    clock:
        Wall-clock seconds; injectable for tests.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        objectives: Iterable[Objective] = (),
        *,
        interval: float = 10.0,
        span: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < interval <= span:
            raise ValueError(f"need 0 < interval <= span, got {interval!r} and {span!r}")
        self.registry = registry
        self.objectives = list(objectives)
        self.interval = interval
        self.span = span
        self._clock = clock
        self._samples: deque[Sample] = deque(maxlen=int(span / interval) + 1)
        self._first: Sample | None = None  # since start: the error budget's denominator
        self._task: asyncio.Task[None] | None = None

    # -- sampling -----------------------------------------------------------------------------

    def sample(self) -> Sample:
        """Read the registry now and append the sample (also called by the sampling task)."""
        reading = _read(self.registry)
        bounds = sorted(reading.buckets)
        sample = Sample(
            at=self._clock(),
            requests=reading.requests,
            errors=reading.errors,
            buckets=tuple((b, reading.buckets[b]) for b in bounds),
            cache_hits=reading.cache_hits,
            cache_misses=reading.cache_misses,
            tokens=reading.tokens,
            slo=tuple(_good_total(reading, o) for o in self.objectives),
        )
        if self._first is None:
            self._first = sample
        self._samples.append(sample)
        return sample

    async def start(self) -> None:
        """Take a first sample and keep sampling every ``interval`` until :meth:`stop`."""
        if self._task is None:
            self.sample()
            self._task = asyncio.create_task(self._run(), name="dtecho-metrics-history")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sample()

    # -- reading ------------------------------------------------------------------------------

    def samples(self) -> list[Sample]:
        """The samples held, oldest first."""
        return list(self._samples)

    def series(self) -> dict[str, Any]:
        """Per interval between samples: its end time (``at``; the first starts at ``since``)
        and the rates over it.

        ``request_rate`` and ``error_rate`` in requests/s, ``latency_ms`` p50/p95/p99 of the
        requests that finished in the interval (None where none did), ``cache_hit_ratio``
        (None without lookups) and ``tokens_per_second``.
        """
        samples = list(self._samples)
        out: dict[str, Any] = {
            "interval_seconds": self.interval,
            "since": round(samples[0].at, 3) if samples else None,
            "at": [],
            "request_rate": [],
            "error_rate": [],
            "latency_ms": {f"p{round(q * 100)}": [] for q in QUANTILES},
            "cache_hit_ratio": [],
            "tokens_per_second": [],
        }
        for old, new in itertools.pairwise(samples):
            seconds = (new.at - old.at) or self.interval
            out["at"].append(round(new.at, 3))
            out["request_rate"].append(max(0.0, new.requests - old.requests) / seconds)
            out["error_rate"].append(max(0.0, new.errors - old.errors) / seconds)
            previous = dict(old.buckets)
            delta = [(b, max(0.0, c - previous.get(b, 0.0))) for b, c in new.buckets]
            for q in QUANTILES:
                value = histogram_quantile(q, delta)
                out["latency_ms"][f"p{round(q * 100)}"].append(
                    None if value is None else value * 1e3
                )
            hits = new.cache_hits - old.cache_hits
            lookups = hits + new.cache_misses - old.cache_misses
            out["cache_hit_ratio"].append(hits / lookups if lookups > 0 else None)
            out["tokens_per_second"].append(max(0.0, new.tokens - old.tokens) / seconds)
        return out

    def slo_state(self) -> list[dict[str, Any]]:
        """Each objective's state: its SLI and error budget left since start, burn rates.

        The error budget is ``1 - objective`` of the events; *left* is the share of it not
        yet spent by bad events since the process started (negative: overspent). A burn rate
        is the bad share over a window divided by the budget: 1 spends the budget exactly
        over the SLO window; the SRE workbook pages at 14.4 over an hour.
        """
        samples = list(self._samples)
        if not samples or self._first is None:
            return []
        last = samples[-1]
        states = []
        for index, objective in enumerate(self.objectives):
            budget = 1.0 - objective.objective
            good, total = last.slo[index]
            first_good, first_total = self._first.slo[index]
            good, total = good - first_good, total - first_total
            bad_share = (total - good) / total if total > 0 else 0.0
            state: dict[str, Any] = {
                "name": objective.name,
                "kind": objective.kind,
                "objective": objective.objective,
                "events": total,
                "sli": good / total if total > 0 else None,
                "error_budget_left": 1.0 - bad_share / budget if budget > 0 else None,
            }
            for label, window in (("burn_rate_5m", 300.0), ("burn_rate_1h", 3600.0)):
                state[label] = self._burn_rate(samples, index, window, budget)
            states.append(state)
        return states

    @staticmethod
    def _burn_rate(samples: list[Sample], index: int, window: float, budget: float) -> float | None:
        last = samples[-1]
        start = samples[0]
        for sample in samples:  # the oldest sample within the window
            if last.at - sample.at <= window + 1e-6:
                start = sample
                break
        good = last.slo[index][0] - start.slo[index][0]
        total = last.slo[index][1] - start.slo[index][1]
        if total <= 0 or budget <= 0:
            return None
        return ((total - good) / total) / budget
