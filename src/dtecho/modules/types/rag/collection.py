"""One instance's documents: stored in the store, indexed in memory, searched exactly.

The index is loaded when the instance starts and updated as this instance uploads and
deletes. Before each search one small read of the collection's revision tells whether
another process (a second worker, another replica) changed it; if so the index is brought
up to date by comparing document ids. Index changes happen under one lock, and the revision
recorded is always one read *before* the state it reflects, so a change that races a sync is
picked up by the next one rather than lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from dtecho.errors import InvalidRequest, PayloadTooLarge
from dtecho.modules.types.rag.chunking import chunk_text
from dtecho.modules.types.rag.config import RagConfig
from dtecho.modules.types.rag.embedding import embed_texts
from dtecho.modules.types.rag.index import ChunkIndex, Hit, IndexedChunk
from dtecho.modules.types.rag.storage import ChunkRow, DocumentRecord, RagRepository

__all__ = ["Collection", "NewDocument", "new_document_id"]

# Above this many vector coordinates a search runs in a worker thread: below it the
# product takes well under a millisecond and the hand-off would cost more than it saves.
_THREAD_THRESHOLD = 2_000_000


def new_document_id() -> str:
    """``doc_`` + 12 hex digits of milliseconds + 12 random: ids sort by creation time."""
    return f"doc_{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"


@dataclass(frozen=True)
class NewDocument:
    """An upload, parsed: its text and what is recorded about it."""

    text: str
    title: str | None
    filename: str | None
    media_type: str
    bytes: int
    metadata: dict[str, Any]
    param: str  # the request field the text came from (for errors): "text" or "file"


class Collection:
    """The documents of one (project, module) and their retrieval index."""

    def __init__(
        self, repository: RagRepository, config: RagConfig, models: Callable[[], Any]
    ) -> None:
        self.repository = repository
        self.config = config
        self._models = models
        self._index = ChunkIndex()
        self._lock = asyncio.Lock()
        self._revision = -1  # the store's revision the index reflects; -1: never loaded
        self.dimensions: int | None = config.embedding_dimensions

    @property
    def chunk_count(self) -> int:
        """Chunks in the index."""
        return len(self._index)

    async def embed(self, texts: list[str], request_id: str = "") -> np.ndarray:
        """Vectors of ``texts`` from the configured embeddings model."""
        return await embed_texts(
            self._models(),
            self.config.embedding_model,
            texts,
            dimensions=self.config.embedding_dimensions,
            batch_size=self.config.embedding_batch_size,
            request_id=request_id,
        )

    async def load(self) -> None:
        """Learn the model's vector size (one embedding: it also proves the model answers)
        and load the index from the store."""
        probe = await self.embed(["dimension probe"])
        self.dimensions = int(probe.shape[1])
        await self.sync(force=True)

    async def sync(self, *, force: bool = False) -> None:
        """Bring the index up to date with the store if another process changed it."""
        if not force and await self.repository.revision() == self._revision:
            return
        async with self._lock:
            revision = await self.repository.revision()  # before reading what it covers
            if revision == self._revision and not force:
                return
            stored = await self.repository.document_ids(
                self.config.embedding_model, self.dimensions
            )
            indexed = self._index.documents()
            for document_id in indexed - stored:
                self._index.remove_document(document_id)
            missing = sorted(stored - indexed)
            async for chunks, vectors in self.repository.indexed_chunks(missing):
                self._index.add(chunks, vectors)
            self._revision = revision

    async def _rebuild(self, dimensions: int) -> None:
        # The model's vectors changed size (a reload served another model under the name):
        # only the documents embedded at the new size can be compared with its vectors.
        async with self._lock:
            self.dimensions = dimensions
            self._index = ChunkIndex()
            self._revision = -1
        await self.sync(force=True)

    async def add(self, document: NewDocument, request_id: str = "") -> DocumentRecord:
        """Chunk, embed and store a document; then index it."""
        config = self.config
        size = len(document.text.encode("utf-8"))
        if size > config.max_document_bytes:
            raise PayloadTooLarge(
                f"The document is {size} bytes; this module accepts at most "
                f"{config.max_document_bytes} (config max_document_bytes).",
                param=document.param,
            )
        chunks = chunk_text(document.text, config.chunk_chars, config.chunk_overlap)
        if not chunks:
            raise InvalidRequest("The document has no text.", param=document.param)
        vectors = await self.embed([chunk.text for chunk in chunks], request_id)
        if vectors.shape[1] != self.dimensions:
            await self._rebuild(int(vectors.shape[1]))
        record = DocumentRecord(
            id=new_document_id(),
            title=document.title,
            filename=document.filename,
            media_type=document.media_type,
            bytes=document.bytes,
            characters=len(document.text),
            sha256=hashlib.sha256(document.text.encode("utf-8")).hexdigest(),
            chunk_count=len(chunks),
            embedding_model=config.embedding_model,
            dimensions=int(vectors.shape[1]),
            metadata=document.metadata,
            created_at=datetime.now(UTC),
        )
        rows = [
            ChunkRow(chunk.index, chunk.start, chunk.end, chunk.text, vectors[i])
            for i, chunk in enumerate(chunks)
        ]
        row_ids, revision = await self.repository.add(record, rows)
        indexed = [
            IndexedChunk(row_id, record.id, record.title, chunk.index, chunk.text)
            for row_id, chunk in zip(row_ids, chunks, strict=True)
        ]
        async with self._lock:
            self._index.add(indexed, vectors)
            if revision == self._revision + 1:  # only our change since the index's state
                self._revision = revision
        return record

    async def delete(self, document_id: str) -> bool:
        """Delete a document and unindex it; whether it existed."""
        revision = await self.repository.delete(document_id)
        if revision is None:
            return False
        async with self._lock:
            self._index.remove_document(document_id)
            if revision == self._revision + 1:
                self._revision = revision
        return True

    async def search(
        self, query: str, top_k: int, *, min_score: float | None = None, request_id: str = ""
    ) -> list[Hit]:
        """The ``top_k`` chunks that best match ``query``, best first."""
        config = self.config
        vector = None
        if config.retrieval != "lexical":
            vector = (await self.embed([query], request_id))[0]
        await self.sync()
        if vector is not None and len(vector) != self.dimensions:
            await self._rebuild(len(vector))
        snapshot = self._index.snapshot(query if config.retrieval != "dense" else None)
        threshold = config.min_score if min_score is None else min_score
        arguments = (vector, top_k, config.retrieval, config.lexical_weight, threshold)
        if snapshot.vectors.size > _THREAD_THRESHOLD:
            return await asyncio.to_thread(snapshot.search, *arguments)
        return snapshot.search(*arguments)
