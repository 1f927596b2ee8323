"""Reads and writes of the ``experiments`` table."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from dtecho.store.records import aware
from dtecho.store.tables import experiments

__all__ = ["ExperimentRecord", "ExperimentRepository"]


@dataclass(frozen=True, slots=True)
class ExperimentRecord:
    """An experiment as stored: its definition, status and last analysis."""

    id: str
    model_id: str
    name: str | None
    status: str
    spec: dict[str, Any]
    created_at: datetime
    created_by: str | None
    ended_at: datetime | None = None
    reason: str | None = None
    analysis: dict[str, Any] = field(default_factory=dict)


def _record(row: Any) -> ExperimentRecord:
    return ExperimentRecord(
        id=row.id,
        model_id=row.model_id,
        name=row.name,
        status=row.status,
        spec=dict(row.spec or {}),
        created_at=aware(row.created_at),  # type: ignore[arg-type]
        created_by=row.created_by,
        ended_at=aware(row.ended_at),
        reason=row.reason,
        analysis=dict(row.analysis or {}),
    )


class ExperimentRepository:
    """The ``experiments`` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, record: ExperimentRecord) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(experiments).values(
                    id=record.id, model_id=record.model_id, name=record.name,
                    status=record.status, spec=record.spec, created_at=record.created_at,
                    created_by=record.created_by, ended_at=None, reason=None,
                    analysis=record.analysis,
                )
            )  # fmt: skip

    async def get(self, experiment_id: str) -> ExperimentRecord | None:
        query = select(experiments).where(experiments.c.id == experiment_id)
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return _record(row) if row is not None else None

    async def list(
        self, model_id: str | None = None, status: str | None = None
    ) -> list[ExperimentRecord]:
        """Experiments, newest first, of one model and/or in one status."""
        query = select(experiments).order_by(experiments.c.created_at.desc())
        if model_id is not None:
            query = query.where(experiments.c.model_id == model_id)
        if status is not None:
            query = query.where(experiments.c.status == status)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_record(row) for row in rows]

    async def end(self, experiment_id: str, status: str, reason: str) -> bool:
        """Mark a running experiment ended; False when it was not running any more."""
        async with self._engine.begin() as connection:
            ended = await connection.execute(
                update(experiments)
                .where(experiments.c.id == experiment_id, experiments.c.status == "running")
                .values(status=status, reason=reason, ended_at=datetime.now(UTC))
            )
        return bool(ended.rowcount)

    async def save_analysis(self, experiment_id: str, analysis: dict[str, Any]) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                update(experiments)
                .where(experiments.c.id == experiment_id)
                .values(analysis=analysis)
            )
