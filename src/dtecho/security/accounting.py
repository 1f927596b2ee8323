"""Usage accounting and the audit log: buffered, batched writes to the store.

A request must never wait on a database write, and a database hiccup must never lose a record
silently. So both writers append to memory and a background task flushes every
``flush_seconds``; a failed flush keeps the records for the next try and is counted. Usage
deltas for the same (principal, model, day) are merged in memory, so the buffer stays small
whatever the request rate. At shutdown the buffer is flushed one last time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any

import structlog

from dtecho.store import Store
from dtecho.store.records import AuditRecord, UsageRecord

__all__ = ["AuditLog", "UsageRecorder"]

_log = structlog.get_logger("dtecho.audit")
_errors = structlog.get_logger("dtecho.store")
_MAX_PENDING_AUDIT = 100_000


class _Flusher:
    """A background task calling ``flush`` every ``interval`` seconds until closed."""

    def __init__(self, interval: float, flush: Callable[[], Awaitable[None]]) -> None:
        self._interval = interval
        self._flush = flush
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dtecho-accounting-flush")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._flush()


class _BufferedWriter:
    """Start/close of the flush task and plain counters, shared by the two writers."""

    def __init__(self, store: Store, flush_seconds: float) -> None:
        self._store = store
        self._flusher = _Flusher(flush_seconds, self.flush)
        self._counts: dict[tuple[str], int] = {}

    def start(self) -> None:
        self._flusher.start()

    async def close(self) -> None:
        """Stop the flush task and write what is left."""
        await self._flusher.close()

    async def flush(self) -> None:
        raise NotImplementedError

    def counts(self) -> dict[tuple[str], int]:
        """Counters for metrics, by event."""
        return dict(self._counts)

    def _count(self, event: str, n: int = 1) -> None:
        self._counts[(event,)] = self._counts.get((event,), 0) + n


class UsageRecorder(_BufferedWriter):
    """Requests and tokens per principal, model, project and UTC day, written to the store in
    batches.

    Counters: recorded (requests), flushed (rows), flush_error (attempts).
    """

    def __init__(self, store: Store, *, flush_seconds: float = 1.0) -> None:
        super().__init__(store, flush_seconds)
        self._pending: dict[tuple[str, str, date, str], list[int]] = {}

    def record(
        self,
        principal_id: str,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        project: str = "",
    ) -> None:
        """Count one request (never blocks, never raises); ``project`` is the front door's."""
        key = (principal_id, model, datetime.now(UTC).date(), project)
        totals = self._pending.get(key)
        if totals is None:
            self._pending[key] = [1, prompt_tokens, completion_tokens]
        else:
            totals[0] += 1
            totals[1] += prompt_tokens
            totals[2] += completion_tokens
        self._count("recorded")

    async def flush(self) -> None:
        """Write what is pending; on failure keep it (merged with newer counts) and count it."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        deltas = [
            UsageRecord(principal, model, day, requests, prompt, completion, project)
            for (principal, model, day, project), (requests, prompt, completion) in batch.items()
        ]
        try:
            await self._store.usage.add(deltas)
        except Exception as exc:
            self._count("flush_error")
            _errors.warning("usage_flush_failed", rows=len(deltas), error=type(exc).__name__)
            for key, (requests, prompt, completion) in batch.items():
                totals = self._pending.setdefault(key, [0, 0, 0])
                totals[0] += requests
                totals[1] += prompt
                totals[2] += completion
        else:
            self._count("flushed", len(deltas))

    @property
    def pending(self) -> int:
        """Rows waiting to be written."""
        return len(self._pending)


class AuditLog(_BufferedWriter):
    """Append-only audit events: a structured log line at once, a store row within a second.

    Counters: written (events), flush_error (attempts), dropped (events).
    """

    def __init__(self, store: Store, *, flush_seconds: float = 1.0) -> None:
        super().__init__(store, flush_seconds)
        self._pending: list[AuditRecord] = []

    def record(
        self,
        action: str,
        outcome: str,
        *,
        actor: str,
        target: str | None = None,
        client_ip: str | None = None,
        request_id: str | None = None,
        **details: Any,
    ) -> None:
        """Log an event now and queue it for the store. Never pass a secret or a token."""
        event = AuditRecord(
            at=datetime.now(UTC),
            actor=actor,
            action=action,
            outcome=outcome,
            target=target,
            client_ip=client_ip,
            request_id=request_id,
            details=details,
        )
        _log.info(
            "audit",
            action=action,
            outcome=outcome,
            actor=actor,
            target=target,
            client_ip=client_ip,
            request_id=request_id,
            **details,
        )
        if len(self._pending) >= _MAX_PENDING_AUDIT:
            # The store has been away a long while; the log line above still has the event.
            self._pending.pop(0)
            self._count("dropped")
        self._pending.append(event)

    async def flush(self) -> None:
        """Write pending events; on failure keep them for the next flush and count it."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            await self._store.audit.append(batch)
        except Exception as exc:
            self._count("flush_error")
            _errors.warning("audit_flush_failed", events=len(batch), error=type(exc).__name__)
            self._pending = batch + self._pending
        else:
            self._count("written", len(batch))
