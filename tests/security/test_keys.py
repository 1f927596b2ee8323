"""The API key service over a real store and a real Redis."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from dtecho.config import LimitProfile
from dtecho.errors import AuthenticationFailed
from dtecho.security.keys import KEY_PREFIX, KeyService, generate_key, load_key_secret
from dtecho.store import Store


def test_keys_have_the_documented_shape() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 43
        assert set(key[len(KEY_PREFIX) :]) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


def test_the_generated_secret_is_kept_and_private(tmp_path: Path) -> None:
    first = load_key_secret(None, tmp_path)
    assert load_key_secret(None, tmp_path) == first and len(first) == 64
    assert (tmp_path / "key-secret").stat().st_mode & 0o077 == 0
    assert load_key_secret("configured", tmp_path) == b"configured"


async def test_digest_depends_on_the_server_secret(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    await store.start()
    one = KeyService(store, b"one", default_limits=LimitProfile())
    two = KeyService(store, b"two", default_limits=LimitProfile())
    issued = await one.create(name="x")
    assert issued.secret.digest == one.digest(issued.key) != two.digest(issued.key)
    assert issued.key not in issued.secret.digest
    assert (await one.authenticate(issued.key)).key_id == issued.record.id
    with pytest.raises(AuthenticationFailed):
        await two.authenticate(issued.key)  # another server secret: not our key
    await store.close()


async def test_a_revocation_during_a_lookup_is_not_cached_for_long(
    tmp_path: Path, redis_url: str
) -> None:
    # Replica B reads a key from the store while replica A revokes it and publishes the change.
    # The read is wrapped (not replaced) to interleave the two deterministically.
    url = f"sqlite+aiosqlite:///{tmp_path / 's.db'}"
    namespace = f"race-{uuid.uuid4().hex[:8]}"
    store_a, store_b = Store(url), Store(url)
    await store_a.start()
    await store_b.start()
    redis_a, redis_b = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    a = KeyService(store_a, b"s", default_limits=LimitProfile(), redis=redis_a, namespace=namespace)
    b = KeyService(store_b, b"s", default_limits=LimitProfile(), redis=redis_b, namespace=namespace)
    await a.start()
    await b.start()
    for _ in range(500):
        if b._subscribed:
            break
        await asyncio.sleep(0.01)
    issued = await a.create(name="x")
    read = store_b.keys.find_by_digest

    async def read_then_revoked(digest: str):  # type: ignore[no-untyped-def]
        found = await read(digest)
        await a.revoke(issued.record.id)
        await asyncio.sleep(0.1)  # B's listener handles the published change
        return found

    store_b.keys.find_by_digest = read_then_revoked  # type: ignore[method-assign]
    await b.authenticate(issued.key)  # answered from what it read before the revocation
    store_b.keys.find_by_digest = read  # type: ignore[method-assign]
    await asyncio.sleep(0.6)  # past the short TTL such a read is cached for
    with pytest.raises(AuthenticationFailed):
        await b.authenticate(issued.key)
    for service in (a, b):
        await service.close()
    for store in (store_a, store_b):
        await store.close()
    for client in (redis_a, redis_b):
        await client.aclose()
