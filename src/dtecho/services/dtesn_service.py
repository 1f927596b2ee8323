"""The DTESN operations behind ``/v1/dtesn/process``, ``/batch`` and ``/stream``.

Validated requests in, JSON-ready results (or stream events) out; the numerical work runs in
worker threads so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from dtecho.batching.micro import BatchObserver, batcher_from_settings, usable_cpus
from dtecho.config import BatchingSettings, DtesnSettings, WorkLimits
from dtecho.dtesn import trees
from dtecho.errors import DeadlineExceeded, DtechoError, InvalidRequest, PayloadTooLarge
from dtecho.observability import semconv
from dtecho.observability import tracing as tr
from dtecho.protocol.dtesn import ProcessOptions, ProcessRequest, validate_input
from dtecho.services import deadline
from dtecho.services.budget import WorkBudget, batch_cost, process_cost
from dtecho.services.dtesn_processing import (
    NetworkConfig,
    ProcessCancelled,
    Processor,
    ProcessResult,
    parse_input,
)

__all__ = ["DtesnService", "membranes_for_depth"]


def membranes_for_depth(depth: int) -> int:
    """Membranes of a depth-``depth`` structure: Σ A000081(k) for k ≤ depth."""
    return sum(trees.count(k) for k in range(1, depth + 1))


def _deadline_exceeded() -> DeadlineExceeded:
    return DeadlineExceeded(
        "The request ran past its deadline (work_limits) while it was being processed."
    )


def _error_dict(exc: DtechoError) -> dict[str, Any]:
    return {"message": exc.message, "type": exc.error_type, "param": exc.param, "code": exc.code}


class DtesnService:
    """DTESN processing with request limits, outcome counters and cancellation."""

    def __init__(
        self,
        settings: DtesnSettings,
        batching: BatchingSettings | None = None,
        observer: BatchObserver | None = None,
        limits: WorkLimits | None = None,
    ) -> None:
        self.settings = settings
        limits = limits or WorkLimits()
        self.budget = WorkBudget(limits.max_sync_cost, limits.max_background_cost)
        self.processor = Processor(settings.network_cache_size)
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.batcher = batcher_from_settings(self._run_batch, batching, observer)
        self.batch_size = batching.max_size if self.batcher is not None and batching else 1

    def _run_batch(self, key: tuple[NetworkConfig, int], items: list[Any]) -> list[ProcessResult]:
        config, points = key
        return self.processor.process_many(config, items, trajectory_points=points)

    async def _compute(self, config: NetworkConfig, data: Any, points: int) -> ProcessResult:
        """One input: through the micro-batcher when enabled (requests of the same
        configuration arriving together share one vectorised run), else on its own."""
        if self.batcher is not None:
            return await self.batcher.submit((config, points), data)
        try:
            return await asyncio.to_thread(
                self.processor.process,
                config,
                data,
                trajectory_points=points,
                cancelled=deadline.passed,  # past the request's deadline: stop at a chunk
            )
        except ProcessCancelled:
            raise _deadline_exceeded() from None

    def counts(self) -> dict[tuple[str, str], int]:
        """``{(operation, outcome): n}`` for the metrics endpoint."""
        return dict(self.outcomes)

    def check_cost(self, config: NetworkConfig, steps: int, *, stream: bool = False) -> None:
        """Refuse (:class:`~dtecho.errors.RequestTooCostly`) a run over its budget: the
        synchronous one, or for a stream (progress as it runs, stopped by a disconnect) the
        background one."""
        cost = process_cost(
            steps,
            esn_size=config.esn_size,
            membrane_depth=config.membrane_depth,
            integrator=config.integrator,
            built=self.processor.is_built(config),
        )
        self.budget.check(
            cost,
            background=stream,
            alternative="POST /v1/dtesn/stream runs it with progress events, within "
            f"work_limits.max_background_cost ({self.budget.max_background_cost:g}).",
        )

    def prepare(
        self, value: Any, options: ProcessOptions, param: str = "input"
    ) -> tuple[NetworkConfig, Any]:
        """Check limits and build the network configuration for one input."""
        needed = membranes_for_depth(options.membrane_depth)
        if options.esn_size < needed:
            raise InvalidRequest(
                f"esn_size {options.esn_size} is too small for membrane_depth "
                f"{options.membrane_depth}, which has {needed} membranes; use at least {needed}.",
                param="esn_size",
            )
        data, width = parse_input(value)
        if len(data) > self.settings.max_input_steps:
            raise PayloadTooLarge(
                f"The input has {len(data)} steps; the limit is {self.settings.max_input_steps}.",
                param=param,
            )
        config = NetworkConfig(
            membrane_depth=options.membrane_depth,
            esn_size=options.esn_size,
            integrator=options.integrator,
            seed=options.seed,
            input_dim=width,
        )
        return config, data

    async def process(self, request: ProcessRequest) -> dict[str, Any]:
        """Run one input; the result of :meth:`ProcessResult.as_dict`."""
        result = await self._process(request)
        return result.as_dict(request.include_states)

    async def process_json(self, request: ProcessRequest) -> bytes:
        """Run one input; :meth:`process`'s result as the routes' JSON bytes."""
        result = await self._process(request)
        return result.to_json(request.include_states)

    async def _process(self, request: ProcessRequest) -> ProcessResult:
        config, data = self.prepare(request.input, request)
        self.check_cost(config, len(data))
        attributes = {
            semconv.DTESN_UNITS: request.esn_size,
            semconv.DTESN_INTEGRATOR: request.integrator,
        }
        with tr.span(semconv.SPAN_DTESN, attributes) as span:
            result = await self._compute(config, data, request.trajectory_points)
            if span.is_recording():
                span.set_attribute(semconv.DTESN_STEPS, result.steps)
                span.set_attribute(semconv.DTESN_MEMBRANES, len(result.norms))
        self.outcomes["process", "completed"] += 1
        return result

    async def batch(self, inputs: list[Any], options: ProcessOptions) -> dict[str, Any]:
        """Run every input with one configuration; a bad item fails alone, in place.

        Valid items of the same input kind run as vectorised batches of up to the batching
        size (one item at a time when batching is disabled), as many at once as there are
        usable CPUs."""
        data: list[dict[str, Any] | None] = [None] * len(inputs)
        groups: dict[NetworkConfig, list[tuple[int, Any]]] = {}
        for index, value in enumerate(inputs):
            param = f"inputs[{index}]"
            try:
                try:
                    checked = validate_input(value)
                except ValueError as exc:
                    message = f"Invalid value for '{param}': {exc}."
                    raise InvalidRequest(message, param=param) from None
                config, prepared = self.prepare(checked, options, param)
            except DtechoError as exc:
                data[index] = {"index": index, "error": _error_dict(exc)}
                continue
            groups.setdefault(config, []).append((index, prepared))
        for config, members in groups.items():  # one network per input kind, all items' steps
            cost = batch_cost(
                (len(prepared) for _, prepared in members),
                esn_size=config.esn_size,
                membrane_depth=config.membrane_depth,
                integrator=config.integrator,
                built=self.processor.is_built(config),
            )
            self.budget.check(cost)
        points = options.trajectory_points
        chunks = [
            (config, members[start : start + self.batch_size])
            for config, members in groups.items()
            for start in range(0, len(members), self.batch_size)
        ]
        lanes = asyncio.Semaphore(usable_cpus())  # a chunk per core at a time

        async def run(config: NetworkConfig, chunk: list[tuple[int, Any]]) -> None:
            async with lanes:
                try:
                    results = await asyncio.to_thread(
                        self.processor.process_many,
                        config,
                        [prepared for _, prepared in chunk],
                        trajectory_points=points,
                        cancelled=deadline.passed,
                    )
                except ProcessCancelled:
                    raise _deadline_exceeded() from None
            for (index, _), result in zip(chunk, results, strict=True):
                data[index] = {"index": index, "result": result.as_dict(options.include_states)}

        await asyncio.gather(*(run(config, chunk) for config, chunk in chunks))
        failed = sum("error" in item for item in data if item is not None)
        self.outcomes["batch", "completed"] += 1
        return {"object": "list", "data": data, "succeeded": len(data) - failed, "failed": failed}

    async def stream(self, request: ProcessRequest) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Validate now, then return an iterator of (event, payload): ``progress`` as chunks
        finish, ``heartbeat`` while a chunk takes long, then ``result`` or ``error``.
        Closing the iterator stops the computation at the next chunk."""
        config, data = self.prepare(request.input, request)
        self.check_cost(config, len(data), stream=True)
        return self._events(config, data, request)

    async def _events(
        self, config: NetworkConfig, data: Any, request: ProcessRequest
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        stop = threading.Event()

        def progress(done: int, total: int) -> None:
            payload = {"steps_done": done, "steps_total": total}
            loop.call_soon_threadsafe(events.put_nowait, ("progress", payload))

        def count(outcome: str) -> None:  # counters are only touched on the loop's thread
            self.outcomes["stream", outcome] += 1

        def work() -> None:
            try:
                result: ProcessResult = self.processor.process(
                    config,
                    data,
                    trajectory_points=request.trajectory_points,
                    progress=progress,
                    cancelled=stop.is_set,
                )
                event, outcome = ("result", result.as_dict(request.include_states)), "completed"
            except ProcessCancelled:
                event, outcome = ("cancelled", {}), "cancelled"
            except Exception as exc:  # reported to the client as an error event
                message = f"Processing failed: {type(exc).__name__}."
                event, outcome = ("error", {"message": message}), "failed"
            loop.call_soon_threadsafe(count, outcome)
            loop.call_soon_threadsafe(events.put_nowait, event)

        loop.run_in_executor(None, work)
        try:
            while True:
                try:
                    event = await asyncio.wait_for(
                        events.get(), self.settings.stream_heartbeat_seconds
                    )
                except TimeoutError:
                    yield "heartbeat", {}
                    continue
                yield event
                if event[0] in {"result", "error", "cancelled"}:
                    break
        finally:
            stop.set()  # the worker stops at its next chunk if the client went away
