"""One served model over several deployments: choose, retry, hedge, fall back.

A :class:`RoutedModel` is a :class:`~dtecho.engines.base.RelayEngine`: the routes relay to it as
they relay to a single upstream. For each request it

1. orders the deployments that may take a call (breaker not open, under their rpm cap) by the
   model's strategy;
2. sends the first attempt; with hedging on, when it has not answered (for streams: sent its
   first chunk) after the hedge delay, sends a second attempt to the next deployment — the
   first good answer wins and the other is cancelled, closing its connection;
3. on a retryable failure, waits (full-jitter backoff, or the upstream's ``retry-after``) and
   tries the next deployment, within the retry budget; a stream is never retried once its
   first byte went to the client;
4. when every attempt failed, tries the fallback chain for the failure's class.

Answers carry ``x-dtecho-deployment`` naming the deployment (or fallback model) that answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog

from dtecho.config import DeploymentSpec, OpenAIModelSpec, RoutingSettings
from dtecho.engines.base import RelayEngine, RelayResponse
from dtecho.engines.openai_upstream import OpenAIUpstreamEngine
from dtecho.errors import DtechoError, EngineUnavailable, UpstreamError
from dtecho.router.backoff import next_delay
from dtecho.router.breaker import BreakerState, CircuitBreaker
from dtecho.router.budget import RatioBudget
from dtecho.router.classify import FailureClass, classify, is_retryable
from dtecho.router.latency import LatencyTracker
from dtecho.router.strategies import Candidate, order
from dtecho.router.tracing import (
    attempt_span,
    end_attempt_span,
    event,
    record_answer,
    span_current,
)

__all__ = ["Deployment", "RoutedModel"]

_log = structlog.get_logger("dtecho.router")
DEPLOYMENT_HEADER = "x-dtecho-deployment"


class Deployment:
    """One upstream of a model with its breaker, latency, load and rpm cap."""

    def __init__(self, model: str, spec: DeploymentSpec, routing: RoutingSettings) -> None:
        self.spec = spec
        self.engine = OpenAIUpstreamEngine(spec, model)
        self.name = self.engine.name
        self.breaker = CircuitBreaker(self.name, routing.breaker, on_transition=_log_transition)
        self.latency = LatencyTracker()
        self.in_flight = 0
        self._minute: deque[float] = deque()  # admission times, for the rpm cap
        self.counts: dict[str, int] = {}

    def count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    def under_cap(self, now: float) -> bool:
        """Whether the deployment's own rpm leaves room for one more request."""
        if self.spec.rpm is None:
            return True
        minute = self._minute
        while minute and minute[0] <= now - 60.0:
            minute.popleft()
        return len(minute) < self.spec.rpm

    def admitted(self, now: float) -> None:
        if self.spec.rpm is not None:
            self._minute.append(now)

    def candidate(self) -> Candidate:
        return Candidate(self.name, self.spec.weight, self.in_flight, self.latency)

    def snapshot(self) -> dict[str, Any]:
        """What ``/admin/upstreams`` shows."""
        p95 = self.latency.p95()
        return {
            "name": self.name,
            "base_url": self.spec.base_url,
            "upstream_model": self.engine.upstream_model,
            "weight": self.spec.weight,
            "tags": list(self.spec.tags),
            "in_flight": self.in_flight,
            "latency_ewma_ms": None if self.latency.ewma is None else self.latency.ewma * 1e3,
            "latency_p95_ms": None if p95 is None else p95 * 1e3,
            "breaker": self.breaker.snapshot(),
            "counts": dict(self.counts),
        }


def _log_transition(name: str, old: BreakerState, new: BreakerState) -> None:
    _log.warning("breaker_transition", deployment=name, old=old.value, new=new.value)


class _Attempt:
    """One call to one deployment; keeps the books (in flight, breaker, latency) exactly once.

    Latency is time to the first chunk for streams and the whole answer otherwise, observed by
    the deployment's tracker (routing) and the model's pooled one (the adaptive hedge delay).
    An attempt cancelled before it answered (the loser of a hedge, a client that went away)
    is censored: its elapsed time is only a lower bound. Dropping it would bias the tail low
    — the slow attempts are exactly the ones hedges cancel — so it is observed when it is
    already past the tracker's p95, where only its rank, not its exact value, matters.
    """

    __slots__ = ("deployment", "done", "measured", "pooled", "span", "started")

    def __init__(self, deployment: Deployment, pooled: LatencyTracker, span: Any) -> None:
        self.deployment = deployment
        self.pooled = pooled
        self.span = span  # the attempt's CLIENT span (a non-recording one when untraced)
        self.started = time.monotonic()
        self.done = False
        self.measured = False
        deployment.in_flight += 1

    def _measure(self, elapsed: float) -> None:
        self.measured = True
        self.deployment.latency.observe(elapsed)
        self.pooled.observe(elapsed)

    def first_chunk(self) -> None:
        """A stream's first chunk arrived: its time to first token is the latency."""
        if not self.measured:
            self._measure(time.monotonic() - self.started)

    def succeeded(self) -> None:
        if not self.done:
            self.done = True
            elapsed = time.monotonic() - self.started
            self.deployment.in_flight -= 1
            self.deployment.breaker.record(success=True, duration=elapsed)
            if not self.measured:
                self._measure(elapsed)
            self.deployment.count("success")
            end_attempt_span(self.span)

    def failed(self, error: DtechoError) -> None:
        if not self.done:
            self.done = True
            self.deployment.in_flight -= 1
            # A 4xx that is the request's own fault says nothing about the deployment's health.
            healthy = (
                error.status_code < 500
                and error.status_code != 429
                and error.code
                not in {
                    "upstream_unreachable",
                    "upstream_timeout",
                }
            )
            self.deployment.breaker.record(
                success=healthy, duration=time.monotonic() - self.started
            )
            self.deployment.count("failure" if not healthy else "client_error")
            end_attempt_span(self.span, error)

    def abandoned(self) -> None:
        if not self.done:
            self.done = True
            self.deployment.in_flight -= 1
            self.deployment.breaker.release()
            self.deployment.count("cancelled")
            end_attempt_span(self.span, asyncio.CancelledError())
            if not self.measured:
                elapsed = time.monotonic() - self.started
                for tracker in (self.deployment.latency, self.pooled):
                    tail = tracker.p95()
                    if tail is not None and elapsed > tail:
                        tracker.observe(elapsed)


def _named(body: bytes, model: str) -> bytes:
    """A JSON answer whose ``model`` names the served model that answered (a fallback)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict):
        return body
    data["model"] = model
    return json.dumps(data).encode()


async def _first_chunk(stream: AsyncIterator[bytes]) -> bytes:
    async for chunk in stream:
        if chunk:
            return chunk
    return b""


class RoutedModel:
    """A served model relayed to one or more deployments."""

    kind = "openai"

    def __init__(
        self,
        spec: OpenAIModelSpec,
        *,
        resolve: Callable[[str], RelayEngine | None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self.routing = spec.routing
        self.deployments = [Deployment(spec.name, d, spec.routing) for d in spec.deployment_list()]
        self._by_name = {d.name: d for d in self.deployments}
        self._resolve = resolve
        self._rng = rng or random.Random()
        retries = spec.routing.retries
        self.retry_budget = RatioBudget(
            retries.budget_ratio,
            minimum=retries.budget_min_retries,
            window_seconds=retries.budget_window_seconds,
        )
        self.hedge_budget = RatioBudget(spec.routing.hedging.budget_ratio, window_seconds=10.0)
        # The adaptive hedge delay is the p95 of the model's requests, pooled over its
        # deployments (streams by time to first chunk, the rest by total time): "slower than
        # this model's requests usually are". A deployment's own p95 cannot serve: when its
        # slow tail is about 5% of its calls, that p95 lands inside the tail itself and the
        # hedge comes too late to help.
        self.hedge_latency = {False: LatencyTracker(), True: LatencyTracker()}
        self.counts: dict[str, int] = {}
        self._probe: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        for deployment in self.deployments:
            await deployment.engine.start()
        interval = self.routing.health_check_interval_seconds
        if interval is not None and len(self.deployments) > 0:
            self._probe = asyncio.create_task(self._probe_loop(interval), name="dtecho-probes")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        for deployment in self.deployments:
            await deployment.engine.close()

    async def check_ready(self) -> None:
        """Ready while some deployment's pool is open and its breaker is not open."""
        problems = []
        for deployment in self.deployments:
            try:
                await deployment.engine.check_ready()
            except DtechoError as exc:
                problems.append(exc.message)
                continue
            if deployment.breaker.state is not BreakerState.OPEN:
                return
            problems.append(f"deployment {deployment.name}: circuit open")
        raise EngineUnavailable("; ".join(problems) or "no deployments")

    async def _probe_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await asyncio.gather(*(self._probe_one(d) for d in self.deployments))

    async def _probe_one(self, deployment: Deployment) -> None:
        # Failed probes count against the breaker (a dead deployment opens without traffic);
        # a good probe only helps a breaker that is already testing the deployment again.
        started = time.monotonic()
        try:
            await asyncio.wait_for(deployment.engine.list_models(), timeout=5.0)
        except (DtechoError, TimeoutError, ValueError):
            deployment.count("probe_failure")
            if deployment.breaker.try_acquire():
                deployment.breaker.record(success=False, duration=time.monotonic() - started)
            return
        deployment.count("probe_success")
        if deployment.breaker.state is not BreakerState.CLOSED and deployment.breaker.try_acquire():
            deployment.breaker.record(success=True, duration=time.monotonic() - started)

    async def list_models(self) -> list[dict[str, Any]]:
        return await self.deployments[0].engine.list_models()

    def snapshot(self) -> dict[str, Any]:
        """The model's routing state, for ``/admin/upstreams``."""
        return {
            "model": self.name,
            "strategy": self.routing.strategy,
            "deployments": [d.snapshot() for d in self.deployments],
            "retry_budget": self.retry_budget.snapshot(),
            "hedge_budget": self.hedge_budget.snapshot(),
            "hedge_delay_ms": self._hedge_delays_ms(),
            "counts": dict(self.counts),
        }

    def _hedge_delays_ms(self) -> dict[str, float | None] | None:
        hedging = self.routing.hedging
        if not hedging.enabled:
            return None
        delays: dict[str, float | None] = {}
        for stream, kind in ((False, "whole"), (True, "stream")):
            delay = hedging.delay_seconds or self.hedge_latency[stream].p95()
            delays[kind] = None if delay is None else max(delay, hedging.min_delay_seconds) * 1e3
        return delays

    def _count(self, event: str) -> None:
        self.counts[event] = self.counts.get(event, 0) + 1

    # -- relaying -----------------------------------------------------------------------------

    def _ordered(self) -> list[Deployment]:
        now = time.monotonic()
        if len(self.deployments) == 1:  # nothing to order: one breaker and one cap to check
            only = self.deployments[0]
            usable = only.breaker.state is not BreakerState.OPEN and only.under_cap(now)
            return [only] if usable else []
        open_ = [d for d in self.deployments if d.breaker.state is not BreakerState.OPEN]
        usable = [d for d in open_ if d.under_cap(now)]
        if not usable:
            return []
        if len(usable) == 1:
            return usable
        ranked = order(
            self.routing.strategy,
            [d.candidate() for d in usable],
            rng=self._rng,
            exploration=self.routing.exploration,
        )
        return [self._by_name[c.name] for c in ranked]

    async def relay(self, endpoint: str, body: dict[str, Any], *, stream: bool) -> RelayResponse:
        """Relay ``body`` through the deployments (and fallbacks) until one answers."""
        self.retry_budget.record_request()
        self.hedge_budget.record_request()
        try:
            return await self._relay_deployments(endpoint, body, stream)
        except DtechoError as error:
            answer = await self._fallback(endpoint, body, stream, classify(error))
            if answer is None:
                raise
            return answer

    async def _relay_deployments(
        self, endpoint: str, body: dict[str, Any], stream: bool
    ) -> RelayResponse:
        retries = self.routing.retries
        ranked = self._ordered()
        if not ranked:
            self._count("no_deployment")
            event("all_open")
            raise self._all_open()
        last: DtechoError | None = None
        position = 0
        tried: set[str] = set()
        for attempt in range(1, retries.attempts + 1):
            if attempt > 1:
                if not self.retry_budget.try_spend():
                    self._count("retry_budget_exhausted")
                    event("retry_budget_exhausted", attempt=attempt, error=last)
                    break
                self._count("retry")
                # Another deployment than those that failed this request, while there is one.
                ranked = self._ordered() or ranked
                fresh = [d for d in ranked if d.name not in tried]
                # A retry-after speaks for the deployment that sent it: with an untried one at
                # hand, only the (short) backoff is waited.
                headers = last.headers if last is not None and not fresh else None
                delay = next_delay(attempt - 1, retries, headers, rng=self._rng)
                event("retry", attempt=attempt, error=last, delay=delay)
                if delay:
                    await asyncio.sleep(delay)
                ranked, position = (fresh, 0) if fresh else (ranked, position)
            deployment, position = self._next(ranked, position)
            if deployment is not None:
                tried.add(deployment.name)
            if deployment is None:
                last = last or self._all_open()
                break
            try:
                return await self._attempt_hedged(
                    deployment, ranked, position, endpoint, body, stream, attempt
                )
            except DtechoError as error:
                last = error
                if not is_retryable(error, retries):
                    break
        assert last is not None
        raise last

    def _next(self, ranked: list[Deployment], position: int) -> tuple[Deployment | None, int]:
        """The next deployment (cycling) whose breaker admits a call, and where to go on."""
        for offset in range(len(ranked)):
            deployment = ranked[(position + offset) % len(ranked)]
            if deployment.breaker.try_acquire():
                deployment.admitted(time.monotonic())
                return deployment, (position + offset + 1) % len(ranked)
        return None, position

    def _all_open(self) -> DtechoError:
        error = UpstreamError(
            f"Every deployment of model '{self.name}' is unavailable (circuit open or at "
            "capacity).",
            status_code=503,
            code="breaker_open",
        )
        wait = self.routing.breaker.wait_duration_open_seconds
        error.headers["retry-after"] = str(max(1, round(wait)))
        return error

    async def _attempt_hedged(
        self,
        deployment: Deployment,
        ranked: list[Deployment],
        position: int,
        endpoint: str,
        body: dict[str, Any],
        stream: bool,
        number: int = 1,
    ) -> RelayResponse:
        hedging = self.routing.hedging
        # Without a hedge the attempt runs in this task: a task of its own would cost its
        # creation and an extra trip through the event loop on every request.
        # A lone usable deployment is hedged against itself: its slow tail is usually one
        # request's bad luck, not the deployment's state.
        if not hedging.enabled:
            return await self._attempt(deployment, endpoint, body, stream, number)
        delay = hedging.delay_seconds or self.hedge_latency[stream].p95()
        if delay is None:  # nothing measured yet: no basis for a hedge
            return await self._attempt(deployment, endpoint, body, stream, number)
        first = asyncio.ensure_future(self._attempt(deployment, endpoint, body, stream, number))
        try:
            done, _ = await asyncio.wait({first}, timeout=max(delay, hedging.min_delay_seconds))
        except BaseException:
            # asyncio.wait does not cancel what it waits on: a client that left during the
            # hedge delay must not leave its first attempt running upstream.
            first.cancel()
            raise
        if done:
            return first.result()
        second_deployment, _ = self._next(
            [d for d in ranked if d is not deployment] or ranked, position
        )
        if second_deployment is None or not self.hedge_budget.try_spend():
            if second_deployment is not None:
                second_deployment.breaker.release()
            self._count("hedge_refused")
            event("hedge_refused", delay=delay)
            return await first
        self._count("hedge")
        event("hedge", deployment=second_deployment.name, delay=delay)
        second = asyncio.ensure_future(
            self._attempt(second_deployment, endpoint, body, stream, number, hedge=True)
        )
        pending = {first, second}
        error: BaseException | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None:
                        if task is second:
                            self._count("hedge_won")
                        return task.result()
                    error = task.exception()
            assert error is not None
            raise error
        finally:
            for task in pending:  # the loser: cancelling it closes its upstream connection
                task.cancel()
                self._count("hedge_cancelled")

    async def _attempt(
        self,
        deployment: Deployment,
        endpoint: str,
        body: dict[str, Any],
        stream: bool,
        number: int = 1,
        *,
        hedge: bool = False,
    ) -> RelayResponse:
        """One call; for streams, returns once the first chunk has arrived (before any byte
        reaches the client), so a failure up to then may still be retried or hedged."""
        span = attempt_span(deployment, endpoint, body, stream, number, hedge)
        attempt = _Attempt(deployment, self.hedge_latency[stream], span)
        try:
            with span_current(span):  # the upstream call carries this span's traceparent
                answer = await deployment.engine.relay(endpoint, body, stream=stream)
            if answer.stream is None:
                record_answer(span, answer.body)
                attempt.succeeded()
                answer.headers[DEPLOYMENT_HEADER] = deployment.name
                return answer
            first = await _first_chunk(answer.stream)
            attempt.first_chunk()
        except asyncio.CancelledError:
            attempt.abandoned()
            raise
        except DtechoError as error:
            attempt.failed(error)
            raise
        answer.stream = self._watched(answer.stream, first, attempt)
        answer.headers[DEPLOYMENT_HEADER] = deployment.name
        return answer

    @staticmethod
    async def _watched(
        stream: AsyncIterator[bytes], first: bytes, attempt: _Attempt
    ) -> AsyncIterator[bytes]:
        """The stream, first chunk included; its end settles the attempt's books."""
        try:
            if first:
                yield first
            async for chunk in stream:
                yield chunk
        except DtechoError as error:
            attempt.failed(error)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            attempt.abandoned()
            raise
        else:
            attempt.succeeded()
        finally:
            attempt.abandoned()  # no-op when already settled
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _fallback(
        self, endpoint: str, body: dict[str, Any], stream: bool, failure: FailureClass
    ) -> RelayResponse | None:
        fallbacks = self.routing.fallbacks
        chain = getattr(fallbacks, failure, None) if failure != "other" else None
        chain = chain or fallbacks.default
        if not chain or self._resolve is None:
            return None
        for model in chain:
            engine = self._resolve(model)
            if engine is None or engine is self:
                continue
            self._count(f"fallback:{failure}")
            event("fallback", model=model, failure=failure)
            try:
                if isinstance(engine, RoutedModel):
                    # Its deployments only, not its own fallbacks: chains never loop.
                    engine.retry_budget.record_request()
                    answer = await engine._relay_deployments(
                        endpoint, {**body, "model": model}, stream
                    )
                else:
                    answer = await engine.relay(endpoint, {**body, "model": model}, stream=stream)
            except DtechoError:
                continue
            answer.headers["x-dtecho-model"] = model
            answer.headers["x-dtecho-fallback-from"] = self.name
            if answer.body is not None:
                answer.body = _named(answer.body, model)
            return answer
        return None

    def bind(self, resolve: Callable[[str], RelayEngine | None]) -> None:
        """Where fallback model names are looked up (the registry, once it is built)."""
        self._resolve = resolve
