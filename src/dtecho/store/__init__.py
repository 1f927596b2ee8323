"""The persistent store: SQLAlchemy 2 (async) over SQLite (default) or PostgreSQL.

Keys, usage and the audit log live here; later layers (jobs, the model registry, manifests)
add their tables through new Alembic revisions in ``migrations/versions``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dtecho.store.experiments import ExperimentRepository
from dtecho.store.feedback import FeedbackRepository
from dtecho.store.leases import LeaseRepository
from dtecho.store.model_versions import VersionRepository
from dtecho.store.observations import ObservationRepository
from dtecho.store.repositories import AuditRepository, KeyRepository, UsageRepository

__all__ = ["AuditRepository", "KeyRepository", "Store", "UsageRepository"]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers never block the writer, so several server processes can share one file;
    # busy_timeout: a writer waits for another's lock instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Store:
    """The database of one server process; repositories are ready after :meth:`start`."""

    keys: KeyRepository
    usage: UsageRepository
    audit: AuditRepository
    versions: VersionRepository
    experiments: ExperimentRepository
    observations: ObservationRepository
    leases: LeaseRepository
    feedback: FeedbackRepository

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return make_url(self.url).get_backend_name()

    async def start(self, *, migrate: bool = True) -> None:
        """Open the engine (creating a SQLite file's directory) and apply migrations."""
        url = make_url(self.url)
        if self.dialect == "sqlite" and url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        if migrate:
            from dtecho.store.migrate import upgrade

            # Alembic's command API is synchronous and runs its own event loop: a thread.
            await asyncio.to_thread(upgrade, self.url)
        if self.dialect == "sqlite":
            engine = create_async_engine(self.url, connect_args={"timeout": 30})
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            engine = create_async_engine(
                self.url, pool_size=10, max_overflow=10, pool_pre_ping=True
            )
        self._engine = engine
        self.keys = KeyRepository(engine)
        self.usage = UsageRepository(engine)
        self.audit = AuditRepository(engine)
        self.versions = VersionRepository(engine)
        self.experiments = ExperimentRepository(engine)
        self.observations = ObservationRepository(engine)
        self.leases = LeaseRepository(engine)
        self.feedback = FeedbackRepository(engine)

    @property
    def engine(self) -> AsyncEngine:
        """The started SQLAlchemy engine, for tables outside the core ones (modules' own)."""
        if self._engine is None:
            raise RuntimeError("the store is not started")
        return self._engine

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def ping(self) -> None:
        """Return when the database answers; raise otherwise (the readiness check)."""
        if self._engine is None:
            raise RuntimeError("the store is not started")
        async with self._engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
