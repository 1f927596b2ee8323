"""What differs between two configurations, shown redacted, and which of it needs a restart.

Pure functions over :class:`~dtecho.config.Settings`: no I/O, nothing started.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dtecho.config import InProcessModelSpec, Settings, redact_url

__all__ = ["RELOADABLE", "Change", "diff_settings", "restart_required"]

RELOADABLE: tuple[tuple[str, ...], ...] = (
    ("models",),  # models, deployments, routing: retries, breaker, hedging, fallbacks, probes
    ("limits", "models"),  # per (principal, model) defaults
    ("limits", "default_max_tokens"),
    ("limits", "anonymous"),
    ("cache", "enabled"),
    ("cache", "strategy"),
    ("cache", "default_ttl_seconds"),
    ("cache", "compression_threshold"),
    ("reload", "probation_seconds"),
)
"""Settings a reload applies; a change anywhere else needs a restart.

An allow-list, so that a setting added later is safe (restart-only) until someone makes it
live: the rest is read once at start-up (sockets, the store, Redis clients, the key service,
JWT verifiers, batchers, the cache's tier sizes).
"""

_ABSENT: Any = object()


@dataclass(frozen=True, slots=True)
class Change:
    """One setting that differs: its path as a config file spells it, both values redacted.

    ``old`` is ``None`` when the setting was added (a new model or deployment), ``new`` when
    it was removed.
    """

    path: tuple[str | int, ...]
    old: Any
    new: Any

    @property
    def name(self) -> str:
        """The dotted path (``models.0.deployments.1.base_url``)."""
        return ".".join(str(part) for part in self.path)

    @property
    def kind(self) -> str:
        """``added``, ``removed`` or ``changed``."""
        if self.old is _ABSENT:
            return "added"
        return "removed" if self.new is _ABSENT else "changed"

    def as_dict(self) -> dict[str, Any]:
        """JSON for ``/admin/config/history``."""
        return {
            "path": self.name,
            "change": self.kind,
            "old": None if self.old is _ABSENT else self.old,
            "new": None if self.new is _ABSENT else self.new,
        }


def _shown(value: Any) -> Any:
    # Settings.redacted() hides secrets and the Redis/database URLs; any other URL (an
    # upstream's base_url) may still carry user:password@, hidden here.
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    if isinstance(value, dict):
        return {key: _shown(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shown(item) for item in value]
    return value


def _same_item(old: dict[str, Any], new: dict[str, Any]) -> bool:
    # Another model (or deployment) at the same place in its list is one change, not a
    # field-by-field comparison of two unrelated things.
    return all(old.get(key) == new.get(key) for key in ("name", "engine"))


def _walk(
    old: Any, new: Any, old_shown: Any, new_shown: Any, path: tuple[str | int, ...]
) -> Iterator[Change]:
    """Differences of the raw dumps (secrets compare by value), reported with the redacted
    dumps' values at the same place."""
    if isinstance(old, dict) and isinstance(new, dict) and _same_item(old, new):
        for key in [*old, *(key for key in new if key not in old)]:
            yield from _walk(
                old.get(key, _ABSENT),
                new.get(key, _ABSENT),
                old_shown.get(key, _ABSENT) if isinstance(old_shown, dict) else _ABSENT,
                new_shown.get(key, _ABSENT) if isinstance(new_shown, dict) else _ABSENT,
                (*path, key),
            )
        return
    if isinstance(old, list) and isinstance(new, list):
        for index in range(max(len(old), len(new))):
            yield from _walk(
                old[index] if index < len(old) else _ABSENT,
                new[index] if index < len(new) else _ABSENT,
                old_shown[index] if index < len(old) else _ABSENT,
                new_shown[index] if index < len(new) else _ABSENT,
                (*path, index),
            )
        return
    if old is _ABSENT and new is _ABSENT:
        return
    if old is _ABSENT or new is _ABSENT or old != new:
        yield Change(
            path,
            old_shown if old is _ABSENT else _shown(old_shown),
            new_shown if new is _ABSENT else _shown(new_shown),
        )


def diff_settings(old: Settings, new: Settings) -> list[Change]:
    """Every setting that differs from ``old`` to ``new``, in the order of the settings.

    A changed secret is reported with both values shown as ``**********``.
    """
    return list(_walk(old.model_dump(), new.model_dump(), old.redacted(), new.redacted(), ()))


def _reloadable(path: tuple[str | int, ...]) -> bool:
    return any(path[: len(prefix)] == prefix for prefix in RELOADABLE)


def restart_required(old: Settings, new: Settings, changes: list[Change]) -> list[str]:
    """The dotted paths among ``changes`` that a reload cannot apply (empty: all can).

    A model run in-process (Aphrodite, vLLM) cannot be added or changed live either: the
    new copy would have to load beside the old one on the same accelerator.
    """
    paths = [change.name for change in changes if not _reloadable(change.path)]
    running = {spec.name: spec for spec in old.models}
    for index, spec in enumerate(new.models):
        if isinstance(spec, InProcessModelSpec) and running.get(spec.name) != spec:
            paths.append(f"models.{index}")
    return paths
