"""Bearer JWT verification against configured issuers, with keys from config or a JWKS URL.

One :class:`JwtVerifier` serves every issuer of ``auth.issuers``. A token picks its issuer by
its (unverified) ``iss`` claim; after that only that issuer's keys and algorithms count. Keys
are parsed once — static ones at construction, fetched ones when a JWKS arrives — so a
verification with cached keys does no I/O. Keys named by the token itself (``jwk``, ``jku``,
``x5u`` headers) are never used.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import aiohttp
import jwt
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.types import Options

from dtecho.config import ConfigError, JwtIssuerSettings, LimitProfile, redact_url
from dtecho.errors import AuthenticationFailed, PermissionDenied
from dtecho.security.principal import Principal

__all__ = ["JwtVerifier"]

_log = structlog.get_logger("dtecho.security")

_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_MAX_JWKS_BYTES = 1024 * 1024

# Which key families may verify each algorithm. Pinning the family to the algorithm is what
# defeats algorithm confusion: an HS* token is only ever checked against a shared secret, so
# an RSA public key can never be misused as an HMAC secret.
_FAMILIES: dict[str, frozenset[str]] = {
    **{f"HS{n}": frozenset({"oct"}) for n in (256, 384, 512)},
    **{f"RS{n}": frozenset({"RSA"}) for n in (256, 384, 512)},
    **{f"PS{n}": frozenset({"RSA"}) for n in (256, 384, 512)},
    "ES256": frozenset({"EC:P-256"}),
    "ES384": frozenset({"EC:P-384"}),
    "ES512": frozenset({"EC:P-521"}),
    "EdDSA": frozenset({"OKP:Ed25519", "OKP:Ed448"}),
}
_CURVES = {"secp256r1": "EC:P-256", "secp384r1": "EC:P-384", "secp521r1": "EC:P-521"}
_PRIVATE_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
_JWK_ALGORITHMS: dict[str, Any] = {
    "RSA": RSAAlgorithm,
    "EC": ECAlgorithm,
    "OKP": OKPAlgorithm,
    "oct": HMACAlgorithm,
}


@dataclass(frozen=True, slots=True)
class _Key:
    """One parsed verification key."""

    family: str  # "oct", "RSA", "EC:P-256", "EC:P-384", "EC:P-521", "OKP:Ed25519", "OKP:Ed448"
    material: Any  # a cryptography public key, or the secret's bytes for "oct"
    kid: str | None = None
    alg: str | None = None  # a JWK's own "alg": then the only algorithm it may verify

    def fits(self, alg: str) -> bool:
        return self.family in _FAMILIES.get(alg, ()) and (self.alg is None or self.alg == alg)


class _UnusableKey(ValueError):
    """A key cannot be used; the message never contains key material."""


class _FetchFailed(Exception):
    """The JWKS endpoint answered with something other than a JWKS."""


def _public_key_family(key: Any) -> tuple[str, Any]:
    """The family of a cryptography key and its public half."""
    if isinstance(key, _PRIVATE_KEYS):
        key = key.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key
    if isinstance(key, ec.EllipticCurvePublicKey):
        family = _CURVES.get(key.curve.name)
        if family is None:
            raise _UnusableKey(f"unsupported EC curve {key.curve.name}")
        return family, key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "OKP:Ed25519", key
    if isinstance(key, ed448.Ed448PublicKey):
        return "OKP:Ed448", key
    raise _UnusableKey(f"unsupported key type {type(key).__name__}")


def _parse_pem(text: str) -> _Key:
    data = text.encode()
    try:
        if "-----BEGIN CERTIFICATE" in text:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError:
        raise _UnusableKey("not a PEM public key or certificate") from None
    family, public = _public_key_family(key)
    return _Key(family, public)


def _parse_jwk(data: Any, *, allow_secret: bool) -> _Key | None:
    """A JWK as a key; ``None`` for one that is not for signatures or not allowed here."""
    if not isinstance(data, dict):
        raise _UnusableKey("a JWK must be a JSON object")
    kty = data.get("kty")
    algorithm = _JWK_ALGORITHMS.get(kty) if isinstance(kty, str) else None
    if algorithm is None:
        raise _UnusableKey(f"unsupported JWK kty {kty!r}")
    if data.get("use", "sig") != "sig":
        return None  # an encryption key
    if kty == "oct" and not allow_secret:
        # Security: HMAC secrets come only from the issuer's configured keys. A published
        # JWKS is public, so a secret in it would let anyone sign.
        return None
    kid = data.get("kid")
    alg = data.get("alg")
    if kid is not None and not isinstance(kid, str):
        raise _UnusableKey("a JWK kid must be a string")
    if alg is not None and alg not in _FAMILIES:
        return None  # meant for an algorithm we never verify
    try:
        material = algorithm.from_jwk(data)
    except (jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        raise _UnusableKey(f"invalid {kty} JWK") from None
    if kty == "oct":
        return _Key("oct", material, kid=kid, alg=alg)
    family, public = _public_key_family(material)
    return _Key(family, public, kid=kid, alg=alg)


def _parse_jwks(data: Any, *, allow_secret: bool) -> list[_Key]:
    """The usable keys of a JWKS; raises :class:`_UnusableKey` when there is none."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise _UnusableKey('a JWKS must be a JSON object with a "keys" list')
    keys: list[_Key] = []
    for entry in data["keys"]:
        try:
            key = _parse_jwk(entry, allow_secret=allow_secret)
        except _UnusableKey as exc:
            _log.debug("jwk_skipped", reason=str(exc))  # one bad entry must not hide the rest
            continue
        if key is not None:
            keys.append(key)
    if not keys:
        raise _UnusableKey("the JWKS holds no usable signing key")
    return keys


def _parse_static_key(text: str) -> list[_Key]:
    """A configured key: a PEM, a JWK or JWKS as JSON, otherwise an HMAC shared secret."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        return [_parse_pem(stripped)]
    if stripped.startswith("{"):
        # A broken JWK must fail here: falling through to "shared secret" would turn text
        # meant as a public key into an HMAC secret.
        try:
            data = json.loads(stripped)
        except ValueError:
            raise _UnusableKey("looks like JSON but does not parse") from None
        if isinstance(data, dict) and "keys" in data:
            return _parse_jwks(data, allow_secret=True)
        key = _parse_jwk(data, allow_secret=True)
        if key is None:
            raise _UnusableKey("the JWK is not a signing key")
        return [key]
    return [_Key("oct", text.encode())]


class _IssuerKeys:
    """One issuer's settings, its static keys and its JWKS cache."""

    def __init__(self, settings: JwtIssuerSettings, static: list[_Key]) -> None:
        self.settings = settings
        self.static = static
        self.fetched: list[_Key] = []
        self.fetched_at: float | None = None  # last successful fetch (monotonic)
        self.failed_at: float | None = None  # last failed fetch, cleared by a success
        self.refetched_at: float | None = None  # last fetch started for an unknown kid
        self.inflight: asyncio.Task[None] | None = None

    def all_keys(self) -> list[_Key]:
        return self.static + self.fetched


def _fail(message: str, code: str) -> AuthenticationFailed:
    return AuthenticationFailed(message, code=code)


def _translate(exc: jwt.PyJWTError) -> AuthenticationFailed:
    """Our error for a PyJWT one; subclasses before their bases."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return _fail("the token has expired", "token_expired")
    if isinstance(exc, jwt.ImmatureSignatureError):
        return _fail("the token is not yet valid", "token_not_yet_valid")
    if isinstance(exc, jwt.InvalidSignatureError):
        return _fail("the token's signature is invalid", "invalid_signature")
    if isinstance(exc, jwt.InvalidAudienceError):
        return _fail("the token is not meant for this audience", "invalid_audience")
    if isinstance(exc, jwt.InvalidIssuerError):
        return _fail("the token's issuer is not trusted", "invalid_issuer")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return _fail(f"the token lacks the required {exc.claim} claim", "missing_claim")
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return _fail("the token's algorithm is not allowed", "invalid_algorithm")
    return _fail("the token is malformed", "invalid_token")


def _string_set(value: Any, claim: str) -> frozenset[str]:
    """A claim holding a list of strings or one space-separated string."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    raise _fail(f"the {claim} claim must be a list of strings or a string", "invalid_token")


class JwtVerifier:
    """Verifies bearer JWTs from the configured issuers and maps their claims to a Principal.

    ``profiles`` are the named limit profiles a token's ``limits_claim`` may name;
    ``default_limits`` apply when neither the token nor its issuer sets any. Await
    :meth:`start` before the first :meth:`verify` of an issuer with a ``jwks_url``, and
    :meth:`close` at shutdown. Raises :class:`~dtecho.config.ConfigError` for an unusable
    static key or an issuer listed twice.
    """

    def __init__(
        self,
        issuers: Sequence[JwtIssuerSettings],
        *,
        profiles: Mapping[str, LimitProfile],
        default_limits: LimitProfile,
    ) -> None:
        self._profiles = dict(profiles)
        self._default_limits = default_limits
        self._issuers: dict[str, _IssuerKeys] = {}
        for index, settings in enumerate(issuers):
            if settings.issuer in self._issuers:
                raise ConfigError(f"auth.issuers[{index}]: issuer {settings.issuer} is repeated")
            static: list[_Key] = []
            for number, secret in enumerate(settings.keys):
                try:
                    static.extend(_parse_static_key(secret.get_secret_value()))
                except _UnusableKey as exc:
                    raise ConfigError(f"auth.issuers[{index}].keys[{number}]: {exc}") from None
            self._issuers[settings.issuer] = _IssuerKeys(settings, static)
        self._session: aiohttp.ClientSession | None = None
        self._counts: Counter[str] = Counter()

    async def start(self) -> None:
        """Open the HTTP session and fetch each issuer's JWKS once (a failure is only logged)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"accept": "application/json"})
        await asyncio.gather(
            *(
                self._fetch_shared(state)
                for state in self._issuers.values()
                if state.settings.jwks_url
            )
        )

    async def close(self) -> None:
        """Stop fetches in flight and close the HTTP session."""
        tasks = [state.inflight for state in self._issuers.values() if state.inflight]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        """Whether ``token`` is shaped like a JWS: three base64url segments, unlike an API key."""
        return bool(_JWT_SHAPE.match(token))

    def counts(self) -> dict[tuple[str], int]:
        """Counters for metrics: JWKS fetches started and failed, tokens accepted and rejected."""
        names = ("jwks_fetch", "jwks_fetch_error", "accepted", "rejected")
        return {(name,): self._counts[name] for name in names}

    async def verify(self, token: str) -> Principal:
        """The principal of a valid ``token``.

        Raises :class:`AuthenticationFailed` (401) with a ``code`` naming the problem
        (``invalid_token``, ``invalid_algorithm``, ``invalid_issuer``, ``unknown_key``,
        ``invalid_signature``, ``token_expired``, ``token_not_yet_valid``,
        ``invalid_audience``, ``missing_claim``) for every invalid token, and
        :class:`PermissionDenied` (403, ``unknown_limits_profile``) for a valid token naming
        a limits profile that is not configured.
        """
        try:
            principal = await self._verify(token)
        except (AuthenticationFailed, PermissionDenied):
            self._counts["rejected"] += 1
            raise
        self._counts["accepted"] += 1
        return principal

    async def _verify(self, token: str) -> Principal:
        if not self.looks_like_jwt(token):
            raise _fail("the bearer token is not a JWT", "invalid_token")
        try:
            unverified = jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _fail("the token is malformed", "invalid_token") from None
        header, claims = unverified["header"], unverified["payload"]
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise _fail("the token's header names no algorithm", "invalid_token")
        if alg.lower() == "none":
            raise _fail("unsigned tokens are not accepted", "invalid_algorithm")
        iss = claims.get("iss")
        state = self._issuers.get(iss) if isinstance(iss, str) else None
        if state is None:
            raise _fail("the token's issuer is not trusted", "invalid_issuer")
        if alg not in state.settings.algorithms:
            raise _fail("the token's algorithm is not allowed for its issuer", "invalid_algorithm")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _fail("the token's kid must be a string", "invalid_token")
        keys = await self._candidate_keys(state, alg, kid)
        if not keys:
            raise _fail("no key of the issuer matches the token", "unknown_key")
        return self._principal(self._decode(token, alg, keys, state.settings), state.settings)

    async def _candidate_keys(self, state: _IssuerKeys, alg: str, kid: str | None) -> list[_Key]:
        fetched = False
        if state.settings.jwks_url:
            fetched = await self._refresh_if_stale(state)
        if kid is None:
            return [key for key in state.all_keys() if key.fits(alg)]
        found = [key for key in state.all_keys() if key.kid == kid and key.fits(alg)]
        known = found or any(key.kid == kid for key in state.all_keys())
        if not known and state.settings.jwks_url and not fetched:
            await self._refetch_for_kid(state)
            found = [key for key in state.all_keys() if key.kid == kid and key.fits(alg)]
        # A key configured without a kid may have signed a token that names one.
        return found or [key for key in state.all_keys() if key.kid is None and key.fits(alg)]

    async def _refresh_if_stale(self, state: _IssuerKeys) -> bool:
        """Fetch the JWKS when the cache has expired; whether this call waited for a fetch."""
        now = time.monotonic()
        cache_seconds = state.settings.jwks_cache_seconds
        if state.fetched_at is not None and now - state.fetched_at < cache_seconds:
            return False
        # While the endpoint is failing, retry once per refetch interval rather than making
        # every request wait for a timeout; the stale keys stay in use meanwhile.
        interval = state.settings.jwks_refetch_interval_seconds
        if state.failed_at is not None and now - state.failed_at < interval:
            return False
        await self._fetch_shared(state)
        return True

    async def _refetch_for_kid(self, state: _IssuerKeys) -> None:
        """Refetch for an unknown kid, at most once per refetch interval (or join one in flight)."""
        if state.inflight is None:
            now = time.monotonic()
            interval = state.settings.jwks_refetch_interval_seconds
            # Security: random kids must not turn into a stream of fetches to the issuer.
            if state.refetched_at is not None and now - state.refetched_at < interval:
                return
            state.refetched_at = now
        await self._fetch_shared(state)

    async def _fetch_shared(self, state: _IssuerKeys) -> None:
        """Run one fetch for the issuer; concurrent callers wait for the same one."""
        if state.inflight is None:
            state.inflight = asyncio.create_task(self._fetch(state))
        # Shielded: a cancelled request must not cancel the fetch others are waiting for.
        await asyncio.shield(state.inflight)

    async def _fetch(self, state: _IssuerKeys) -> None:
        """Fetch the issuer's JWKS; on failure keep the keys cached so far."""
        url = state.settings.jwks_url
        assert url is not None
        try:
            if self._session is None:
                raise RuntimeError("JwtVerifier.start() must be awaited before fetching a JWKS")
            self._counts["jwks_fetch"] += 1
            keys = await self._download(self._session, url, state.settings.jwks_timeout_seconds)
        except (aiohttp.ClientError, TimeoutError, _FetchFailed, _UnusableKey) as exc:
            self._counts["jwks_fetch_error"] += 1
            state.failed_at = time.monotonic()
            _log.warning(
                "jwks_fetch_failed",
                issuer=state.settings.issuer,
                url=redact_url(url),
                error=str(exc) or type(exc).__name__,
                cached_keys=len(state.fetched),
            )
            return
        finally:
            state.inflight = None
        state.fetched = keys
        state.fetched_at = time.monotonic()
        state.failed_at = None
        _log.debug("jwks_fetched", issuer=state.settings.issuer, keys=len(keys))

    @staticmethod
    async def _download(session: aiohttp.ClientSession, url: str, timeout: float) -> list[_Key]:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                raise _FetchFailed(f"HTTP status {response.status}")
            body = bytearray()
            # Bounded: a misbehaving endpoint must not make us buffer without limit.
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > _MAX_JWKS_BYTES:
                    raise _FetchFailed("the JWKS is larger than 1 MiB")
        try:
            data = json.loads(body)
        except ValueError:
            raise _FetchFailed("the JWKS is not JSON") from None
        return _parse_jwks(data, allow_secret=False)

    @staticmethod
    def _decode(
        token: str, alg: str, keys: list[_Key], settings: JwtIssuerSettings
    ) -> dict[str, Any]:
        options: Options = {
            "require": list(settings.required_claims),
            # Without a configured audience any aud is acceptable; PyJWT would reject them all.
            "verify_aud": bool(settings.audience),
        }
        for key in keys:
            try:
                return jwt.decode(
                    token,
                    key.material,
                    algorithms=[alg],
                    audience=settings.audience or None,
                    issuer=settings.issuer,
                    leeway=settings.leeway_seconds,
                    options=options,
                )
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
                continue  # another of the issuer's keys may have signed it
            except jwt.PyJWTError as exc:
                raise _translate(exc) from exc
        raise _fail("the token's signature is invalid", "invalid_signature")

    def _principal(self, claims: Mapping[str, Any], settings: JwtIssuerSettings) -> Principal:
        subject = claims.get(settings.subject_claim)
        if subject is None or subject == "":
            raise _fail(f"the token lacks the {settings.subject_claim} claim", "missing_claim")
        if not isinstance(subject, str | int) or isinstance(subject, bool):
            raise _fail(f"the {settings.subject_claim} claim must be a string", "invalid_token")
        subject = str(subject)

        project = claims.get(settings.project_claim) if settings.project_claim else None
        if project is not None and not isinstance(project, str):
            raise _fail(f"the {settings.project_claim} claim must be a string", "invalid_token")

        roles = set(settings.default_roles)
        for claim in (settings.roles_claim, settings.scope_claim):
            if claim and claims.get(claim) is not None:
                roles |= _string_set(claims[claim], claim)

        allowed_models = None
        if settings.models_claim and claims.get(settings.models_claim) is not None:
            allowed_models = _string_set(claims[settings.models_claim], settings.models_claim)

        limits = settings.default_limits or self._default_limits
        if settings.limits_claim and claims.get(settings.limits_claim) is not None:
            name = claims[settings.limits_claim]
            if not isinstance(name, str) or name not in self._profiles:
                raise PermissionDenied(
                    "the token names an unknown limits profile", code="unknown_limits_profile"
                )
            limits = self._profiles[name]

        return Principal(
            id=f"jwt:{settings.issuer}|{subject}",
            kind="jwt",
            subject=subject,
            project=project,
            roles=frozenset(roles),
            limits=limits,
            allowed_models=allowed_models,
            metadata=MappingProxyType({"issuer": settings.issuer}),
            claims=MappingProxyType(dict(claims)),
        )
