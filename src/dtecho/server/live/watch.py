"""Re-apply the config file when it changes on disk (``reload.watch``).

The watch is on the file's directory, not the file: editors save by writing a new file and
renaming it over the old one, and Kubernetes swaps a ConfigMap's ``..data`` symlink, both of
which a watch on the file itself would lose. A change of the file's *bytes* (not a touch, not
a save of the same content) triggers :meth:`LiveConfig.reload` with ``source="file"``; its
outcome is logged and counted, and a refused file leaves the running configuration as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import watchfiles

from dtecho.errors import DtechoError

if TYPE_CHECKING:
    from dtecho.server.live.reloader import LiveConfig

__all__ = ["ConfigWatcher"]

_log = structlog.get_logger("dtecho.config")

DEBOUNCE_MS = 200  # an editor's write-then-rename arrives as one batch
_RETRY_SECONDS = 1.0


class ConfigWatcher:
    """A background task that reloads ``live`` whenever ``path`` changes."""

    def __init__(self, live: LiveConfig, path: Path) -> None:
        self.live = live
        self.path = path
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _relevant(self, _change: watchfiles.Change, changed: str) -> bool:
        name = Path(changed).name
        return name == self.path.name or name.startswith("..")  # ..data: a ConfigMap swap

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dtecho-config-watch")

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        _log.info("config_watch_started", path=str(self.path))
        while not self._stop.is_set():
            try:
                async for _ in watchfiles.awatch(
                    self.path.parent,
                    watch_filter=self._relevant,
                    debounce=DEBOUNCE_MS,
                    stop_event=self._stop,
                    recursive=False,
                ):
                    await self._changed()
            except (OSError, RuntimeError) as exc:  # the directory went away, inotify limits
                _log.warning("config_watch_failed", path=str(self.path), error=str(exc))
                await asyncio.sleep(_RETRY_SECONDS)

    async def _changed(self) -> None:
        if not self.live.file_changed():
            return
        try:
            entry = await self.live.reload(source="file", actor="file")
        except DtechoError as exc:  # logged, counted and kept in the history by reload
            _log.warning(
                "config_file_not_applied", path=str(self.path), code=exc.code, param=exc.param
            )
            return
        except Exception:  # a bug here must not end the watch; the traceback says where
            _log.exception("config_file_reload_crashed", path=str(self.path))
            return
        if entry is not None:
            _log.info("config_file_applied", path=str(self.path), version=entry.version)
