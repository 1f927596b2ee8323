"""Persistent store of trained DTESN models: one directory per model, one file per version.

Layout under ``<data_dir>/dtesn-models/<id>/``: ``meta.json`` (the model's record) and
``v<version>.npz`` (the estimator, written by ``DTESN.save``: JSON + arrays, no pickle). Every
file is written to a temporary name in the same directory, flushed to disk and renamed over
the target, so a crash mid-write leaves the previous version intact, never a torn file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dtecho.dtesn import DTESN
from dtecho.errors import NotFound

__all__ = ["ModelStore", "atomic_write", "new_model_id"]

_ID = re.compile(r"^dm-[0-9a-f]{16}$")
LOADED_VERSIONS = 32  # estimators kept in memory, least recently used dropped first


def _not_found(model_id: str) -> NotFound:
    return NotFound(f"No DTESN model '{model_id}'.", param="model_id", code="model_not_found")


def new_model_id() -> str:
    return f"dm-{uuid.uuid4().hex[:16]}"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Have ``write`` fill a temporary file beside ``path``, fsync it and rename it over
    ``path`` (atomic on POSIX)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


class ModelStore:
    """Records and versions of trained models, with an in-memory cache of loaded estimators.

    A loaded estimator is never mutated in place: an update works on a fresh copy and swaps it
    in when saved, so concurrent predictions see either the old or the new version.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        # (model id, version) -> estimator: versions are immutable, so several of one model
        # (production, a candidate, pinned requests) stay loaded side by side.
        self._loaded: OrderedDict[tuple[str, int], DTESN] = OrderedDict()
        self._lock = threading.Lock()

    def _dir(self, model_id: str) -> Path:
        if not _ID.match(model_id):
            raise NotFound(
                f"No DTESN model '{model_id}'.", param="model_id", code="model_not_found"
            )
        return self.root / model_id

    def put_record(self, record: dict[str, Any]) -> None:
        """Create or replace a model's record."""
        directory = self._dir(record["id"])
        directory.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(record, indent=2, sort_keys=True).encode()
        atomic_write(directory / "meta.json", lambda tmp: tmp.write_bytes(payload))

    def record(self, model_id: str) -> dict[str, Any]:
        path = self._dir(model_id) / "meta.json"
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            raise _not_found(model_id) from None

    def records(self) -> list[dict[str, Any]]:
        """Every model's record, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for directory in self.root.iterdir():
            meta = directory / "meta.json"
            if _ID.match(directory.name) and meta.is_file():
                found.append(json.loads(meta.read_bytes()))
        return sorted(found, key=lambda r: (r["created"], r["id"]))

    def save_version(self, model_id: str, version: int, model: DTESN) -> None:
        """Persist ``model`` as ``version`` (whole, or not at all) and keep it loaded."""
        directory = self._dir(model_id)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / f"v{version}.npz", model.save)
        self._remember(model_id, version, model)

    def _remember(self, model_id: str, version: int, model: DTESN) -> None:
        with self._lock:
            self._loaded[(model_id, version)] = model
            self._loaded.move_to_end((model_id, version))
            while len(self._loaded) > LOADED_VERSIONS:
                self._loaded.popitem(last=False)  # requests holding it keep their reference

    def loaded(self, model_id: str, version: int) -> DTESN | None:
        """The estimator of ``version`` if it is in memory (no disk access)."""
        with self._lock:
            model = self._loaded.get((model_id, version))
            if model is not None:
                self._loaded.move_to_end((model_id, version))
            return model

    def load(self, model_id: str, version: int) -> DTESN:
        """The estimator of ``version`` (cached after the first load; reads a file, so call
        it from a worker thread when :meth:`loaded` has not got it)."""
        model = self.loaded(model_id, version)
        if model is not None:
            return model
        path = self._dir(model_id) / f"v{version}.npz"
        try:
            model = DTESN.load(path)
        except FileNotFoundError:
            raise NotFound(
                f"Version {version} of '{model_id}' has no weights (archived or deleted).",
                param="version",
                code="version_not_found",
            ) from None
        self._remember(model_id, version, model)
        return model

    def delete_version(self, model_id: str, version: int) -> None:
        """Delete one version's weights (its record stays, archived)."""
        with self._lock:
            self._loaded.pop((model_id, version), None)
        (self._dir(model_id) / f"v{version}.npz").unlink(missing_ok=True)

    def fresh_copy(self, model_id: str, version: int) -> DTESN:
        """An independent estimator of ``version``, safe to mutate."""
        return DTESN.load(self._dir(model_id) / f"v{version}.npz")

    def delete(self, model_id: str) -> None:
        directory = self._dir(model_id)
        if not (directory / "meta.json").is_file():
            raise NotFound(
                f"No DTESN model '{model_id}'.", param="model_id", code="model_not_found"
            )
        with self._lock:
            for key in [key for key in self._loaded if key[0] == model_id]:
                del self._loaded[key]
        shutil.rmtree(directory)
