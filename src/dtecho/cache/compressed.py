"""L2: an in-process tier of zstd-compressed responses that L1 demotes its evictions into."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import zstandard

from dtecho.cache.entry import Entry
from dtecho.cache.memory import MemoryTier

__all__ = ["CompressedTier"]


class CompressedTier:
    """LRU of compressed :class:`Entry` payloads, bounded by entries and compressed bytes.

    The same LRU as L1, holding zstd frames instead of msgpack bytes; ``get`` and the
    evictions ``put`` returns give the decompressed payload, so both tiers keep one contract
    (:class:`~dtecho.cache.entry.LocalTier`).
    """

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        level: int = 3,
    ) -> None:
        self._store = MemoryTier(max_entries, max_bytes, clock=clock)
        # Level 3 is zstd's default: ~300 MB/s compression, so demoting a 100 KB response
        # costs well under a millisecond of the event loop.
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._decompressor = zstandard.ZstdDecompressor()

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: object) -> bool:
        return key in self._store

    @property
    def nbytes(self) -> int:
        """Compressed bytes held."""
        return self._store.nbytes

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        return self._store.keys()

    def get(self, key: str) -> Entry | None:
        """The live entry under ``key`` with its payload decompressed."""
        stored = self._store.get(key)
        return None if stored is None else self._expand(stored)

    def put(self, key: str, entry: Entry) -> list[tuple[str, Entry]]:
        """Compress and store ``entry``; return the evicted entries, decompressed, oldest first."""
        compressed = dataclasses.replace(entry, payload=self._compressor.compress(entry.payload))
        return [(k, self._expand(e)) for k, e in self._store.put(key, compressed)]

    def discard(self, key: str) -> bool:
        """Remove ``key``; whether it was there."""
        return self._store.discard(key)

    def remove_matching(self, predicate: Callable[[Entry], bool]) -> list[str]:
        """Remove the entries ``predicate`` accepts (it sees tags/model/expiry, not payloads)."""
        return self._store.remove_matching(predicate)

    def clear(self) -> int:
        """Remove everything; how many entries there were."""
        return self._store.clear()

    def _expand(self, stored: Entry) -> Entry:
        return dataclasses.replace(stored, payload=self._decompressor.decompress(stored.payload))
