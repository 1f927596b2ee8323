"""What the in-process tiers hold, and the contract both of them keep."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Entry", "LocalTier"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached response.

    ``payload`` is the msgpack serialisation of the value (never the live object: callers get a
    fresh copy on every hit, so one request mutating its response cannot change another's).
    ``expires_at`` is in seconds of the cache's clock; ``tags`` and ``model`` are what
    invalidation matches.
    """

    payload: bytes
    expires_at: float
    tags: tuple[str, ...] = ()
    model: str | None = None

    @property
    def nbytes(self) -> int:
        """Bytes the payload occupies (what the byte bounds count)."""
        return len(self.payload)


class LocalTier(Protocol):
    """An in-process tier: a bounded LRU mapping of keys to :class:`Entry`.

    Expired entries are never returned. ``put`` replaces any entry under the same key and
    returns the entries it evicted to stay within its bounds, least recently used first (an
    entry too large for the tier on its own is returned immediately, not stored).
    """

    def get(self, key: str) -> Entry | None: ...

    def put(self, key: str, entry: Entry) -> list[tuple[str, Entry]]: ...

    def discard(self, key: str) -> bool: ...

    def remove_matching(self, predicate: Callable[[Entry], bool]) -> list[str]: ...

    def clear(self) -> int: ...

    def __len__(self) -> int: ...

    @property
    def nbytes(self) -> int: ...
