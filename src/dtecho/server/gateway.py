"""Opening the store and the auth/quota layer at start-up, closing them at shutdown."""

from __future__ import annotations

import ipaddress
from contextlib import AsyncExitStack

import redis.asyncio as aioredis
import structlog

from dtecho.config import Settings, redact_url
from dtecho.limits import build_limiter
from dtecho.security.accounting import AuditLog, UsageRecorder
from dtecho.security.authenticator import Authenticator
from dtecho.security.jwt import JwtVerifier
from dtecho.security.keys import key_service
from dtecho.server.security import Gateway, public_matchers
from dtecho.store import Store

__all__ = ["is_loopback", "start_gateway"]

_log = structlog.get_logger("dtecho.security")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def start_gateway(state: object, stack: AsyncExitStack) -> None:
    """Open the store, key service, JWT verifier, limiter and accounting on ``state``."""
    settings: Settings = state.settings  # type: ignore[attr-defined]
    auth = settings.auth
    if auth.mode == "none" and not is_loopback(settings.host):
        _log.warning(
            "AUTH_DISABLED_ON_PUBLIC_INTERFACE",
            host=settings.host,
            advice="anyone who can reach this port can use every model and the admin API "
            "unless auth.admin_key is set; set auth.mode to keys, jwt or keys+jwt",
        )
    store = Store(settings.store_url)
    await store.start(migrate=settings.database_auto_migrate)
    stack.push_async_callback(store.close)
    state.store = store  # type: ignore[attr-defined]
    state.readiness["store"] = store.ping  # type: ignore[attr-defined]
    _log.info("store_opened", url=redact_url(settings.store_url), dialect=store.dialect)

    redis_client = None
    url = settings.limits_redis_url
    if url:
        # Its own client: limits wait a little longer than the cache does (an answer that comes
        # late is still exact; a timeout falls back to local limits), and pub/sub blocks.
        redis_client = aioredis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=30
        )
        stack.push_async_callback(redis_client.aclose)

    keys = key_service(settings, store, redis_client)
    await keys.start()
    stack.push_async_callback(keys.close)
    state.keys = keys  # type: ignore[attr-defined]

    jwt = None
    if "jwt" in auth.mode:
        jwt = JwtVerifier(
            auth.issuers, profiles=settings.limits.profiles, default_limits=settings.limits.default
        )
        await jwt.start()
        stack.push_async_callback(jwt.close)

    limiter = build_limiter(settings.limits, redis_client, namespace=settings.cache.namespace)
    stack.push_async_callback(limiter.close)
    usage = UsageRecorder(store, flush_seconds=settings.usage_flush_seconds)
    usage.start()
    stack.push_async_callback(usage.close)
    audit = AuditLog(store, flush_seconds=settings.usage_flush_seconds)
    audit.start()
    stack.push_async_callback(audit.close)

    exact, prefixes = public_matchers(auth.public_paths)
    admin_key = auth.admin_key.get_secret_value() if auth.admin_key else None
    authenticator = Authenticator(
        auth.mode,
        keys=keys,
        jwt=jwt,
        admin_key=admin_key,
        anonymous_limits=settings.limits.anonymous,
        anonymous_is_admin=auth.mode == "none" and admin_key is None and is_loopback(settings.host),
    )
    state.gateway = Gateway(  # type: ignore[attr-defined]
        authenticator=authenticator,
        limiter=limiter,
        usage=usage,
        audit=audit,
        model_defaults=dict(settings.limits.models),
        default_max_tokens=settings.limits.default_max_tokens,
        public_paths=exact,
        public_prefixes=prefixes,
        max_header_bytes=auth.max_header_bytes,
    )
    stack.callback(setattr, state, "gateway", None)
    _log.info("auth_configured", mode=auth.mode, limits_backend="redis" if url else "local")
