"""API keys: issue, authenticate, rotate and revoke ``sk-dte-…`` keys.

A key is ``sk-dte-`` followed by 32 random bytes in URL-safe base64. The store keeps only
``HMAC-SHA256(server secret, key)``: a leaked database does not leak keys, and without the
server secret the digests cannot even be brute-forced offline. A key id (``key_…``) names the
logical key; rotation gives it a new secret and lets the old one live on for a grace period,
so limits and usage stay with the key across a rotation.

Authenticated keys are cached in-process. A revocation, rotation or update publishes the key
id on Redis (when configured) so every replica drops its cached entry at once; without Redis
the cache lives :data:`LOCAL_CACHE_SECONDS`, so a revocation is seen within that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog

from dtecho.config import ConfigError, LimitProfile, Settings
from dtecho.errors import AuthenticationFailed, Conflict, InvalidRequest, NotFound
from dtecho.security.principal import Principal
from dtecho.store import Store
from dtecho.store.records import ApiKeyRecord, KeySecretRecord

__all__ = [
    "KEY_PREFIX",
    "LOCAL_CACHE_SECONDS",
    "IssuedKey",
    "KeyService",
    "generate_key",
    "load_key_secret",
]

KEY_PREFIX = "sk-dte-"
LOCAL_CACHE_SECONDS = 0.5  # without Redis: how stale a revocation may be seen (well under 1 s)
SHARED_CACHE_SECONDS = 30.0  # with Redis pub/sub: revocations are pushed, this is a backstop
_NEGATIVE_CACHE_SECONDS = 1.0
_MAX_CACHED = 100_000
_KEY_SHAPE = re.compile(r"^sk-dte-[A-Za-z0-9_-]{43}$")
_SHOWN_PREFIX = len(KEY_PREFIX) + 4

_log = structlog.get_logger("dtecho.security")


def generate_key() -> str:
    """A new API key: ``sk-dte-`` + 32 random bytes, URL-safe base64 without padding."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def load_key_secret(configured: str | None, data_dir: Path) -> bytes:
    """The HMAC secret: the configured one, else one generated once into ``data_dir``."""
    if configured:
        return configured.encode()
    path = data_dir / "key-secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two processes starting together agree on whichever secret was written first.
        with contextlib.suppress(FileExistsError):
            fd = path.open("x", encoding="ascii")
            with fd:
                path.chmod(0o600)
                fd.write(secrets.token_hex(32))
    return path.read_text(encoding="ascii").strip().encode()


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key as issued: the record plus the plaintext, shown exactly once."""

    record: ApiKeyRecord
    secret: KeySecretRecord
    key: str


@dataclass(slots=True)
class _Cached:
    principal: Principal
    key_id: str
    valid_until: float  # wall clock: the secret's or key's own expiry, if any
    cached_until: float  # monotonic


def _profile(data: Mapping[str, Any] | None) -> LimitProfile | None:
    if not data:
        return None
    profile = LimitProfile(**data)
    return profile if profile != LimitProfile() else None


def _expired(at: datetime | None, now: datetime) -> bool:
    return at is not None and at <= now


class KeyService:
    """Issues and authenticates API keys against the store, with an in-process cache."""

    def __init__(
        self,
        store: Store,
        secret: bytes,
        *,
        default_limits: LimitProfile,
        redis: Any = None,
        namespace: str = "dtecho",
        cache_seconds: float | None = None,
    ) -> None:
        self.store = store
        self._secret = secret
        self._default_limits = default_limits
        self._redis = redis
        self._channel = f"{namespace}:keys:changed"
        self._cache_seconds = cache_seconds
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._misses: OrderedDict[str, float] = OrderedDict()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = False
        self._generation = 0  # bumped on every change notice, see authenticate()
        self._counts: dict[tuple[str], int] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to key changes published by other replicas (when Redis is configured)."""
        if self._redis is not None:
            self._listener = asyncio.create_task(self._listen(), name="dtecho-key-changes")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def _listen(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._subscribed = True
                self._generation += 1
                self._cache.clear()  # changes missed while we were not subscribed
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message and message.get("type") == "message":
                        self._forget(message["data"].decode("utf-8", "replace"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: fall back to the short TTL until it returns
                if self._subscribed:
                    _log.warning("key_changes_unsubscribed", error=type(exc).__name__)
                self._subscribed = False
                self._generation += 1
                self._cache.clear()
                await asyncio.sleep(1.0)
            finally:
                self._subscribed = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def counts(self) -> dict[tuple[str], int]:
        """Lookup outcomes for metrics: cache_hit, store_lookup, rejected, publish_error."""
        return dict(self._counts)

    def _count(self, event: str) -> None:
        self._counts[(event,)] = self._counts.get((event,), 0) + 1

    # -- authentication -----------------------------------------------------------------------

    def digest(self, key: str) -> str:
        """The stored form of ``key``: hex HMAC-SHA256 under the server secret."""
        return hmac.new(self._secret, key.encode("utf-8"), hashlib.sha256).hexdigest()

    async def authenticate(self, key: str) -> Principal:
        """The principal of ``key``; :class:`AuthenticationFailed` if it is not a live key."""
        if not _KEY_SHAPE.match(key):
            self._count("rejected")
            raise AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
        digest = self.digest(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached.cached_until > now and cached.valid_until > time.time():
            self._count("cache_hit")
            return cached.principal
        missed = self._misses.get(digest)
        if missed is not None and missed > now:
            self._count("rejected")
            raise AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
        self._count("store_lookup")
        generation = self._generation
        found = await self.store.keys.find_by_digest(digest)
        principal, valid_until = self._check(found, digest)
        ttl = self._ttl()
        if generation != self._generation:
            # A change arrived while we read: what we read may predate it (a revocation
            # published between our read and now would otherwise stay cached for the long TTL).
            ttl = min(ttl, LOCAL_CACHE_SECONDS)
        self._remember(digest, _Cached(principal, principal.key_id or "", valid_until, now + ttl))
        return principal

    def _ttl(self) -> float:
        if self._cache_seconds is not None:
            return self._cache_seconds
        return SHARED_CACHE_SECONDS if self._subscribed else LOCAL_CACHE_SECONDS

    def _check(
        self, found: tuple[ApiKeyRecord, KeySecretRecord] | None, digest: str
    ) -> tuple[Principal, float]:
        now = datetime.now(UTC)
        problem = None
        if found is None:
            problem = "Incorrect API key provided."
        else:
            record, secret = found
            # Constant-time, although the lookup by digest already matched: cheap insurance.
            if not hmac.compare_digest(secret.digest, digest):
                problem = "Incorrect API key provided."
            elif record.revoked_at is not None or secret.revoked_at is not None:
                problem = "This API key has been revoked."
            elif _expired(record.expires_at, now) or _expired(secret.expires_at, now):
                problem = "This API key has expired."
        if problem is not None:
            self._count("rejected")
            self._misses[digest] = time.monotonic() + _NEGATIVE_CACHE_SECONDS
            while len(self._misses) > _MAX_CACHED:
                self._misses.popitem(last=False)
            raise AuthenticationFailed(problem, code="invalid_api_key")
        assert found is not None
        record, secret = found
        ends = [at.timestamp() for at in (record.expires_at, secret.expires_at) if at is not None]
        return self.principal_of(record), min(ends, default=float("inf"))

    def principal_of(self, record: ApiKeyRecord) -> Principal:
        """The principal a key acts as."""
        model_limits = {
            model: profile
            for model, data in record.model_limits.items()
            if (profile := _profile(data)) is not None
        }
        return Principal(
            id=f"key:{record.id}",
            kind="api_key",
            subject=record.id,
            project=record.project,
            roles=frozenset(record.roles),
            limits=_profile(record.limits) or self._default_limits,
            model_limits=MappingProxyType(model_limits),
            allowed_models=(
                frozenset(record.allowed_models) if record.allowed_models is not None else None
            ),
            key_id=record.id,
            metadata=MappingProxyType(dict(record.metadata)),
        )

    def _remember(self, digest: str, entry: _Cached) -> None:
        self._misses.pop(digest, None)
        self._cache[digest] = entry
        self._cache.move_to_end(digest)
        while len(self._cache) > _MAX_CACHED:
            self._cache.popitem(last=False)

    def _forget(self, key_id: str) -> None:
        self._generation += 1
        for digest in [d for d, entry in self._cache.items() if entry.key_id == key_id]:
            del self._cache[digest]

    async def _changed(self, key_id: str) -> None:
        """Drop ``key_id`` here and tell the other replicas to drop it too."""
        self._forget(key_id)
        self._misses.clear()
        if self._redis is None:
            return
        try:
            await self._redis.publish(self._channel, key_id)
        except Exception as exc:  # other replicas still see it within their TTL
            self._count("publish_error")
            _log.warning("key_change_not_published", key_id=key_id, error=type(exc).__name__)

    # -- administration -----------------------------------------------------------------------

    def _new_secret(self, key_id: str, now: datetime) -> tuple[KeySecretRecord, str]:
        key = generate_key()
        secret = KeySecretRecord(
            digest=self.digest(key),
            key_id=key_id,
            prefix=key[:_SHOWN_PREFIX],
            last4=key[-4:],
            created_at=now,
            expires_at=None,
            revoked_at=None,
        )
        return secret, key

    async def create(
        self,
        *,
        name: str | None = None,
        project: str | None = None,
        roles: Sequence[str] = (),
        allowed_models: Sequence[str] | None = None,
        limits: Mapping[str, Any] | None = None,
        model_limits: Mapping[str, Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
        expires_at: datetime | None = None,
        created_by: str | None = None,
    ) -> IssuedKey:
        """Issue a new key; the plaintext is in the result and nowhere else."""
        now = datetime.now(UTC)
        if expires_at is not None and expires_at <= now:
            raise InvalidRequest("expires_at must be in the future.", param="expires_at")
        record = ApiKeyRecord(
            id="key_" + secrets.token_hex(8),
            name=name,
            project=project,
            roles=sorted(set(roles)),
            allowed_models=sorted(set(allowed_models)) if allowed_models is not None else None,
            limits=dict(limits or {}),
            model_limits={model: dict(value) for model, value in (model_limits or {}).items()},
            metadata=dict(metadata or {}),
            created_at=now,
            expires_at=expires_at,
            revoked_at=None,
            created_by=created_by,
        )
        secret, key = self._new_secret(record.id, now)
        await self.store.keys.create(record, secret)
        return IssuedKey(record, secret, key)

    async def get(self, key_id: str) -> tuple[ApiKeyRecord, list[KeySecretRecord]]:
        """A key and its secrets (digests are never shown; prefixes and last four are)."""
        record = await self.store.keys.get(key_id)
        if record is None:
            raise NotFound(f"No API key with id '{key_id}'.", param="key_id")
        return record, await self.store.keys.secrets(key_id)

    async def list(
        self, *, include_revoked: bool = False, project: str | None = None
    ) -> list[ApiKeyRecord]:
        return await self.store.keys.list(include_revoked=include_revoked, project=project)

    async def revoke(self, key_id: str) -> ApiKeyRecord:
        """Revoke a key and every secret it has; every replica stops accepting it."""
        if not await self.store.keys.revoke(key_id, datetime.now(UTC)):
            raise NotFound(f"No API key with id '{key_id}'.", param="key_id")
        await self._changed(key_id)
        record, _ = await self.get(key_id)
        return record

    async def rotate(self, key_id: str, *, grace_seconds: float) -> IssuedKey:
        """A new secret for ``key_id``; the current ones stay valid ``grace_seconds`` more."""
        if grace_seconds < 0:
            raise InvalidRequest("grace_seconds must be >= 0.", param="grace_seconds")
        record, _ = await self.get(key_id)
        if record.revoked_at is not None:
            raise Conflict("A revoked key cannot be rotated.", param="key_id")
        now = datetime.now(UTC)
        secret, key = self._new_secret(key_id, now)
        await self.store.keys.add_secret(
            secret, expire_others_at=now + timedelta(seconds=grace_seconds)
        )
        await self._changed(key_id)
        return IssuedKey(record, secret, key)

    async def update(self, key_id: str, **fields: Any) -> ApiKeyRecord:
        """Change a key's name, project, roles, models, limits, metadata or expiry."""
        record = await self.store.keys.update(key_id, **fields)
        if record is None:
            raise NotFound(f"No API key with id '{key_id}'.", param="key_id")
        await self._changed(key_id)
        return record


def describe_key(record: ApiKeyRecord, secrets_: Sequence[KeySecretRecord] = ()) -> dict[str, Any]:
    """A key as the admin API and the CLI show it: never a digest, never the key."""
    data: dict[str, Any] = {
        "id": record.id,
        "object": "api_key",
        "name": record.name,
        "project": record.project,
        "roles": list(record.roles),
        "allowed_models": record.allowed_models,
        "limits": record.limits,
        "model_limits": record.model_limits,
        "metadata": record.metadata,
        "created_at": record.created_at.isoformat(),
        "expires_at": record.expires_at.isoformat() if record.expires_at else None,
        "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None,
        "created_by": record.created_by,
        "status": _status(record),
    }
    if secrets_:
        data["secrets"] = [
            {
                "redacted_value": f"{secret.prefix}…{secret.last4}",
                "created_at": secret.created_at.isoformat(),
                "expires_at": secret.expires_at.isoformat() if secret.expires_at else None,
                "revoked_at": secret.revoked_at.isoformat() if secret.revoked_at else None,
            }
            for secret in secrets_
        ]
    return data


def _status(record: ApiKeyRecord) -> str:
    if record.revoked_at is not None:
        return "revoked"
    if _expired(record.expires_at, datetime.now(UTC)):
        return "expired"
    return "active"


def redacted_key(secret: KeySecretRecord) -> str:
    """How a key is named in lists and logs: prefix, ellipsis, last four."""
    return f"{secret.prefix}…{secret.last4}"


__all__ += ["describe_key", "key_service", "redacted_key"]


def key_service(settings: Settings, store: Store, redis: Any) -> KeyService:
    """The API key service for ``settings`` (the server's and the CLI's)."""
    configured = settings.auth.key_secret
    if configured is None and store.dialect != "sqlite" and "keys" in settings.auth.mode:
        # Replicas sharing a database must share the HMAC secret, or none accepts the others'
        # keys; a secret generated into each replica's data_dir would silently differ.
        raise ConfigError(
            "invalid setting auth.key_secret: required when the store is shared "
            "(database_url is not SQLite) and auth.mode uses keys"
        )
    secret = load_key_secret(
        configured.get_secret_value() if configured else None, settings.data_dir
    )
    return KeyService(
        store,
        secret,
        default_limits=settings.limits.default,
        redis=redis,
        namespace=settings.cache.namespace,
        cache_seconds=settings.auth.key_cache_seconds,
    )
