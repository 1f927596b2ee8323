"""From a request's credential to its :class:`~dtecho.security.principal.Principal`.

``auth.mode`` decides what is accepted: ``none`` (everyone is the anonymous principal; a
valid key or the admin key still identifies its holder), ``keys``, ``jwt`` or ``keys+jwt``.
The admin key is accepted in every mode. Comparisons with the admin key are constant-time.
"""

from __future__ import annotations

import hmac

from dtecho.config import LimitProfile
from dtecho.errors import AuthenticationFailed, DtechoError
from dtecho.security.jwt import JwtVerifier
from dtecho.security.keys import KEY_PREFIX, KeyService
from dtecho.security.principal import ANONYMOUS_ID, Principal

__all__ = ["ADMIN", "Authenticator"]

ADMIN = Principal(id="admin", kind="admin", subject="admin", roles=frozenset({"admin"}))


class Authenticator:
    """Resolves the bearer credential of a request to a principal, or refuses it."""

    def __init__(
        self,
        mode: str,
        *,
        keys: KeyService,
        jwt: JwtVerifier | None,
        admin_key: str | None,
        anonymous_limits: LimitProfile,
        anonymous_is_admin: bool,
    ) -> None:
        self.mode = mode
        self.keys = keys
        self.jwt = jwt
        self._admin_key = admin_key.encode() if admin_key else None
        self.anonymous = Principal(
            id=ANONYMOUS_ID,
            kind="anonymous",
            subject=ANONYMOUS_ID,
            roles=frozenset({"admin"}) if anonymous_is_admin else frozenset(),
            limits=anonymous_limits,
        )

    @property
    def open(self) -> bool:
        """Whether requests without credentials are served (``auth.mode: none``)."""
        return self.mode == "none"

    def _is_admin_key(self, credential: str) -> bool:
        return self._admin_key is not None and hmac.compare_digest(
            credential.encode(), self._admin_key
        )

    async def authenticate(self, credential: str | None) -> Principal:
        """The principal of ``credential``; :class:`AuthenticationFailed` when refused."""
        if credential is not None and self._is_admin_key(credential):
            return ADMIN
        if self.open:
            return await self._open_mode(credential)
        if not credential:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        if credential.startswith(KEY_PREFIX) and "keys" in self.mode:
            return await self.keys.authenticate(credential)
        if self.jwt is not None and JwtVerifier.looks_like_jwt(credential):
            return await self.jwt.verify(credential)
        raise AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")

    async def _open_mode(self, credential: str | None) -> Principal:
        # SDKs insist on some api_key; with auth off a placeholder must not be refused. A real
        # key still identifies its holder, so its limits and usage apply.
        if credential and credential.startswith(KEY_PREFIX):
            try:
                return await self.keys.authenticate(credential)
            except DtechoError:
                pass
        return self.anonymous
