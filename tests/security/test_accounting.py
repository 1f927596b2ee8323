"""Usage and audit writers: batched, additive, and nothing lost while the store is away."""

from __future__ import annotations

import asyncio

from dtecho.security.accounting import AuditLog, UsageRecorder
from dtecho.store import Store
from dtecho.store.migrate import upgrade
from support import create_postgres_database


async def test_usage_is_merged_and_written(store_url: str) -> None:
    store = Store(store_url)
    await store.start()
    usage = UsageRecorder(store, flush_seconds=60)
    for _ in range(5):
        usage.record("key:a", "m", 10, 2)
    usage.record("key:b", "m", 1, 1)
    assert usage.pending == 2  # merged per (principal, model, day)
    await usage.flush()
    rows = {row.principal_id: row for row in await store.usage.query()}
    assert (rows["key:a"].requests, rows["key:a"].prompt_tokens) == (5, 50)
    assert rows["key:a"].completion_tokens == 10 and rows["key:b"].requests == 1
    assert usage.counts() == {("recorded",): 6, ("flushed",): 2}
    await store.close()


async def test_records_survive_a_store_outage(postgres_admin_url: str) -> None:
    url, drop = await asyncio.to_thread(create_postgres_database, postgres_admin_url)
    store = Store(url)
    await store.start()
    usage = UsageRecorder(store, flush_seconds=60)
    audit = AuditLog(store, flush_seconds=60)
    usage.record("key:a", "m", 3, 4)
    audit.record("key.create", "success", actor="admin", target="key_1")
    await asyncio.to_thread(drop)  # the database disappears under the server

    usage.record("key:a", "m", 3, 4)
    await usage.flush()
    await audit.flush()
    assert usage.counts()[("flush_error",)] == 1 and usage.pending == 1
    assert audit.counts()[("flush_error",)] == 1

    # The database comes back (same name, migrated): everything kept is written, once.
    import asyncpg
    from sqlalchemy import make_url

    name = make_url(url).database
    admin = await asyncpg.connect(postgres_admin_url.replace("+asyncpg", ""))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    await asyncio.to_thread(upgrade, url)
    await usage.close()
    await audit.close()
    [row] = await store.usage.query()
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (2, 6, 8)
    [event] = await store.audit.query()
    assert (event.action, event.target) == ("key.create", "key_1")
    await store.close()
    await asyncio.to_thread(drop)
