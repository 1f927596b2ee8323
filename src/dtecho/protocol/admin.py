"""Wire schema of the admin API (``/admin/…``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dtecho.config import LimitProfile
from dtecho.protocol.json_types import DateTime, Float, Int

__all__ = [
    "CreateKeyRequest",
    "ReloadRequest",
    "RollbackRequest",
    "RotateKeyRequest",
    "UpdateKeyRequest",
]

_NAME = Field(None, max_length=200)
_PROJECT = Field(None, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ROLES = Field(default_factory=list, max_length=64)
_MODELS = Field(None, max_length=1000)
_CENTURY_SECONDS = 100 * 365 * 86400  # beyond it a datetime overflows long before it matters


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

    model_config = ConfigDict(
        json_schema_extra={
            "not": {  # one way to say when it expires
                "properties": {
                    "expires_at": {"type": "string"},
                    "expires_in_seconds": {"type": "number"},
                },
                "required": ["expires_at", "expires_in_seconds"],
            },
            "examples": [{"name": "ci", "project": "demo", "expires_in_seconds": 86400}],
        }
    )

    name: str | None = _NAME
    project: str | None = _PROJECT
    roles: list[str] = _ROLES
    allowed_models: list[str] | None = _MODELS  # None: every model
    limits: LimitProfile | None = None  # None: ``limits.default``
    model_limits: dict[str, LimitProfile] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    expires_at: DateTime | None = Field(None, description="When it stops working; in the future.")
    expires_in_seconds: Float | None = Field(None, ge=1, le=_CENTURY_SECONDS)

    @model_validator(mode="after")
    def _one_expiry(self) -> CreateKeyRequest:
        if self.expires_at is not None and self.expires_in_seconds is not None:
            raise ValueError("give expires_at or expires_in_seconds, not both")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            self.expires_at = self.expires_at.replace(tzinfo=UTC)
        return self


class UpdateKeyRequest(_KeyFields):
    """``PATCH /admin/keys/{id}``: the fields given replace the stored ones (at least one)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    name: str | None = _NAME
    project: str | None = _PROJECT
    roles: list[str] | None = Field(None, max_length=64)
    allowed_models: list[str] | None = _MODELS
    limits: LimitProfile | None = None
    model_limits: dict[str, LimitProfile] | None = None
    metadata: dict[str, Any] | None = None
    expires_at: DateTime | None = None


class RotateKeyRequest(BaseModel):
    """``POST /admin/keys/{id}/rotate``: how long the current secret keeps working."""

    model_config = ConfigDict(extra="forbid")

    grace_seconds: Float = Field(3600.0, ge=0, le=90 * 86400)


class ReloadRequest(BaseModel):
    """``POST /admin/config/reload``: no body re-reads the config file; ``settings`` is a whole
    settings document (what the file would hold) to apply in its place."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] | None = Field(
        None,
        description="A whole settings document (the config file's contents as JSON), "
        "validated as the file would be: 400 naming the setting when refused.",
    )


class RollbackRequest(BaseModel):
    """``POST /admin/config/rollback``: the version to return to (default: the previous)."""

    model_config = ConfigDict(extra="forbid")

    version: Int | None = Field(None, ge=1)
