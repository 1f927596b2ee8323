"""The principal: who a request acts for, and what it may do. Every later layer reads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from dtecho.config import LimitProfile

__all__ = ["ANONYMOUS_ID", "Principal", "PrincipalKind"]

PrincipalKind = Literal["anonymous", "api_key", "jwt", "admin"]
ANONYMOUS_ID = "anonymous"
_NO_LIMITS = LimitProfile()


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    ``id`` is stable and unique across kinds (``key:<key id>``, ``jwt:<issuer>|<subject>``,
    ``admin``, ``anonymous``): limits and usage are counted against it.
    """

    id: str
    kind: PrincipalKind
    subject: str
    project: str | None = None
    roles: frozenset[str] = frozenset()
    limits: LimitProfile = _NO_LIMITS
    model_limits: Mapping[str, LimitProfile] = field(default_factory=lambda: MappingProxyType({}))
    allowed_models: frozenset[str] | None = None  # None: every model
    key_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # JWT's

    @property
    def is_admin(self) -> bool:
        """Whether the principal may use the admin API."""
        return self.kind == "admin" or "admin" in self.roles

    def may_use_model(self, model: str) -> bool:
        """Whether ``model`` is on the principal's allow-list (every model when it has none)."""
        return self.allowed_models is None or model in self.allowed_models

    def limits_for(self, model: str | None, defaults: Mapping[str, LimitProfile]) -> LimitProfile:
        """The (principal, model) limits: the principal's own for ``model``, else ``defaults``."""
        if model is None:
            return _NO_LIMITS
        return self.model_limits.get(model) or defaults.get(model) or _NO_LIMITS
