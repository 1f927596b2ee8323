"""Reads and writes of the model registry's tables: versions and aliases.

Versions are written once and never changed, except ``status`` (``archived`` when their
weights are deleted). An alias moves by compare-and-set on its ``generation``, so two
replicas moving one alias at once cannot both win: the loser sees a conflict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from dtecho.store.records import aware
from dtecho.store.tables import model_aliases, model_versions

__all__ = ["AliasMoved", "AliasRecord", "VersionRecord", "VersionRepository"]


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One immutable version of a trained model."""

    model_id: str
    version: int
    parent: int | None
    kind: str
    created_at: datetime
    creator: str | None
    config: dict[str, Any]
    data_fingerprint: str
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = "available"

    def as_dict(self) -> dict[str, Any]:
        return {
            "object": "dtesn.model.version",
            "model": self.model_id,
            "version": self.version,
            "parent": self.parent,
            "kind": self.kind,
            "created": int(self.created_at.timestamp()),
            "creator": self.creator,
            "config": self.config,
            "data_fingerprint": self.data_fingerprint,
            "metrics": self.metrics,
            "status": self.status,
        }


@dataclass(frozen=True, slots=True)
class AliasRecord:
    """A name for a version of a model."""

    model_id: str
    alias: str
    version: int
    previous: int | None
    updated_at: datetime
    updated_by: str | None
    generation: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "object": "dtesn.model.alias",
            "model": self.model_id,
            "alias": self.alias,
            "version": self.version,
            "previous": self.previous,
            "updated": int(self.updated_at.timestamp()),
            "updated_by": self.updated_by,
        }


class AliasMoved(Exception):
    """The alias changed since it was read (another writer moved it first)."""


def _version(row: Any) -> VersionRecord:
    return VersionRecord(
        model_id=row.model_id,
        version=int(row.version),
        parent=row.parent,
        kind=row.kind,
        created_at=aware(row.created_at),
        creator=row.creator,
        config=dict(row.config or {}),
        data_fingerprint=row.data_fingerprint,
        metrics=dict(row.metrics or {}),
        status=row.status,
    )


def _alias(row: Any) -> AliasRecord:
    return AliasRecord(
        model_id=row.model_id,
        alias=row.alias,
        version=int(row.version),
        previous=row.previous,
        updated_at=aware(row.updated_at),
        updated_by=row.updated_by,
        generation=int(row.generation),
    )


class VersionRepository:
    """The ``model_versions`` and ``model_aliases`` tables."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, record: VersionRecord) -> None:
        """Insert a version (IntegrityError if it exists: versions are never rewritten)."""
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(model_versions).values(
                    model_id=record.model_id,
                    version=record.version,
                    parent=record.parent,
                    kind=record.kind,
                    created_at=record.created_at,
                    creator=record.creator,
                    config=record.config,
                    data_fingerprint=record.data_fingerprint,
                    metrics=record.metrics,
                    status=record.status,
                )
            )

    async def get(self, model_id: str, version: int) -> VersionRecord | None:
        query = select(model_versions).where(
            model_versions.c.model_id == model_id, model_versions.c.version == version
        )
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return _version(row) if row is not None else None

    async def list(self, model_id: str) -> list[VersionRecord]:
        """Every version of the model, oldest first."""
        query = (
            select(model_versions)
            .where(model_versions.c.model_id == model_id)
            .order_by(model_versions.c.version)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_version(row) for row in rows]

    async def set_status(self, model_id: str, version: int, status: str) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                update(model_versions)
                .where(model_versions.c.model_id == model_id, model_versions.c.version == version)
                .values(status=status)
            )

    async def delete_version(self, model_id: str, version: int) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                delete(model_versions).where(
                    model_versions.c.model_id == model_id, model_versions.c.version == version
                )
            )

    async def delete_model(self, model_id: str) -> None:
        """Every version and alias of the model."""
        async with self._engine.begin() as connection:
            await connection.execute(
                delete(model_aliases).where(model_aliases.c.model_id == model_id)
            )
            await connection.execute(
                delete(model_versions).where(model_versions.c.model_id == model_id)
            )

    async def aliases(self, model_id: str) -> list[AliasRecord]:
        query = (
            select(model_aliases)
            .where(model_aliases.c.model_id == model_id)
            .order_by(model_aliases.c.alias)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_alias(row) for row in rows]

    async def alias(self, model_id: str, alias: str) -> AliasRecord | None:
        query = select(model_aliases).where(
            model_aliases.c.model_id == model_id, model_aliases.c.alias == alias
        )
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return _alias(row) if row is not None else None

    async def move_alias(
        self,
        model_id: str,
        alias: str,
        version: int,
        *,
        actor: str | None,
        expected: AliasRecord | None,
    ) -> AliasRecord:
        """Point ``alias`` at ``version`` if it is still as ``expected`` (None: absent).

        Raises :class:`AliasMoved` when another writer moved (or created) it meanwhile.
        """
        now = datetime.now(UTC)
        async with self._engine.begin() as connection:
            if expected is None:
                try:
                    await connection.execute(
                        insert(model_aliases).values(
                            model_id=model_id, alias=alias, version=version, previous=None,
                            updated_at=now, updated_by=actor, generation=1,
                        )
                    )  # fmt: skip
                except IntegrityError:
                    raise AliasMoved(alias) from None
                return AliasRecord(model_id, alias, version, None, now, actor, 1)
            moved = await connection.execute(
                update(model_aliases)
                .where(
                    model_aliases.c.model_id == model_id,
                    model_aliases.c.alias == alias,
                    model_aliases.c.generation == expected.generation,
                )
                .values(
                    version=version,
                    previous=expected.version,
                    updated_at=now,
                    updated_by=actor,
                    generation=expected.generation + 1,
                )
            )
            if moved.rowcount != 1:
                raise AliasMoved(alias)
        return AliasRecord(
            model_id, alias, version, expected.version, now, actor, expected.generation + 1
        )

    async def delete_alias(self, model_id: str, alias: str) -> bool:
        async with self._engine.begin() as connection:
            deleted = await connection.execute(
                delete(model_aliases).where(
                    model_aliases.c.model_id == model_id, model_aliases.c.alias == alias
                )
            )
        return bool(deleted.rowcount)
