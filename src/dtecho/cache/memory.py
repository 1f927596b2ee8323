"""L1: an in-process LRU of serialised responses, bounded by entry count and by bytes.

A small ``OrderedDict`` implementation rather than ``cachetools.LRUCache``: cachetools has a
single ``maxsize`` measured by one ``getsizeof`` function, so it cannot bound entries *and*
bytes at once, its eviction hook means overriding ``popitem``, and per-entry expiry with an
injected clock would need yet another subclass. The whole LRU here is ``move_to_end`` and
``popitem(last=False)``, which ``OrderedDict`` does in O(1).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from dtecho.cache.entry import Entry

__all__ = ["MemoryTier"]


class MemoryTier:
    """LRU of :class:`Entry` bounded by ``max_entries`` and ``max_bytes`` (sum of payload sizes).

    ``clock`` gives the current time in the same seconds as ``Entry.expires_at``. Not
    thread-safe: the cache lives on one event loop.
    """

    def __init__(
        self, max_entries: int, max_bytes: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("max_entries and max_bytes must be >= 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        """Sum of the payload sizes held."""
        return self._nbytes

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        return list(self._entries)

    def get(self, key: str) -> Entry | None:
        """The live entry under ``key``, marked most recently used; expired entries are dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            self._pop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: Entry) -> list[tuple[str, Entry]]:
        """Store ``entry`` as most recently used; return what was evicted, oldest first."""
        self.discard(key)
        if entry.nbytes > self.max_bytes:
            # Storing it would push out everything else and then itself: refuse it alone.
            return [(key, entry)]
        self._entries[key] = entry
        self._nbytes += entry.nbytes
        evicted: list[tuple[str, Entry]] = []
        while len(self._entries) > self.max_entries or self._nbytes > self.max_bytes:
            old_key, old = self._entries.popitem(last=False)
            self._nbytes -= old.nbytes
            evicted.append((old_key, old))
        return evicted

    def discard(self, key: str) -> bool:
        """Remove ``key``; whether it was there."""
        return self._pop(key) is not None

    def remove_matching(self, predicate: Callable[[Entry], bool]) -> list[str]:
        """Remove every entry for which ``predicate`` is true; return their keys.

        A linear scan: invalidation is rare and the tier holds at most ``max_entries``, so this
        is cheaper overall than keeping tag and model indexes up to date on every put, hit and
        eviction.
        """
        doomed = [key for key, entry in self._entries.items() if predicate(entry)]
        for key in doomed:
            self._pop(key)
        return doomed

    def clear(self) -> int:
        """Remove everything; how many entries there were."""
        count = len(self._entries)
        self._entries.clear()
        self._nbytes = 0
        return count

    def _pop(self, key: str) -> Entry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._nbytes -= entry.nbytes
        return entry
