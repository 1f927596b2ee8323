"""The versions of the configuration this process applied, tried and refused."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from dtecho.config import Settings
from dtecho.server.live.changes import Change

__all__ = ["ConfigHistory", "HistoryEntry", "Outcome", "Source"]

Source = Literal["startup", "file", "api", "rollback"]
"""What asked for the configuration: start-up, the file watcher, the admin API, a rollback."""

Outcome = Literal["probation", "applied", "rolled_back", "rejected"]
"""``probation``: swapped in, its checks still running; ``applied``: kept; ``rolled_back``:
swapped in, failed its checks, the previous one came back; ``rejected``: refused before
anything changed."""


@dataclass(slots=True)
class HistoryEntry:
    """One reload attempt. ``version`` is ``None`` for a rejected one (never swapped in);
    ``settings`` is kept (in memory only, never shown) so that a rollback can return to it."""

    version: int | None
    source: Source
    actor: str
    outcome: Outcome
    changes: list[Change] = field(default_factory=list)
    settings: Settings | None = None
    error: str | None = None
    param: str | None = None
    rollback_of: int | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_dict(self, *, current: int) -> dict[str, Any]:
        """JSON for ``/admin/config/history``: redacted changes, no settings."""
        return {
            "version": self.version,
            "at": self.at.isoformat(),
            "source": self.source,
            "actor": self.actor,
            "outcome": self.outcome,
            "current": self.version is not None and self.version == current,
            "rollback_of": self.rollback_of,
            "error": None if self.error is None else {"message": self.error, "param": self.param},
            "changes": [change.as_dict() for change in self.changes],
        }


class ConfigHistory:
    """The last ``limit`` entries, oldest first."""

    def __init__(self, limit: int = 50) -> None:
        self._entries: deque[HistoryEntry] = deque(maxlen=limit)

    def add(self, entry: HistoryEntry) -> HistoryEntry:
        self._entries.append(entry)
        return entry

    def version(self, version: int) -> HistoryEntry | None:
        """The entry of ``version``, if it is still kept."""
        return next((entry for entry in self._entries if entry.version == version), None)

    def previous_applied(self, current: int) -> HistoryEntry | None:
        """The newest applied version other than ``current``: where a rollback goes by default."""
        for entry in reversed(self._entries):
            if entry.outcome == "applied" and entry.version not in (None, current):
                return entry
        return None

    def __iter__(self) -> Iterator[HistoryEntry]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
