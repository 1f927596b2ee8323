"""Reads and writes of the ``observations`` table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from dtecho.store.records import aware
from dtecho.store.tables import observations

__all__ = ["ObservationRecord", "ObservationRepository"]


@dataclass(frozen=True, slots=True)
class ObservationRecord:
    """One batch of ground truth rows for a model."""

    id: int
    model_id: str
    received_at: datetime
    subject: str | None
    request_id: str | None
    inputs: list[list[float]]
    targets: list[list[float]]


class ObservationRepository:
    """The ``observations`` table: appended to, read in order, erased by age or subject."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(
        self,
        model_id: str,
        inputs: list[list[float]],
        targets: list[list[float]],
        *,
        subject: str | None,
        request_id: str | None,
    ) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(observations).values(
                    model_id=model_id,
                    received_at=datetime.now(UTC),
                    subject=subject,
                    request_id=request_id,
                    inputs=inputs,
                    targets=targets,
                )
            )

    async def after(
        self, model_id: str, after_id: int, limit: int = 10_000
    ) -> list[ObservationRecord]:
        """The model's observations with an id above ``after_id``, oldest first."""
        query = (
            select(observations)
            .where(observations.c.model_id == model_id, observations.c.id > after_id)
            .order_by(observations.c.id)
            .limit(limit)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            ObservationRecord(
                int(row.id),
                row.model_id,
                aware(row.received_at),
                row.subject,
                row.request_id,
                list(row.inputs),
                list(row.targets),
            )
            for row in rows
        ]

    async def count(self, model_id: str) -> int:
        query = select(func.count()).where(observations.c.model_id == model_id)
        async with self._engine.connect() as connection:
            return int((await connection.execute(query)).scalar() or 0)

    async def erase_subject(self, subject: str) -> int:
        """Delete every observation the subject sent; how many."""
        async with self._engine.begin() as connection:
            deleted = await connection.execute(
                delete(observations).where(observations.c.subject == subject)
            )
        return int(deleted.rowcount or 0)

    async def expire(self, before: datetime) -> int:
        """Delete observations received before ``before``; how many."""
        async with self._engine.begin() as connection:
            deleted = await connection.execute(
                delete(observations).where(observations.c.received_at < before)
            )
        return int(deleted.rowcount or 0)

    async def delete_model(self, model_id: str) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                delete(observations).where(observations.c.model_id == model_id)
            )
