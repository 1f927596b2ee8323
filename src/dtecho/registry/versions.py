"""Versions and aliases of trained models: recording, resolving ``model@ref``, moving aliases.

Every fit and every update is an immutable version (parent, config, training-data
fingerprint, metrics, creator, time) in the store. Aliases (``production``, ``candidate`` or
any name) point at versions; a request names ``dm-…`` (production, else the latest),
``dm-…@3`` (version 3) or ``dm-…@candidate`` (an alias). Moving an alias is one
compare-and-set in the store, so every replica sees the move at once and two concurrent moves
cannot both win.

Resolving an alias is on the prediction path, so the aliases a process read are cached for
``alias_ttl_seconds`` (a move made here is seen here at once; another replica's within the
TTL). A request resolves its version once, at its start, and finishes on it whatever moves.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from dtecho.errors import Conflict, InvalidRequest, NotFound
from dtecho.store.model_versions import AliasMoved, AliasRecord, VersionRecord, VersionRepository

__all__ = [
    "ALIAS_PATTERN",
    "PRODUCTION",
    "ModelRef",
    "ModelVersions",
    "data_fingerprint",
    "parse_ref",
]

PRODUCTION = "production"
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"
_ALIAS = re.compile(ALIAS_PATTERN)


@dataclass(frozen=True, slots=True)
class ModelRef:
    """``dm-…`` alone, or with ``@version`` or ``@alias``."""

    model_id: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        suffix = self.alias or (str(self.version) if self.version is not None else "")
        return f"{self.model_id}@{suffix}" if suffix else self.model_id


def parse_ref(text: str, param: str = "model_id") -> ModelRef:
    """``dm-…``, ``dm-…@3`` or ``dm-…@production``; a malformed suffix is a 400 naming
    ``param`` (an unknown model id is left to the lookup: 404)."""
    model_id, at, suffix = text.partition("@")
    if not at:
        return ModelRef(model_id)
    if suffix.isdigit() and not suffix.startswith("0"):
        return ModelRef(model_id, version=int(suffix))
    if _ALIAS.match(suffix):
        return ModelRef(model_id, alias=suffix)
    raise InvalidRequest(
        f"'{text}' is not a model reference: after '@' comes a version (1, 2, …) or an alias "
        "(lower-case letters, digits, '-' and '_', starting with a letter).",
        param=param,
        code="invalid_model_reference",
    )


def data_fingerprint(*arrays: np.ndarray) -> str:
    """SHA-256 of the arrays' shapes and float64 bytes: equal training data, equal prints."""
    digest = hashlib.sha256()
    for array in arrays:
        values = np.ascontiguousarray(array, dtype=np.float64)
        digest.update(repr(values.shape).encode())
        digest.update(values.tobytes())
    return digest.hexdigest()


def _unknown_version(ref: ModelRef | str, version: int) -> NotFound:
    return NotFound(f"Model '{ref}' has no version {version}.", param="version",
                    code="version_not_found")  # fmt: skip


class ModelVersions:
    """The registry's view for one process (see the module docstring)."""

    def __init__(self, repository: VersionRepository, *, alias_ttl_seconds: float = 1.0) -> None:
        self.repository = repository
        self.alias_ttl_seconds = alias_ttl_seconds
        self._aliases: dict[tuple[str, str], tuple[AliasRecord | None, float]] = {}

    # -- recording -------------------------------------------------------------------------

    async def record(
        self,
        model_id: str,
        version: int,
        *,
        parent: int | None,
        kind: str,
        config: Any,
        fingerprint: str,
        metrics: dict[str, Any],
        creator: str | None,
    ) -> VersionRecord:
        """Store a new version (its weights already written)."""
        record = VersionRecord(
            model_id=model_id,
            version=version,
            parent=parent,
            kind=kind,
            created_at=datetime.now(UTC),
            creator=creator,
            config=config if isinstance(config, dict) else {"config": config},
            data_fingerprint=fingerprint,
            metrics=metrics,
        )
        await self.repository.add(record)
        return record

    # -- reading ---------------------------------------------------------------------------

    async def versions(self, model_id: str) -> list[VersionRecord]:
        return await self.repository.list(model_id)

    async def version(self, model_id: str, version: int) -> VersionRecord:
        found = await self.repository.get(model_id, version)
        if found is None:
            raise _unknown_version(model_id, version)
        return found

    async def aliases(self, model_id: str) -> list[AliasRecord]:
        return await self.repository.aliases(model_id)

    async def alias(self, model_id: str, alias: str, *, fresh: bool = False) -> AliasRecord | None:
        """The alias as last read (within the TTL), or from the store when ``fresh``."""
        key = (model_id, alias)
        cached = self._aliases.get(key)
        now = time.monotonic()
        if not fresh and cached is not None and now - cached[1] < self.alias_ttl_seconds:
            return cached[0]
        found = await self.repository.alias(model_id, alias)
        self._aliases[key] = (found, now)
        return found

    async def resolve(self, ref: ModelRef, latest: int) -> int:
        """The version ``ref`` names now: its own number, its alias's, or (bare) production's,
        else ``latest``. Unknown versions and aliases are 404s; archived versions 409s."""
        if ref.version is not None:
            if ref.version > latest or ref.version < 1:
                raise _unknown_version(ref, ref.version)
            return ref.version
        name = ref.alias or PRODUCTION
        found = await self.alias(ref.model_id, name)
        if found is None:
            if ref.alias is None:
                return latest
            raise NotFound(
                f"Model '{ref.model_id}' has no alias '{ref.alias}'.",
                param="alias",
                code="alias_not_found",
            )
        return found.version

    async def check_servable(self, model_id: str, version: int) -> None:
        """409 when the version's weights were archived."""
        record = await self.repository.get(model_id, version)
        if record is not None and record.status != "available":
            raise Conflict(
                f"Version {version} of '{model_id}' is {record.status}: its weights are gone.",
                code="version_archived",
            )

    # -- moving ----------------------------------------------------------------------------

    async def move(
        self, model_id: str, alias: str, version: int, *, actor: str | None
    ) -> AliasRecord:
        """Point ``alias`` at ``version`` (an available version of the model)."""
        if not _ALIAS.match(alias):
            raise InvalidRequest(f"'{alias}' is not a valid alias name.", param="alias")
        target = await self.repository.get(model_id, version)
        if target is None:
            raise _unknown_version(model_id, version)
        if target.status != "available":
            raise Conflict(
                f"Version {version} is {target.status}; only an available version can be aliased.",
                code="version_archived",
            )
        current = await self.alias(model_id, alias, fresh=True)
        try:
            moved = await self.repository.move_alias(
                model_id, alias, version, actor=actor, expected=current
            )
        except AliasMoved:
            raise Conflict(
                f"Alias '{alias}' was moved by someone else meanwhile; read it and try again.",
                code="alias_moved",
            ) from None
        self._aliases[(model_id, alias)] = (moved, time.monotonic())
        return moved

    async def rollback(self, model_id: str, alias: str, *, actor: str | None) -> AliasRecord:
        """Point ``alias`` back at the version it pointed at before its last move."""
        current = await self.alias(model_id, alias, fresh=True)
        if current is None:
            raise NotFound(f"Model '{model_id}' has no alias '{alias}'.", param="alias",
                           code="alias_not_found")  # fmt: skip
        if current.previous is None:
            raise Conflict(
                f"Alias '{alias}' has not moved since it was set: there is nothing to roll "
                "back to.",
                code="nothing_to_roll_back",
            )
        return await self.move(model_id, alias, current.previous, actor=actor)

    async def delete_alias(self, model_id: str, alias: str) -> None:
        if not await self.repository.delete_alias(model_id, alias):
            raise NotFound(f"Model '{model_id}' has no alias '{alias}'.", param="alias",
                           code="alias_not_found")  # fmt: skip
        self._aliases.pop((model_id, alias), None)

    async def aliased_versions(self, model_id: str) -> dict[int, list[str]]:
        """``{version: [aliases]}`` of the model's aliased versions."""
        named: dict[int, list[str]] = {}
        for alias in await self.repository.aliases(model_id):
            named.setdefault(alias.version, []).append(alias.alias)
        return named

    async def archive(self, model_id: str, version: int) -> None:
        """Mark the version archived (the caller deletes its weights); 409 while aliased."""
        await self.version(model_id, version)
        aliased = (await self.aliased_versions(model_id)).get(version)
        if aliased:
            raise Conflict(
                f"Version {version} is aliased as {', '.join(aliased)}; move the alias first.",
                code="version_aliased",
            )
        await self.repository.set_status(model_id, version, "archived")

    async def forget(self, model_id: str) -> None:
        """Every version and alias of a deleted model."""
        await self.repository.delete_model(model_id)
        for key in [key for key in self._aliases if key[0] == model_id]:
            del self._aliases[key]
