"""The projects the front door serves: validated manifests by project, from every source.

Each source (the manifest directory, the control tower) hands the catalog its whole current
set of manifests; the catalog validates each against the installed module types, keeps the
previous version of a project whose new manifest is invalid, and swaps its table in one
assignment, so a request reads either the old or the new table, never half of one.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from dtecho.modules.base import Module
from dtecho.modules.manifest import ManifestInvalid, ModuleSpec, ProjectManifest, describe_errors

__all__ = ["ManifestCatalog", "ProjectEntry", "Rejection"]

_log = structlog.get_logger("dtecho.modules")
MAX_REJECTIONS = 100


@dataclass(frozen=True)
class ProjectEntry:
    """One project's manifest, its modules' validated configurations, and where it came from."""

    manifest: ProjectManifest
    configs: Mapping[str, BaseModel]  # module name -> its type's Config
    source: str  # "dir:/path/acme.yaml", "control_tower"
    fingerprint: str
    loaded_at: float = field(default_factory=time.time)
    # The enabled modules by name, and whatever a router keeps per module (the front door's
    # request targets): built once per manifest, not once per request.
    modules: Mapping[str, ModuleSpec] = field(init=False)
    routes: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        enabled = {m.name: m for m in self.manifest.modules if m.enabled}
        object.__setattr__(self, "modules", enabled)

    @property
    def project(self) -> str:
        return self.manifest.project

    def as_dict(self) -> dict[str, Any]:
        """JSON for ``/admin/manifests`` (secret references are shown: they are not secrets)."""
        return {
            "project": self.project,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "loaded_at": int(self.loaded_at),
            "modules": [
                {"name": m.name, "type": m.type, "version": m.version, "enabled": m.enabled}
                for m in self.manifest.modules
            ],
        }


@dataclass(frozen=True)
class Rejection:
    """A manifest that was refused, and why (one line per wrong field)."""

    source: str
    project: str | None
    errors: tuple[str, ...]
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "project": self.project,
            "errors": list(self.errors),
            "at": int(self.at),
        }


class ManifestCatalog:
    """Validated manifests by project, merged over the sources."""

    def __init__(self, types: Mapping[str, type[Module]]) -> None:
        self.types = dict(types)
        self._by_source: dict[str, dict[str, ProjectEntry]] = {}
        self._projects: dict[str, ProjectEntry] = {}
        self.rejections: deque[Rejection] = deque(maxlen=MAX_REJECTIONS)
        self._listeners: list[
            Callable[[dict[str, ProjectEntry], dict[str, ProjectEntry]], Any]
        ] = []
        self.counts: dict[tuple[str, str], int] = {}  # (source kind, outcome)

    def get(self, project: str) -> ProjectEntry | None:
        """The project's current entry, or None."""
        return self._projects.get(project)

    def projects(self) -> dict[str, ProjectEntry]:
        """Every served project (a snapshot)."""
        return dict(self._projects)

    def on_change(
        self, listener: Callable[[dict[str, ProjectEntry], dict[str, ProjectEntry]], Any]
    ) -> None:
        """Call ``listener(old, new)`` after every swap of the table."""
        self._listeners.append(listener)

    def validate(self, manifest: ProjectManifest, source: str) -> ProjectEntry:
        """Check each module's type is installed and its ``config`` fits the type's Config."""
        errors: list[str] = []
        configs: dict[str, BaseModel] = {}
        for index, module in enumerate(manifest.modules):
            kind = self.types.get(module.type)
            if kind is None:
                installed = ", ".join(sorted(self.types)) or "none"
                errors.append(
                    f"modules[{index}].type: '{module.type}' is not an installed module type "
                    f"(installed: {installed})"
                )
                continue
            try:
                configs[module.name] = kind.Config.model_validate(module.config)
            except ValidationError as exc:
                errors.extend(describe_errors(exc, f"modules[{index}].config"))
            except ValueError as exc:  # e.g. a secret reference that cannot be resolved
                errors.append(f"modules[{index}].config: {exc}")
        if errors:
            raise ManifestInvalid(source, errors)
        return ProjectEntry(manifest, configs, source, manifest.fingerprint())

    def reject(self, source: str, project: str | None, errors: list[str]) -> None:
        """Record a refused manifest (shown by ``/admin/manifests``, logged once)."""
        self.rejections.append(Rejection(source, project, tuple(errors)))
        self._count(source, "rejected")
        _log.warning("manifest_rejected", source=source, project=project, errors=errors)

    def replace_source(self, source_kind: str, entries: Mapping[str, ProjectEntry]) -> None:
        """Make ``entries`` the whole set of projects of ``source_kind`` and swap the table.

        A project two sources define is served from the directory (an operator's local file
        overrides the tower); the other copy is recorded as rejected.
        """
        previous = self._by_source.get(source_kind, {})
        self._by_source[source_kind] = {  # an unchanged manifest keeps its entry (and instance)
            project: (
                previous[project]
                if project in previous
                and previous[project].fingerprint == entry.fingerprint
                and previous[project].source == entry.source
                else entry
            )
            for project, entry in entries.items()
        }
        merged: dict[str, ProjectEntry] = {}
        for kind in sorted(self._by_source, key=lambda k: k != "dir"):  # the directory first
            for project, entry in self._by_source[kind].items():
                if project in merged and merged[project].source != entry.source:
                    if kind == source_kind:
                        other = merged[project].source
                        self.reject(entry.source, project, [f"project: already defined by {other}"])
                    continue
                merged[project] = entry
        old, self._projects = self._projects, merged
        changed = {p for p in set(old) | set(merged) if old.get(p) is not merged.get(p)}
        if changed:
            self._count(source_kind, "applied")
            _log.info("manifests_applied", source=source_kind, projects=sorted(changed))
            for listener in self._listeners:
                listener(old, merged)

    def _count(self, source: str, outcome: str) -> None:
        kind = source.split(":", 1)[0]
        self.counts[(kind, outcome)] = self.counts.get((kind, outcome), 0) + 1
