"""The ``rag`` tables and their reads and writes (SQLAlchemy Core, SQLite or PostgreSQL).

Every row carries its project and module, and every statement here filters on both: one
project's documents are never read by another's instance, even with a guessed id. Vectors
are raw little-endian float32 bytes (``np.frombuffer``), never pickles. Migration 0002
(``dtecho/store/migrations/versions/0002_rag.py``) creates these tables.

``rag_collections.revision`` grows by one with every upload and deletion of a
(project, module), so an instance learns with one small read whether another process (a
second worker or replica) changed the collection since it loaded its index; it then compares
document ids, not chunk ids (ids are handed out before commit, so they do not arrive in
order across processes).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dtecho.modules.types.rag.index import IndexedChunk
from dtecho.store.tables import NAMING_CONVENTION

__all__ = [
    "ChunkRow",
    "DocumentRecord",
    "RagRepository",
    "metadata",
    "rag_chunks",
    "rag_collections",
    "rag_documents",
]

# The store's naming convention (dtecho.store.tables), so constraint names match 0002's.
metadata = MetaData(naming_convention=NAMING_CONVENTION)

rag_collections = Table(
    "rag_collections",
    metadata,
    Column("project", String(64), primary_key=True),
    Column("module", String(64), primary_key=True),
    Column("revision", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

rag_documents = Table(
    "rag_documents",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project", String(64), nullable=False),
    Column("module", String(64), nullable=False),
    Column("title", String(500)),
    Column("filename", String(500)),
    Column("media_type", String(100), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("characters", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("chunk_count", Integer, nullable=False),
    Column("embedding_model", String(200), nullable=False),
    Column("dimensions", Integer, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

rag_chunks = Table(
    "rag_chunks",
    metadata,
    # BigInteger on PostgreSQL; SQLite autoincrements only an INTEGER PRIMARY KEY.
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column(
        "document_id",
        String(40),
        ForeignKey("rag_documents.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("project", String(64), nullable=False),
    Column("module", String(64), nullable=False),
    Column("chunk_index", Integer, nullable=False),
    Column("char_start", Integer, nullable=False),
    Column("char_end", Integer, nullable=False),
    Column("text", Text, nullable=False),
    Column("embedding", LargeBinary, nullable=False),  # little-endian float32
)

Index("ix_rag_documents_scope", rag_documents.c.project, rag_documents.c.module, rag_documents.c.id)
Index("ix_rag_chunks_scope", rag_chunks.c.project, rag_chunks.c.module, rag_chunks.c.id)
Index("ix_rag_chunks_document_id", rag_chunks.c.document_id)


@dataclass(frozen=True)
class DocumentRecord:
    """One stored document (its text lives in its chunks)."""

    id: str
    title: str | None
    filename: str | None
    media_type: str
    bytes: int
    characters: int
    sha256: str
    chunk_count: int
    embedding_model: str
    dimensions: int
    metadata: dict[str, Any]
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The document object the API answers."""
        return {
            "id": self.id,
            "object": "document",
            "title": self.title,
            "filename": self.filename,
            "media_type": self.media_type,
            "bytes": self.bytes,
            "characters": self.characters,
            "sha256": self.sha256,
            "chunk_count": self.chunk_count,
            "embedding_model": self.embedding_model,
            "dimensions": self.dimensions,
            "metadata": self.metadata,
            "created_at": int(self.created_at.timestamp()),
        }


@dataclass(frozen=True)
class ChunkRow:
    """A chunk to store: its place in the document, its text and its vector."""

    chunk_index: int
    char_start: int
    char_end: int
    text: str
    embedding: np.ndarray  # (d,) float32


def _aware(value: datetime) -> datetime:
    # SQLite has no time zones: values come back naive, and were stored as UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _document(row: Any) -> DocumentRecord:
    return DocumentRecord(
        id=row.id,
        title=row.title,
        filename=row.filename,
        media_type=row.media_type,
        bytes=int(row.bytes),
        characters=int(row.characters),
        sha256=row.sha256,
        chunk_count=int(row.chunk_count),
        embedding_model=row.embedding_model,
        dimensions=int(row.dimensions),
        metadata=dict(row.metadata or {}),
        created_at=_aware(row.created_at),
    )


class RagRepository:
    """The documents and chunks of one (project, module)."""

    def __init__(self, engine: AsyncEngine, project: str, module: str) -> None:
        self._engine = engine
        self.project, self.module = project, module

    def _documents_here(self) -> Any:
        return and_(rag_documents.c.project == self.project, rag_documents.c.module == self.module)

    def _chunks_here(self) -> Any:
        return and_(rag_chunks.c.project == self.project, rag_chunks.c.module == self.module)

    async def _bump(self, connection: AsyncConnection) -> int:
        now = datetime.now(UTC)
        revision = await connection.scalar(
            update(rag_collections)
            .where(rag_collections.c.project == self.project)
            .where(rag_collections.c.module == self.module)
            .values(revision=rag_collections.c.revision + 1, updated_at=now)
            .returning(rag_collections.c.revision)
        )
        if revision is None:
            await connection.execute(
                insert(rag_collections).values(
                    project=self.project, module=self.module, revision=1, updated_at=now
                )
            )
            revision = 1
        return int(revision)

    async def revision(self) -> int:
        """How many changes the collection has seen (0: never written)."""
        async with self._engine.connect() as connection:
            value = await connection.scalar(
                select(rag_collections.c.revision)
                .where(rag_collections.c.project == self.project)
                .where(rag_collections.c.module == self.module)
            )
        return int(value or 0)

    async def add(
        self, document: DocumentRecord, chunks: Sequence[ChunkRow]
    ) -> tuple[list[int], int]:
        """Store a document and its chunks in one transaction: the chunks' ids, in order, and
        the collection's revision after it."""
        async with self._engine.begin() as connection:
            values = {
                field: getattr(document, field)
                for field in DocumentRecord.__dataclass_fields__
                if field != "created_at"
            }
            await connection.execute(
                insert(rag_documents).values(
                    **values, project=self.project, module=self.module,
                    created_at=document.created_at,
                )
            )  # fmt: skip
            ids = []
            # One statement per chunk: the generated id of each is needed, and SQLite's
            # executemany with RETURNING is not available through every driver.
            for chunk in chunks:
                result = await connection.execute(
                    insert(rag_chunks)
                    .values(
                        document_id=document.id,
                        project=self.project,
                        module=self.module,
                        chunk_index=chunk.chunk_index,
                        char_start=chunk.char_start,
                        char_end=chunk.char_end,
                        text=chunk.text,
                        embedding=np.ascontiguousarray(chunk.embedding, "<f4").tobytes(),
                    )
                    .returning(rag_chunks.c.id)
                )
                ids.append(int(result.scalar_one()))
            revision = await self._bump(connection)
        return ids, revision

    async def get(self, document_id: str) -> DocumentRecord | None:
        """The document ``document_id`` of this collection, or None."""
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    select(rag_documents)
                    .where(self._documents_here())
                    .where(rag_documents.c.id == document_id)
                )
            ).first()
        return _document(row) if row is not None else None

    async def list(self, limit: int, after: str | None = None) -> tuple[list[DocumentRecord], bool]:
        """Documents newest first (ids sort by time), at most ``limit``, those older than
        ``after``; and whether more follow."""
        query = select(rag_documents).where(self._documents_here())
        if after is not None:
            query = query.where(rag_documents.c.id < after)
        query = query.order_by(rag_documents.c.id.desc()).limit(limit + 1)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_document(row) for row in rows[:limit]], len(rows) > limit

    async def count(self) -> int:
        """How many documents the collection holds."""
        async with self._engine.connect() as connection:
            value = await connection.scalar(
                select(func.count()).select_from(rag_documents).where(self._documents_here())
            )
        return int(value or 0)

    async def delete(self, document_id: str) -> int | None:
        """Delete a document and its chunks: the collection's revision after it, or None if
        there was no such document."""
        async with self._engine.begin() as connection:
            # Chunks first, explicitly: SQLite enforces ON DELETE CASCADE only with its
            # foreign_keys pragma, which another connection's owner may not have set.
            await connection.execute(
                delete(rag_chunks)
                .where(self._chunks_here())
                .where(rag_chunks.c.document_id == document_id)
            )
            result = await connection.execute(
                delete(rag_documents)
                .where(self._documents_here())
                .where(rag_documents.c.id == document_id)
            )
            if result.rowcount == 0:
                return None
            return await self._bump(connection)

    async def document_ids(self, embedding_model: str, dimensions: int | None) -> set[str]:
        """The ids of the documents embedded by ``embedding_model`` (with ``dimensions``,
        when given): those an index of that model can hold."""
        query = (
            select(rag_documents.c.id)
            .where(self._documents_here())
            .where(rag_documents.c.embedding_model == embedding_model)
        )
        if dimensions is not None:
            query = query.where(rag_documents.c.dimensions == dimensions)
        async with self._engine.connect() as connection:
            return {row.id for row in await connection.execute(query)}

    async def indexed_chunks(
        self, document_ids: Sequence[str], batch: int = 500
    ) -> AsyncIterator[tuple[list[IndexedChunk], np.ndarray]]:
        """The chunks of ``document_ids``, ``batch`` documents at a time: (chunks, their
        (n, d) float32 vectors)."""
        for start in range(0, len(document_ids), batch):
            query = (
                select(
                    rag_chunks.c.id, rag_chunks.c.document_id, rag_chunks.c.chunk_index,
                    rag_chunks.c.text, rag_chunks.c.embedding, rag_documents.c.title,
                )
                .join(rag_documents, rag_documents.c.id == rag_chunks.c.document_id)
                .where(self._chunks_here())
                .where(rag_chunks.c.document_id.in_(document_ids[start : start + batch]))
                .order_by(rag_chunks.c.id)
            )  # fmt: skip
            async with self._engine.connect() as connection:
                rows = (await connection.execute(query)).all()
            if not rows:
                continue
            chunks = [
                IndexedChunk(row.id, row.document_id, row.title, row.chunk_index, row.text)
                for row in rows
            ]
            vectors = np.stack([np.frombuffer(row.embedding, dtype="<f4") for row in rows])
            yield chunks, vectors

    async def chunks_of(self, document_id: str) -> list[dict[str, Any]]:
        """A document's chunks in order: index, offsets and text (no vectors)."""
        query = (
            select(
                rag_chunks.c.chunk_index, rag_chunks.c.char_start, rag_chunks.c.char_end,
                rag_chunks.c.text,
            )
            .where(self._chunks_here())
            .where(rag_chunks.c.document_id == document_id)
            .order_by(rag_chunks.c.chunk_index)
        )  # fmt: skip
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            {"index": r.chunk_index, "start": r.char_start, "end": r.char_end, "text": r.text}
            for r in rows
        ]
