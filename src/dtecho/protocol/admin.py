"""Wire schema of the admin API (``/admin/…``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dtecho.config import LimitProfile

__all__ = ["CreateKeyRequest", "RotateKeyRequest", "UpdateKeyRequest"]

_NAME = Field(None, max_length=200)
_PROJECT = Field(None, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ROLES = Field(default_factory=list, max_length=64)
_MODELS = Field(None, max_length=1000)


class _KeyFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def record_fields(self) -> dict[str, Any]:
        """The fields to store, with limit profiles as plain data."""
        data = self.model_dump(exclude_unset=True, exclude={"expires_in_seconds"})
        if "limits" in data:
            data["limits"] = _plain(self.limits)  # type: ignore[attr-defined]
        if "model_limits" in data:
            data["model_limits"] = {
                model: _plain(profile)
                for model, profile in (self.model_limits or {}).items()  # type: ignore[attr-defined]
            }
        expires_in = getattr(self, "expires_in_seconds", None)
        if expires_in is not None:
            data["expires_at"] = datetime.now(UTC) + timedelta(seconds=expires_in)
        return data


def _plain(profile: LimitProfile | None) -> dict[str, Any]:
    return profile.model_dump(exclude_defaults=True) if profile is not None else {}


class CreateKeyRequest(_KeyFields):
    """``POST /admin/keys``: every field optional; the key is shown once in the answer."""

    name: str | None = _NAME
    project: str | None = _PROJECT
    roles: list[str] = _ROLES
    allowed_models: list[str] | None = _MODELS  # None: every model
    limits: LimitProfile | None = None  # None: ``limits.default``
    model_limits: dict[str, LimitProfile] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    expires_at: datetime | None = None
    expires_in_seconds: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_expiry(self) -> CreateKeyRequest:
        if self.expires_at is not None and self.expires_in_seconds is not None:
            raise ValueError("give expires_at or expires_in_seconds, not both")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            self.expires_at = self.expires_at.replace(tzinfo=UTC)
        return self


class UpdateKeyRequest(_KeyFields):
    """``PATCH /admin/keys/{id}``: the fields given replace the stored ones."""

    name: str | None = _NAME
    project: str | None = _PROJECT
    roles: list[str] | None = Field(None, max_length=64)
    allowed_models: list[str] | None = _MODELS
    limits: LimitProfile | None = None
    model_limits: dict[str, LimitProfile] | None = None
    metadata: dict[str, Any] | None = None
    expires_at: datetime | None = None


class RotateKeyRequest(BaseModel):
    """``POST /admin/keys/{id}/rotate``: how long the current secret keeps working."""

    model_config = ConfigDict(extra="forbid")

    grace_seconds: float = Field(3600.0, ge=0, le=90 * 86400)
