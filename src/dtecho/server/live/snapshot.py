"""One version of the running configuration, as requests read it."""

from __future__ import annotations

from dataclasses import dataclass

from dtecho.config import Settings
from dtecho.engines.registry import ModelRegistry
from dtecho.server.caching import RouteCache

__all__ = ["ConfigSnapshot"]


@dataclass(frozen=True, slots=True)
class ConfigSnapshot:
    """Everything a request derives from reloadable settings; never changed once built.

    ``version`` counts the configurations this process has applied (1: the one it started
    with). ``cache`` is the routes' view of the shared response cache, keyed by this
    version's model fingerprints.
    """

    version: int
    settings: Settings
    models: ModelRegistry
    cache: RouteCache
