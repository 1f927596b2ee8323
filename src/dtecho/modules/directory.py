"""Manifests from a directory: ``*.json``, ``*.yaml`` and ``*.yml``, one project per file.

The directory is read at start-up and again whenever a file in it changes (watchfiles, on
the directory, so an editor's write-and-rename and a Kubernetes ConfigMap's symlink swap are
both seen). A file that fails to parse or validate is rejected; if its project was served
before, the previous manifest stays in service.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import structlog
import watchfiles

from dtecho.modules.catalog import ManifestCatalog, ProjectEntry
from dtecho.modules.manifest import ManifestInvalid, parse_manifest

__all__ = ["DirectorySource"]

_log = structlog.get_logger("dtecho.modules")
SUFFIXES = (".json", ".yaml", ".yml")
DEBOUNCE_MS = 200
_RETRY_SECONDS = 1.0


class DirectorySource:
    """Keeps the catalog's ``dir`` projects equal to the valid manifests of ``path``."""

    kind = "dir"

    def __init__(self, catalog: ManifestCatalog, path: Path) -> None:
        self.catalog = catalog
        self.path = path
        self._contents: dict[Path, bytes] = {}
        self._entries: dict[Path, ProjectEntry] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def scan(self) -> None:
        """Read every manifest file again and apply the set (unchanged files are not re-read
        into new entries: their instances keep running)."""
        files = (
            sorted(p for p in self.path.iterdir() if p.suffix in SUFFIXES and p.is_file())
            if self.path.is_dir()
            else []
        )
        seen: set[Path] = set()
        for file in files:
            seen.add(file)
            try:
                content = file.read_bytes()
            except OSError as exc:
                self.catalog.reject(f"dir:{file}", None, [f"(file): cannot be read: {exc}"])
                continue
            if self._contents.get(file) == content:  # unchanged: its outcome stands
                continue
            self._contents[file] = content
            source = f"dir:{file}"
            try:
                manifest = parse_manifest(content, str(file))
                entry = self.catalog.validate(manifest, source)
            except ManifestInvalid as exc:
                project = self._entries[file].project if file in self._entries else None
                self.catalog.reject(source, project, exc.errors)
                continue  # the file's previous entry, if any, stays in service
            self._entries[file] = entry
        for gone in set(self._entries) - seen:
            del self._entries[gone]
            self._contents.pop(gone, None)
        by_project: dict[str, ProjectEntry] = {}
        for file, entry in sorted(self._entries.items()):
            if entry.project in by_project:
                self.catalog.reject(
                    f"dir:{file}",
                    entry.project,
                    [f"project: also defined by {by_project[entry.project].source}"],
                )
                continue
            by_project[entry.project] = entry
        self.catalog.replace_source(self.kind, by_project)

    def start(self) -> None:
        """Scan now, then watch the directory in the background."""
        self.scan()
        self._task = asyncio.create_task(self._watch(), name="dtecho-manifest-watch")

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        _log.info("manifest_watch_started", path=str(self.path))
        while not self._stop.is_set():
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                async for _ in watchfiles.awatch(
                    self.path, stop_event=self._stop, debounce=DEBOUNCE_MS, recursive=False
                ):
                    self.scan()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.warning("manifest_watch_failed", path=str(self.path), error=str(exc))
                await asyncio.sleep(_RETRY_SECONDS)
                with contextlib.suppress(Exception):
                    self.scan()
