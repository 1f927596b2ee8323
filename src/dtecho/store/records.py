"""What the store holds, as plain frozen records (every datetime timezone-aware UTC)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

__all__ = ["ApiKeyRecord", "AuditRecord", "KeySecretRecord", "UsageRecord", "aware"]


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A logical API key: who it is for and what it may do. Its secrets are separate rows."""

    id: str
    name: str | None
    project: str | None
    roles: list[str]
    allowed_models: list[str] | None  # None: every model
    limits: dict[str, Any]  # LimitProfile fields as plain data
    model_limits: dict[str, dict[str, Any]]
    metadata: dict[str, Any]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    created_by: str | None


@dataclass(frozen=True, slots=True)
class KeySecretRecord:
    """One secret of a key, stored only as its HMAC digest."""

    digest: str  # hex HMAC-SHA256 of the key: the lookup key
    key_id: str
    prefix: str  # shown for identification, e.g. "sk-dte-AbCd"
    last4: str
    created_at: datetime
    expires_at: datetime | None  # set when a rotation gives it a grace period
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Requests and tokens of one principal on one model in one project on one UTC day."""

    principal_id: str
    model: str
    day: date
    requests: int
    prompt_tokens: int
    completion_tokens: int
    project: str = ""  # the front door's project; "" for the plain API


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit event. Never holds a secret or a token."""

    at: datetime
    actor: str
    action: str
    outcome: str  # success | failure | denied
    target: str | None = None
    client_ip: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    id: int | None = None  # assigned by the store


def aware(value: datetime | None) -> datetime | None:
    """``value`` as UTC-aware: SQLite has no time zones, so values come back naive, and
    were stored as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
