"""Reads and writes of runs and results, always within one (project, module)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from dtecho.modules.types.evaluation.schema import Plan
from dtecho.modules.types.evaluation.summary import summarise
from dtecho.modules.types.evaluation.tables import ACTIVE, evaluation_results, evaluation_runs

__all__ = ["ActiveRun", "RunRepository", "utcnow"]

runs, results = evaluation_runs, evaluation_results
_RUN_COLUMNS = [column for column in runs.c if column.name != "dataset"]  # it can be big


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite keeps no time zone: values come back naive, and were stored as UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _unix(value: datetime | None) -> int | None:
    aware = _aware(value)
    return int(aware.timestamp()) if aware is not None else None


def _record(row: Any) -> dict[str, Any]:
    """A run as the API shows it."""
    total = row.item_count * len(row.models)
    return {
        "id": row.id,
        "object": "evaluation.run",
        "name": row.name,
        "kind": row.kind,
        "status": row.status,
        "models": row.models,
        "metrics": row.metrics,
        "parameters": row.parameters,
        "options": row.options,
        "items": row.item_count,
        "progress": {"total": total, "completed": row.completed, "errors": row.errors},
        "error": row.error,
        "created_at": _unix(row.created_at),
        "started_at": _unix(row.started_at),
        "finished_at": _unix(row.finished_at),
    }


@dataclass(frozen=True)
class ActiveRun:
    """A run that is not over, and who said so last."""

    id: str
    owner: str | None
    heartbeat_at: datetime | None


class RunRepository:
    """The runs of one module instance's (project, module)."""

    def __init__(self, engine: AsyncEngine, project: str, module: str) -> None:
        self._engine = engine
        self.project = project
        self.module = module

    def _scope(self) -> Any:
        return and_(runs.c.project == self.project, runs.c.module == self.module)

    async def create(
        self, run_id: str, plan: Plan, *, owner: str, created_by: str | None
    ) -> dict[str, Any]:
        """Insert a queued run; returns its record."""
        now = utcnow()
        values = {
            "id": run_id,
            "project": self.project,
            "module": self.module,
            "name": plan.name,
            "kind": plan.kind,
            "status": "queued",
            "models": [entry.model_dump(exclude_none=True) for entry in plan.models],
            "metrics": list(plan.metrics),
            "parameters": dict(plan.parameters),
            "options": plan.options(),
            "dataset": plan.stored_items(),
            "item_count": len(plan.items),
            "completed": 0,
            "errors": 0,
            "owner": owner,
            "heartbeat_at": now,
            "created_by": created_by,
            "created_at": now,
        }
        async with self._engine.begin() as connection:
            await connection.execute(insert(runs).values(**values))
        record = await self.get(run_id)
        assert record is not None
        return record

    async def prune(self, keep: int) -> int:
        """Delete the oldest ended runs so that at most ``keep`` - 1 remain (room for one
        more); runs not over are never deleted. Returns how many went."""
        async with self._engine.begin() as connection:
            count = (
                await connection.execute(
                    select(func.count()).select_from(runs).where(self._scope())
                )
            ).scalar_one()
            excess = count - keep + 1
            if excess <= 0:
                return 0
            ids = (
                (
                    await connection.execute(
                        select(runs.c.id)
                        .where(self._scope(), runs.c.status.not_in(ACTIVE))
                        .order_by(runs.c.created_at, runs.c.id)
                        .limit(excess)
                    )
                )
                .scalars()
                .all()
            )
            if ids:
                # Explicitly, not by ON DELETE CASCADE alone: SQLite enforces foreign keys
                # only on connections that turned them on.
                await connection.execute(delete(results).where(results.c.run_id.in_(ids)))
                await connection.execute(delete(runs).where(runs.c.id.in_(ids)))
            return len(ids)

    async def start(self, run_id: str, owner: str) -> None:
        """Mark a queued run running."""
        now = utcnow()
        async with self._engine.begin() as connection:
            await connection.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status == "queued", runs.c.owner == owner)
                .values(status="running", started_at=now, heartbeat_at=now)
            )

    async def add_result(
        self,
        run_id: str,
        owner: str,
        item_index: int,
        model_index: int,
        *,
        output: Any,
        metrics: dict[str, Any],
        error: dict[str, Any] | None,
    ) -> bool:
        """Store one answer (or error) and count it, in one transaction. False (nothing
        stored) when the run is no longer this owner's to write: it ended meanwhile."""
        now = utcnow()
        async with self._engine.begin() as connection:
            # The counter update first: on PostgreSQL it locks the run's row, so a concurrent
            # end of the run either sees this result or makes this update match nothing.
            counted = await connection.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status.in_(ACTIVE), runs.c.owner == owner)
                .values(
                    completed=runs.c.completed + 1,
                    errors=runs.c.errors + (1 if error is not None else 0),
                    heartbeat_at=now,
                )
            )
            if counted.rowcount != 1:
                return False
            await connection.execute(
                insert(results).values(
                    run_id=run_id,
                    item_index=item_index,
                    model_index=model_index,
                    status="error" if error is not None else "ok",
                    output=output,
                    metrics=metrics,
                    error=error,
                    created_at=now,
                )
            )
        return True

    async def end(
        self, run_id: str, status: str, *, error: str | None = None, owner: str | None = None
    ) -> bool:
        """Move a run that is not over to ``status`` and store its summary. With ``owner``,
        only if that instance still owns it. False if the run was already over."""
        now = utcnow()
        conditions = [runs.c.id == run_id, runs.c.status.in_(ACTIVE), self._scope()]
        if owner is not None:
            conditions.append(runs.c.owner == owner)
        async with self._engine.begin() as connection:
            ended = await connection.execute(
                update(runs)
                .where(*conditions)
                .values(status=status, error=error[:2000] if error else None, finished_at=now)
            )
            if ended.rowcount != 1:
                return False
            run = (
                await connection.execute(
                    select(runs.c.models, runs.c.metrics, runs.c.item_count).where(
                        runs.c.id == run_id
                    )
                )
            ).one()
            rows = await self._result_rows(connection, run_id)
            summary = summarise(run.models, run.metrics, run.item_count, rows)
            await connection.execute(
                update(runs).where(runs.c.id == run_id).values(summary=summary)
            )
        return True

    async def heartbeat(self, owner: str, run_ids: Sequence[str]) -> None:
        """Show that these runs of ``owner`` are alive (only those it is executing: a run it
        lost track of must go stale)."""
        async with self._engine.begin() as connection:
            await connection.execute(
                update(runs)
                .where(
                    self._scope(),
                    runs.c.id.in_(list(run_ids)),
                    runs.c.owner == owner,
                    runs.c.status.in_(ACTIVE),
                )
                .values(heartbeat_at=utcnow())
            )

    async def active(self) -> list[ActiveRun]:
        """Every run of the scope that is not over."""
        query = select(runs.c.id, runs.c.owner, runs.c.heartbeat_at).where(
            self._scope(), runs.c.status.in_(ACTIVE)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [ActiveRun(row.id, row.owner, _aware(row.heartbeat_at)) for row in rows]

    async def get(self, run_id: str) -> dict[str, Any] | None:
        """A run's record with ``summary`` (None until it ends), or None."""
        query = select(*_RUN_COLUMNS).where(self._scope(), runs.c.id == run_id)
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        if row is None:
            return None
        return {**_record(row), "summary": row.summary}

    async def list(self, *, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Newest first: a page of records and how many runs there are in all."""
        query = (
            select(*_RUN_COLUMNS)
            .where(self._scope())
            .order_by(runs.c.created_at.desc(), runs.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
            total = (
                await connection.execute(
                    select(func.count()).select_from(runs).where(self._scope())
                )
            ).scalar_one()
        return [_record(row) for row in rows], int(total)

    async def dataset(self, run_id: str) -> list[dict[str, Any]]:
        """The items of a run, as stored."""
        query = select(runs.c.dataset).where(self._scope(), runs.c.id == run_id)
        async with self._engine.connect() as connection:
            items = (await connection.execute(query)).scalar_one_or_none()
        return list(items or [])

    async def results(self, run_id: str) -> list[dict[str, Any]]:
        """Every stored result of a run (of this scope), by item then model."""
        async with self._engine.connect() as connection:
            scoped = (
                await connection.execute(
                    select(runs.c.id).where(self._scope(), runs.c.id == run_id)
                )
            ).first()
            if scoped is None:
                return []
            return await self._result_rows(connection, run_id)

    @staticmethod
    async def _result_rows(connection: Any, run_id: str) -> list[dict[str, Any]]:
        query = (
            select(
                results.c.item_index,
                results.c.model_index,
                results.c.status,
                results.c.output,
                results.c.metrics,
                results.c.error,
            )
            .where(results.c.run_id == run_id)
            .order_by(results.c.item_index, results.c.model_index)
        )
        rows: Sequence[Any] = (await connection.execute(query)).all()
        return [dict(row._mapping) for row in rows]
