"""Reads and writes of the ``feedback`` table."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from dtecho.store.tables import feedback

__all__ = ["FeedbackRepository"]


class FeedbackRepository:
    """The ``feedback`` table: appended to, counted, erased by age or subject."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(
        self,
        request_id: str,
        score: float,
        *,
        subject: str | None,
        label: str | None,
        comment: str | None,
    ) -> int:
        """Store one score; its id."""
        async with self._engine.begin() as connection:
            added = await connection.execute(
                insert(feedback).values(
                    request_id=request_id,
                    received_at=datetime.now(UTC),
                    subject=subject,
                    score=score,
                    label=label,
                    comment=comment,
                )
            )
        return int(added.inserted_primary_key[0])

    async def count(self, request_id: str) -> int:
        query = select(func.count()).where(feedback.c.request_id == request_id)
        async with self._engine.connect() as connection:
            return int((await connection.execute(query)).scalar() or 0)

    async def erase_subject(self, subject: str) -> int:
        async with self._engine.begin() as connection:
            deleted = await connection.execute(
                delete(feedback).where(feedback.c.subject == subject)
            )
        return int(deleted.rowcount or 0)

    async def expire(self, before: datetime) -> int:
        async with self._engine.begin() as connection:
            deleted = await connection.execute(
                delete(feedback).where(feedback.c.received_at < before)
            )
        return int(deleted.rowcount or 0)
