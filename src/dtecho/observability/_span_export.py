"""Getting finished spans off the request path: a bounded batch processor and the OTLP exporters.

Imported only when tracing is on (it loads the OpenTelemetry SDK).

Why our own processor rather than the SDK's ``BatchSpanProcessor``: the SDK's logs a warning
for every span it drops (with a dead collector that is a log line per span, on the request
path), keeps no count of drops unless its internal metrics pipeline is on, and its shutdown
waits up to 30 s per batch still queued. This one has the same shape (a bounded deque, one
daemon thread exporting batches), counts every span that never reached a collector, never
logs on the request path, and bounds shutdown: at its deadline it shuts the exporter down
(which aborts the exporter's retry back-off) and counts what is left as dropped.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["BoundedBatchSpanProcessor", "ExportStats"]

_log = logging.getLogger("dtecho.tracing")


@dataclass(frozen=True)
class ExportStats:
    """Counts of sampled, finished spans since start-up.

    Every span ends up in exactly one of ``exported``, ``dropped_queue_full``,
    ``export_failed`` and ``dropped_at_shutdown``, or is still ``queued`` (or in an export
    under way, ``in_flight``).
    """

    exported: int
    dropped_queue_full: int  # the queue was full when the span ended
    export_failed: int  # in a batch the exporter gave up on (after its retries)
    dropped_at_shutdown: int  # still queued when shutdown's time ran out, or ended after it
    queued: int
    in_flight: int

    @property
    def dropped(self) -> int:
        """Spans that will never reach a collector."""
        return self.dropped_queue_full + self.export_failed + self.dropped_at_shutdown


class BoundedBatchSpanProcessor(SpanProcessor):
    """Queues sampled spans as they end and exports them in batches from one daemon thread.

    ``on_end`` (the request path) is a length check and a deque append; a full queue drops the
    new span and counts it. The thread exports when a batch is full or ``schedule_delay``
    seconds after the last export, whichever comes first.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int,
        max_export_batch_size: int,
        schedule_delay: float,
    ) -> None:
        if max_export_batch_size > max_queue_size:
            raise ValueError("max_export_batch_size must not exceed max_queue_size")
        self._exporter = exporter
        self._max_queue = max_queue_size
        self._batch = max_export_batch_size
        self._delay = schedule_delay
        self._counts_lock = threading.Lock()
        self._exported = self._dropped_full = self._failed = self._dropped_shutdown = 0
        self._in_flight = 0
        self._failure_logged_at = -1e9
        self._start_worker()
        if hasattr(os, "register_at_fork"):
            # A forked child (uvicorn --workers) inherits the deque but not the thread. Weakly:
            # a processor that was shut down and dropped must not be revived by a later fork.
            restart = weakref.WeakMethod(self._start_worker)

            def _after_fork_in_child() -> None:
                method = restart()
                if method is not None and not method.__self__._stopping:
                    method()

            os.register_at_fork(after_in_child=_after_fork_in_child)

    def _start_worker(self) -> None:
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._wake = threading.Event()
        self._flush_done = threading.Condition()
        self._flush_generation = 0  # bumped by force_flush; the worker answers each
        self._flushed_generation = 0
        self._stopping = False
        self._deadline: float | None = None
        self._worker = threading.Thread(target=self._run, name="dtecho-span-export", daemon=True)
        self._worker.start()

    # ----------------------------------------------------------------- the request path

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do when a span starts."""

    def on_end(self, span: ReadableSpan) -> None:
        """Queue ``span`` for export, or count it as dropped when the queue is full."""
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        queue = self._queue
        if self._stopping:
            self._count("_dropped_shutdown", 1)
            return
        if len(queue) >= self._max_queue:
            self._count("_dropped_full", 1)
            return
        queue.append(span)
        if len(queue) >= self._batch and not self._wake.is_set():
            self._wake.set()

    def _count(self, name: str, n: int) -> None:
        with self._counts_lock:
            setattr(self, name, getattr(self, name) + n)

    # ----------------------------------------------------------------- the export thread

    def _run(self) -> None:
        queue = self._queue
        while True:
            self._wake.wait(self._delay)
            self._wake.clear()
            generation = self._flush_generation
            while queue and not self._past_deadline():
                self._export_one_batch(queue)
            if generation != self._flushed_generation:
                with self._flush_done:
                    self._flushed_generation = generation
                    self._flush_done.notify_all()
            if self._stopping and (not queue or self._past_deadline()):
                break
        # Whatever the deadline left behind never reaches a collector.
        left = len(queue)
        queue.clear()
        if left:
            self._count("_dropped_shutdown", left)

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _export_one_batch(self, queue: collections.deque[ReadableSpan]) -> None:
        batch = []
        for _ in range(min(self._batch, len(queue))):
            batch.append(queue.popleft())
        n = len(batch)
        self._in_flight = n
        try:
            ok = self._exporter.export(batch) is SpanExportResult.SUCCESS
        except Exception:  # an exporter bug must not kill the thread
            _log.exception("span export raised")
            ok = False
        self._in_flight = 0
        if ok:
            self._count("_exported", n)
            return
        self._count("_failed", n)
        now = time.monotonic()
        if now - self._failure_logged_at > 60:  # the exporter logs each failure itself too
            self._failure_logged_at = now
            _log.warning("span export failed; %d spans dropped so far", self.stats().dropped)

    # ----------------------------------------------------------------- control

    def stats(self) -> ExportStats:
        """The counts so far (cheap: the metrics endpoint may call it on every scrape)."""
        with self._counts_lock:
            return ExportStats(
                exported=self._exported,
                dropped_queue_full=self._dropped_full,
                export_failed=self._failed,
                dropped_at_shutdown=self._dropped_shutdown,
                queued=len(self._queue),
                in_flight=self._in_flight,
            )

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export everything queued now; ``False`` if that did not finish within the timeout."""
        if self._stopping:
            return False
        with self._flush_done:
            self._flush_generation += 1
            generation = self._flush_generation
            self._wake.set()
            return self._flush_done.wait_for(
                lambda: self._flushed_generation >= generation, timeout_millis / 1000
            )

    def shutdown(self, timeout: float = 5.0) -> None:  # type: ignore[override]
        """Export what is queued for at most ``timeout`` seconds, then stop.

        Returns after about ``timeout`` seconds at most, whatever the collector does: at the
        deadline the exporter is shut down, which aborts its retry back-off, and spans still
        queued are counted in ``dropped_at_shutdown``. Later spans are dropped (and counted).
        """
        if self._stopping:
            return
        self._deadline = time.monotonic() + timeout
        self._stopping = True
        self._wake.set()
        self._worker.join(timeout)
        # Stops an export that is still retrying, and makes any further one fail at once.
        self._exporter.shutdown()
        # The worker only has to notice; a connect still blocked in the exporter is its own
        # (daemon) thread's problem, never the caller's.
        self._worker.join(min(0.5, timeout))
