"""Manifests from a control tower, with a last known good for when it is down or wrong.

``GET <control_tower.url>`` answers every manifest this front door serves:
``{"manifests": [{...}, ...]}`` (or a bare list), as JSON or YAML, with an ``ETag``. It is
polled every ``poll_interval_seconds`` with ``If-None-Match`` (a 304 costs nothing), each
attempt bounded by ``timeout`` and retried ``retries`` times with full-jitter backoff.

What was last validated is the *last known good* (LKG): written to disk (atomically) and to
Redis, where a replica that starts while the tower is unreachable finds it. When the tower
cannot be reached, or answers something that is not a manifest list, the front door keeps
serving the LKG and says it is degraded (readiness details, ``dtecho_front_door_degraded``).
One invalid manifest in an otherwise good answer is rejected alone: its project keeps its
previous manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from pathlib import Path
from typing import Any

import httpx
import structlog
import yaml

from dtecho import __version__
from dtecho.config import ControlTowerSettings
from dtecho.modules.catalog import ManifestCatalog, ProjectEntry
from dtecho.modules.manifest import ManifestInvalid, parse_manifest
from dtecho.router.backoff import backoff_delay
from dtecho.services.model_store import atomic_write

__all__ = ["ControlTowerSource", "LastKnownGood", "TowerUnavailable"]

_log = structlog.get_logger("dtecho.modules")
SOURCE = "control_tower"


class TowerUnavailable(Exception):
    """The control tower could not be reached, or answered no usable manifest list."""


class LastKnownGood:
    """The last validated manifest list: a file in the data directory and a Redis key."""

    def __init__(self, path: Path, redis: Any = None, key: str = "dtecho:front_door:lkg") -> None:
        self.path = path
        self.redis = redis
        self.key = key

    async def save(self, manifests: list[dict[str, Any]], etag: str | None) -> None:
        """Keep ``manifests`` (validated, as JSON) and the answer's ETag."""
        document = json.dumps(
            {"etag": etag, "saved_at": time.time(), "manifests": manifests}, sort_keys=True
        ).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(atomic_write, self.path, lambda tmp: tmp.write_bytes(document))
        if self.redis is not None:
            try:
                await self.redis.set(self.key, document)
            except Exception as exc:
                _log.warning("lkg_redis_write_failed", error=str(exc))

    async def load(self) -> tuple[dict[str, Any], str] | None:
        """The saved document and where it came from (``redis`` first: another replica may
        have saved a fresher one), or None when there is none."""
        if self.redis is not None:
            try:
                raw = await self.redis.get(self.key)
                if raw:
                    return json.loads(raw), "redis"
            except Exception as exc:
                _log.warning("lkg_redis_read_failed", error=str(exc))
        try:
            return json.loads(await asyncio.to_thread(self.path.read_bytes)), "disk"
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            _log.warning("lkg_file_unreadable", path=str(self.path), error=str(exc))
            return None


def _manifest_list(body: bytes, content_type: str) -> list[Any]:
    try:
        document = yaml.safe_load(body) if "yaml" in content_type else json.loads(body)
    except (ValueError, yaml.YAMLError) as exc:
        raise TowerUnavailable(f"the answer is not valid JSON or YAML ({exc})") from None
    if isinstance(document, dict) and "manifests" in document:
        document = document["manifests"]
    if not isinstance(document, list):
        raise TowerUnavailable("the answer is not a manifest list ({'manifests': [...]})")
    return document


class ControlTowerSource:
    """Polls the control tower and keeps the catalog's ``control_tower`` projects."""

    kind = SOURCE

    def __init__(
        self,
        catalog: ManifestCatalog,
        settings: ControlTowerSettings,
        lkg: LastKnownGood,
        *,
        client: httpx.AsyncClient | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if settings.url is None:
            raise ValueError("control_tower.url is not set")
        self.catalog = catalog
        self.settings = settings
        self.lkg = lkg
        self.url = settings.url
        headers = {"user-agent": f"dtecho/{__version__}", "accept": "application/json"}
        if settings.token is not None:
            headers["authorization"] = f"Bearer {settings.token.get_secret_value()}"
        self._client = client or httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(settings.timeout), follow_redirects=True
        )
        self._rng = rng or random.Random()
        self._etag: str | None = None
        self._entries: dict[str, ProjectEntry] = {}
        self.degraded = False
        self.reason: str | None = None
        self.serving_from: str | None = None  # "control_tower", "redis", "disk" or None
        self.last_success: float | None = None
        self.counts: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def status(self) -> dict[str, Any]:
        """What ``/admin/manifests`` and readiness show about the tower."""
        return {
            "url": self.url,
            "degraded": self.degraded,
            "reason": self.reason,
            "serving_from": self.serving_from,
            "etag": self._etag,
            "last_success": int(self.last_success) if self.last_success else None,
            "projects": sorted(self._entries),
        }

    async def start(self) -> None:
        """Fetch once; if the tower does not answer, serve the LKG at once (a start never
        waits out the retries) and keep trying in the background. Then poll."""
        try:
            await self.refresh(retries=0)
        except TowerUnavailable:
            await self._serve_lkg()
        self._task = asyncio.create_task(self._poll(), name="dtecho-control-tower")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def refresh(self, retries: int | None = None) -> str:
        """One poll: ``updated``, ``not_modified``; raises :class:`TowerUnavailable` (after
        marking the source degraded) when no usable answer came within the retries
        (``control_tower.retries`` unless given)."""
        try:
            response = await self._fetch(self.settings.retries if retries is None else retries)
        except TowerUnavailable as exc:
            self._degrade(str(exc))
            raise
        if response.status_code == 304:
            self._recovered()
            self._count("not_modified")
            return "not_modified"
        try:
            documents = _manifest_list(response.content, response.headers.get("content-type", ""))
        except TowerUnavailable as exc:
            self._count("invalid")
            self._degrade(str(exc))
            raise
        await self._apply(documents, response.headers.get("etag"))
        self._recovered()
        self._count("updated")
        return "updated"

    async def _fetch(self, retries: int) -> httpx.Response:
        headers = {"if-none-match": self._etag} if self._etag and self._entries else {}
        last_error = "no attempt"
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(backoff_delay(attempt, initial=0.2, maximum=5.0, rng=self._rng))
            try:
                response = await self._client.get(self.url, headers=headers)
            except httpx.HTTPError as exc:
                last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self._count("error")
                continue
            if response.status_code in (200, 304):
                return response
            last_error = f"answered {response.status_code}"
            self._count("error")
            if response.status_code < 500 and response.status_code not in (408, 429):
                break  # a 404 or 401 will not mend itself within the retries
        raise TowerUnavailable(f"control tower {self.url}: {last_error}")

    async def _apply(self, documents: list[Any], etag: str | None) -> None:
        entries: dict[str, ProjectEntry] = {}
        for index, document in enumerate(documents):
            source = f"{SOURCE}[{index}]"
            project = document.get("project") if isinstance(document, dict) else None
            try:
                manifest = parse_manifest(document, source)
                entry = self.catalog.validate(manifest, SOURCE)
            except ManifestInvalid as exc:
                self.catalog.reject(
                    SOURCE, project if isinstance(project, str) else None, exc.errors
                )
                if isinstance(project, str) and project in self._entries:
                    entries[project] = self._entries[project]  # keep its previous manifest
                continue
            if entry.project in entries:
                self.catalog.reject(SOURCE, entry.project, ["project: listed twice"])
                continue
            entries[entry.project] = entry
        self._entries = entries
        self._etag = etag
        self.catalog.replace_source(self.kind, entries)
        self.serving_from = SOURCE
        await self.lkg.save(
            [entry.manifest.model_dump(mode="json") for entry in entries.values()], etag
        )

    async def _serve_lkg(self) -> None:
        found = await self.lkg.load()
        if found is None:
            _log.warning("control_tower_unreachable_no_lkg", url=self.url, reason=self.reason)
            return
        document, origin = found
        entries: dict[str, ProjectEntry] = {}
        for raw in document.get("manifests", []):
            try:
                entry = self.catalog.validate(parse_manifest(raw, f"lkg:{origin}"), SOURCE)
            except ManifestInvalid as exc:  # e.g. a module type no longer installed
                self.catalog.reject(f"lkg:{origin}", raw.get("project"), exc.errors)
                continue
            entries[entry.project] = entry
        self._entries = entries
        self._etag = document.get("etag")
        self.catalog.replace_source(self.kind, entries)
        self.serving_from = origin
        _log.warning("serving_last_known_good", origin=origin, projects=sorted(entries))

    async def _poll(self) -> None:
        failures = 0
        while True:
            interval = self.settings.poll_interval_seconds
            if self.degraded:  # come back soon after an outage, backing off up to the interval
                failures += 1
                interval = min(
                    interval,
                    backoff_delay(failures, initial=1.0, maximum=60.0, rng=self._rng) + 1.0,
                )
            else:
                failures = 0
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except TowerUnavailable:
                pass  # degraded and logged; the LKG keeps serving
            except Exception as exc:
                self._degrade(f"{type(exc).__name__}: {exc}")

    def _degrade(self, reason: str) -> None:
        if not self.degraded or reason != self.reason:
            _log.warning("control_tower_degraded", url=self.url, reason=reason)
        self.degraded, self.reason = True, reason

    def _recovered(self) -> None:
        if self.degraded:
            _log.info("control_tower_recovered", url=self.url)
        self.degraded, self.reason = False, None
        self.last_success = time.time()
        if self.serving_from != SOURCE and self._entries:
            self.serving_from = SOURCE

    def _count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
