"""The in-memory retrieval index of one instance: float32 vectors and a BM25 index.

Retrieval is exact: the cosine of the query with every chunk is one matrix-vector product
(the vectors are L2-normalised when added), which for 10^5 chunks of 512 dimensions is a few
tens of milliseconds on one core — no approximate index is needed at this size, and none can
return a wrong neighbour. Rows are appended into spare capacity and deleted by a mask, so a
:class:`Snapshot` taken on the event loop stays valid while a worker thread reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dtecho.modules.types.rag.lexical import LexicalIndex

__all__ = ["ChunkIndex", "Hit", "IndexedChunk", "Mode", "Snapshot"]

Mode = Literal["hybrid", "dense", "lexical"]


@dataclass(frozen=True)
class IndexedChunk:
    """What retrieval returns of a chunk (``row_id`` is its id in the store)."""

    row_id: int
    document_id: str
    title: str | None
    chunk_index: int
    text: str


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk and its scores (``score`` ranks; the others explain it)."""

    chunk: IndexedChunk
    score: float
    cosine: float
    lexical: float


@dataclass(frozen=True)
class Snapshot:
    """The index as it was when taken: safe to search from another thread."""

    vectors: np.ndarray  # (n, d) float32, a view that later appends never write into
    alive: np.ndarray  # (n,) bool, a copy
    chunks: tuple[IndexedChunk | None, ...]
    lexical: np.ndarray  # (n,) float64 lexical score of each row for this query

    def search(
        self,
        query_vector: np.ndarray | None,
        top_k: int,
        mode: Mode = "hybrid",
        lexical_weight: float = 0.5,
        min_score: float | None = None,
    ) -> list[Hit]:
        """The ``top_k`` best live rows, best first (ties: the earlier row first).

        ``score`` is the cosine (``dense``), the lexical score (``lexical``), or
        ``lexical_weight · lexical + (1 − lexical_weight) · max(cosine, 0)`` (``hybrid``)."""
        n = len(self.chunks)
        if n == 0 or top_k < 1:
            return []
        if query_vector is not None and mode != "lexical":
            cosine = (self.vectors @ query_vector.astype(np.float32)).astype(np.float64)
        else:
            cosine = np.zeros(n)
        if mode == "dense":
            score = cosine.copy()
        elif mode == "lexical":
            score = self.lexical.copy()
        else:
            score = lexical_weight * self.lexical + (1.0 - lexical_weight) * np.maximum(cosine, 0)
        score[~self.alive] = -np.inf
        if mode == "lexical":
            score[self.lexical <= 0] = -np.inf  # nothing in common: not a result
        k = min(top_k, n)
        candidates = np.argpartition(-score, k - 1)[:k] if k < n else np.arange(n)
        # Stable order: best score first, then the row added first.
        order = candidates[np.lexsort((candidates, -score[candidates]))]
        hits = []
        for position in order.tolist():
            value = float(score[position])
            chunk = self.chunks[position]
            if chunk is None or not np.isfinite(value):
                continue
            if min_score is not None and value < min_score:
                break
            hits.append(Hit(chunk, value, float(cosine[position]), float(self.lexical[position])))
        return hits


class ChunkIndex:
    """Every chunk of one (project, module): vectors by position, text in a BM25 index."""

    def __init__(self) -> None:
        self._vectors = np.zeros((0, 0), np.float32)
        self._alive = np.zeros(0, bool)
        self._chunks: list[IndexedChunk | None] = []
        self._position: dict[int, int] = {}  # row_id -> position
        self._by_document: dict[str, list[int]] = {}  # document id -> row ids
        self._lexical = LexicalIndex()
        self._dead = 0

    def __len__(self) -> int:
        return len(self._position)

    @property
    def dimensions(self) -> int | None:
        """The vectors' size, None while the index has never held one."""
        return self._vectors.shape[1] if self._vectors.shape[1] else None

    def documents(self) -> set[str]:
        """The ids of the documents with chunks in the index."""
        return set(self._by_document)

    def add(self, chunks: Sequence[IndexedChunk], vectors: np.ndarray) -> None:
        """Add chunks with their vectors (n, d); rows are normalised here. A chunk already
        present is skipped (a reload may see it twice)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(chunks):
            raise ValueError("one vector per chunk is needed")
        fresh = [i for i, chunk in enumerate(chunks) if chunk.row_id not in self._position]
        if not fresh:
            return
        vectors = vectors[fresh]
        if self.dimensions is not None and vectors.shape[1] != self.dimensions:
            raise ValueError(f"vectors of {vectors.shape[1]} dimensions in an index of "
                             f"{self.dimensions}")  # fmt: skip
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms > 0, norms, 1.0)
        start, count = len(self._chunks), len(fresh)
        self._reserve(start + count, vectors.shape[1])
        self._vectors[start : start + count] = vectors
        self._alive[start : start + count] = True
        for offset, i in enumerate(fresh):
            chunk = chunks[i]
            self._chunks.append(chunk)
            self._position[chunk.row_id] = start + offset
            self._by_document.setdefault(chunk.document_id, []).append(chunk.row_id)
            self._lexical.add(chunk.row_id, chunk.text)

    def remove_document(self, document_id: str) -> int:
        """Drop a document's chunks; the number dropped."""
        row_ids = self._by_document.pop(document_id, [])
        for row_id in row_ids:
            position = self._position.pop(row_id)
            self._alive[position] = False
            self._chunks[position] = None
            self._lexical.remove(row_id)
        self._dead += len(row_ids)
        if self._dead > 1024 and self._dead > len(self._chunks) // 2:
            self._compact()
        return len(row_ids)

    def snapshot(self, query: str | None) -> Snapshot:
        """The index now, with each row's lexical score for ``query`` (zeros without one)."""
        n = len(self._chunks)
        lexical = np.zeros(n)
        if query:
            for row_id, value in self._lexical.scores(query).items():
                lexical[self._position[row_id]] = value
        return Snapshot(self._vectors[:n], self._alive[:n].copy(), tuple(self._chunks), lexical)

    def _reserve(self, rows: int, dimensions: int) -> None:
        capacity = self._vectors.shape[0]
        if rows <= capacity and self._vectors.shape[1] == dimensions:
            return
        # A new array, never a resize in place: snapshots keep reading the old one.
        grown = np.zeros((max(rows, 2 * capacity, 64), dimensions), np.float32)
        alive = np.zeros(grown.shape[0], bool)
        n = len(self._chunks)
        if n:  # the first rows fix the size: an empty index has (0, 0) vectors
            grown[:n] = self._vectors[:n]
            alive[:n] = self._alive[:n]
        self._vectors, self._alive = grown, alive

    def _compact(self) -> None:
        keep = [p for p, chunk in enumerate(self._chunks) if chunk is not None]
        vectors = np.zeros((max(len(keep) * 2, 64), self._vectors.shape[1]), np.float32)
        vectors[: len(keep)] = self._vectors[keep]
        alive = np.zeros(vectors.shape[0], bool)
        alive[: len(keep)] = True
        self._chunks = [self._chunks[p] for p in keep]
        self._position = {c.row_id: p for p, c in enumerate(self._chunks) if c is not None}
        self._vectors, self._alive, self._dead = vectors, alive, 0
