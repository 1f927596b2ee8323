"""Leases: a name one process holds until it expires, so that work meant to run once across
replicas (the continuous learner) runs on one at a time. Taken and renewed by one
compare-and-set statement; a holder that dies loses the lease when it expires."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from dtecho.store.tables import leases

__all__ = ["LeaseRepository"]


class LeaseRepository:
    """The ``leases`` table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def acquire(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew ``name`` for ``seconds``: True when ``holder`` holds it now."""
        now = datetime.now(UTC)
        until = now + timedelta(seconds=seconds)
        async with self._engine.begin() as connection:
            taken = await connection.execute(
                update(leases)
                .where(
                    leases.c.name == name,
                    or_(leases.c.holder == holder, leases.c.expires_at < now),
                )
                .values(holder=holder, expires_at=until)
            )
            if taken.rowcount:
                return True
        try:
            async with self._engine.begin() as connection:
                await connection.execute(
                    insert(leases).values(name=name, holder=holder, expires_at=until)
                )
        except IntegrityError:
            return False  # someone else holds it
        return True
