"""Reads and writes of the store's tables, one repository per concern."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from dtecho.store.records import ApiKeyRecord, AuditRecord, KeySecretRecord, UsageRecord, aware
from dtecho.store.tables import api_key_secrets, api_keys, audit_log, usage_daily

__all__ = ["AuditRepository", "KeyRepository", "UsageRepository"]

_KEY_FIELDS = frozenset(
    {"name", "project", "roles", "allowed_models", "limits", "model_limits", "metadata",
     "expires_at"}
)  # fmt: skip


def _key(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        name=row.name,
        project=row.project,
        roles=list(row.roles or []),
        allowed_models=list(row.allowed_models) if row.allowed_models is not None else None,
        limits=dict(row.limits or {}),
        model_limits={model: dict(value) for model, value in (row.model_limits or {}).items()},
        metadata=dict(row.metadata or {}),
        created_at=aware(row.created_at),  # type: ignore[arg-type]
        expires_at=aware(row.expires_at),
        revoked_at=aware(row.revoked_at),
        created_by=row.created_by,
    )


def _secret(row: Any) -> KeySecretRecord:
    return KeySecretRecord(
        digest=row.digest,
        key_id=row.key_id,
        prefix=row.prefix,
        last4=row.last4,
        created_at=aware(row.created_at),  # type: ignore[arg-type]
        expires_at=aware(row.expires_at),
        revoked_at=aware(row.revoked_at),
    )


def _utc(value: datetime | None) -> datetime | None:
    """Stored values are UTC; naive inputs are taken to be UTC already."""
    if value is None:
        return None
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


class KeyRepository:
    """API keys and their secrets."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, key: ApiKeyRecord, secret: KeySecretRecord) -> None:
        """Insert a key and its first secret in one transaction."""
        async with self._engine.begin() as connection:
            await connection.execute(
                api_keys.insert().values(
                    id=key.id,
                    name=key.name,
                    project=key.project,
                    roles=list(key.roles),
                    allowed_models=key.allowed_models,
                    limits=key.limits,
                    model_limits=key.model_limits,
                    metadata=key.metadata,
                    created_at=_utc(key.created_at),
                    expires_at=_utc(key.expires_at),
                    revoked_at=_utc(key.revoked_at),
                    created_by=key.created_by,
                )
            )
            await connection.execute(api_key_secrets.insert().values(**_secret_values(secret)))

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(select(api_keys).where(api_keys.c.id == key_id))
            ).first()
        return _key(row) if row is not None else None

    async def list(
        self, *, include_revoked: bool = False, project: str | None = None
    ) -> list[ApiKeyRecord]:
        """Keys ordered by creation."""
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        if project is not None:
            query = query.where(api_keys.c.project == project)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_key(row) for row in rows]

    async def secrets(self, key_id: str) -> list[KeySecretRecord]:
        query = (
            select(api_key_secrets)
            .where(api_key_secrets.c.key_id == key_id)
            .order_by(api_key_secrets.c.created_at)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_secret(row) for row in rows]

    async def find_by_digest(self, digest: str) -> tuple[ApiKeyRecord, KeySecretRecord] | None:
        """The key and secret whose digest is ``digest``."""
        secret_columns = [column.label(f"s_{column.name}") for column in api_key_secrets.c]
        query = (
            select(api_keys, *secret_columns)
            .join(api_key_secrets, api_key_secrets.c.key_id == api_keys.c.id)
            .where(api_key_secrets.c.digest == digest)
        )
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        if row is None:
            return None
        mapping = row._mapping
        secret = KeySecretRecord(
            digest=mapping["s_digest"],
            key_id=mapping["s_key_id"],
            prefix=mapping["s_prefix"],
            last4=mapping["s_last4"],
            created_at=aware(mapping["s_created_at"]),  # type: ignore[arg-type]
            expires_at=aware(mapping["s_expires_at"]),
            revoked_at=aware(mapping["s_revoked_at"]),
        )
        return _key(row), secret

    async def add_secret(self, secret: KeySecretRecord, *, expire_others_at: datetime) -> None:
        """Rotation: the key's other live secrets expire by ``expire_others_at``; add this one."""
        deadline = _utc(expire_others_at)
        others = and_(
            api_key_secrets.c.key_id == secret.key_id, api_key_secrets.c.revoked_at.is_(None)
        )
        async with self._engine.begin() as connection:
            await connection.execute(
                update(api_key_secrets)
                .where(
                    others,
                    or_(
                        api_key_secrets.c.expires_at.is_(None),
                        api_key_secrets.c.expires_at > deadline,
                    ),
                )
                .values(expires_at=deadline)
            )
            await connection.execute(api_key_secrets.insert().values(**_secret_values(secret)))

    async def revoke(self, key_id: str, at: datetime) -> bool:
        """Revoke the key and its secrets (keeping earlier revocation times); False if unknown."""
        when = _utc(at)
        async with self._engine.begin() as connection:
            exists = (
                await connection.execute(select(api_keys.c.id).where(api_keys.c.id == key_id))
            ).first()
            if exists is None:
                return False
            await connection.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=when)
            )
            await connection.execute(
                update(api_key_secrets)
                .where(api_key_secrets.c.key_id == key_id, api_key_secrets.c.revoked_at.is_(None))
                .values(revoked_at=when)
            )
        return True

    async def update(self, key_id: str, **fields: Any) -> ApiKeyRecord | None:
        """Replace the given fields of a key; None when there is no such key."""
        unknown = set(fields) - _KEY_FIELDS
        if unknown:
            raise ValueError(f"cannot update key fields: {', '.join(sorted(unknown))}")
        if "expires_at" in fields:
            fields["expires_at"] = _utc(fields["expires_at"])
        if fields:
            async with self._engine.begin() as connection:
                await connection.execute(
                    update(api_keys).where(api_keys.c.id == key_id).values(**fields)
                )
        return await self.get(key_id)


def _secret_values(secret: KeySecretRecord) -> dict[str, Any]:
    return {
        "digest": secret.digest,
        "key_id": secret.key_id,
        "prefix": secret.prefix,
        "last4": secret.last4,
        "created_at": _utc(secret.created_at),
        "expires_at": _utc(secret.expires_at),
        "revoked_at": _utc(secret.revoked_at),
    }


class UsageRepository:
    """Requests and tokens per principal, model and day."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, deltas: Sequence[UsageRecord]) -> None:
        """Add ``deltas`` to the stored counts (an atomic upsert per row)."""
        if not deltas:
            return
        insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        rows = [
            {
                "principal_id": delta.principal_id,
                "model": delta.model,
                "day": delta.day,
                "requests": delta.requests,
                "prompt_tokens": delta.prompt_tokens,
                "completion_tokens": delta.completion_tokens,
                "project": delta.project,
            }
            for delta in deltas
        ]
        statement = insert(usage_daily)
        statement = statement.on_conflict_do_update(
            index_elements=["principal_id", "model", "day", "project"],
            set_={
                name: getattr(usage_daily.c, name) + getattr(statement.excluded, name)
                for name in ("requests", "prompt_tokens", "completion_tokens")
            },
        )
        async with self._engine.begin() as connection:
            # Sorted, so concurrent writers lock rows in one order and cannot deadlock.
            key = ("principal_id", "model", "day", "project")
            for row in sorted(rows, key=lambda r: tuple(r[k] for k in key)):
                await connection.execute(statement, row)

    async def erase(self, principal_id: str) -> int:
        """Delete the principal's usage rows; how many."""
        async with self._engine.begin() as connection:
            deleted = await connection.execute(
                delete(usage_daily).where(usage_daily.c.principal_id == principal_id)
            )
        return int(deleted.rowcount or 0)

    async def query(
        self,
        *,
        principal_id: str | None = None,
        model: str | None = None,
        since: date | None = None,
        until: date | None = None,
        project: str | None = None,
    ) -> list[UsageRecord]:
        """Rows matching the filters (dates inclusive), by day, principal, model and project
        (``project=""`` is the plain API)."""
        query = select(usage_daily).order_by(
            usage_daily.c.day,
            usage_daily.c.principal_id,
            usage_daily.c.model,
            usage_daily.c.project,
        )
        if project is not None:
            query = query.where(usage_daily.c.project == project)
        if principal_id is not None:
            query = query.where(usage_daily.c.principal_id == principal_id)
        if model is not None:
            query = query.where(usage_daily.c.model == model)
        if since is not None:
            query = query.where(usage_daily.c.day >= since)
        if until is not None:
            query = query.where(usage_daily.c.day <= until)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            UsageRecord(
                row.principal_id,
                row.model,
                row.day,
                int(row.requests),
                int(row.prompt_tokens),
                int(row.completion_tokens),
                row.project,
            )
            for row in rows
        ]


class AuditRepository:
    """The append-only audit log: events are never deleted or changed, except that a
    subject's erasure blanks the personal data of the events it made (:meth:`redact`)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def redact(self, actor: str) -> int:
        """Blank the details and client address of ``actor``'s events (kept: when, what,
        the outcome — the log still shows that something happened); how many."""
        async with self._engine.begin() as connection:
            changed = await connection.execute(
                update(audit_log)
                .where(audit_log.c.actor == actor)
                .values(actor="erased-subject", client_ip=None, details={"erased": True})
            )
        return int(changed.rowcount or 0)

    async def append(self, events: Sequence[AuditRecord]) -> None:
        if not events:
            return
        rows = [
            {
                "at": _utc(event.at),
                "actor": event.actor,
                "action": event.action,
                "outcome": event.outcome,
                "target": event.target,
                "client_ip": event.client_ip,
                "request_id": event.request_id,
                "details": event.details,
            }
            for event in events
        ]
        async with self._engine.begin() as connection:
            await connection.execute(audit_log.insert(), rows)

    async def query(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[AuditRecord]:
        """Events matching the filters, newest first; ``before_id`` pages backwards."""
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        for column, value in (
            (audit_log.c.actor, actor),
            (audit_log.c.action, action),
            (audit_log.c.target, target),
            (audit_log.c.outcome, outcome),
        ):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(audit_log.c.at >= _utc(since))
        if until is not None:
            query = query.where(audit_log.c.at <= _utc(until))
        if before_id is not None:
            query = query.where(audit_log.c.id < before_id)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [
            AuditRecord(
                at=aware(row.at),  # type: ignore[arg-type]
                actor=row.actor,
                action=row.action,
                outcome=row.outcome,
                target=row.target,
                client_ip=row.client_ip,
                request_id=row.request_id,
                details=dict(row.details or {}),
                id=int(row.id),
            )
            for row in rows
        ]
