"""The store against both SQLite and a real PostgreSQL, through its public API."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from datetime import UTC, date, datetime, timedelta

import pytest

from dtecho.store import Store
from dtecho.store.migrate import current, head, upgrade
from dtecho.store.records import ApiKeyRecord, AuditRecord, KeySecretRecord, UsageRecord

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def key(key_id: str = "key_1", **fields: object) -> ApiKeyRecord:
    values: dict[str, object] = {
        "id": key_id,
        "name": "ci",
        "project": "alpha",
        "roles": ["reader"],
        "allowed_models": ["dtesn-echo"],
        "limits": {"rpm": 600, "budget_period": "month"},
        "model_limits": {"dtesn-echo": {"tpm": 1000}},
        "metadata": {"team": "echo", "nested": {"n": [1, 2]}},
        "created_at": NOW,
        "expires_at": NOW + timedelta(days=30),
        "revoked_at": None,
        "created_by": "admin",
    }
    values.update(fields)
    return ApiKeyRecord(**values)  # type: ignore[arg-type]


def secret(digest: str, key_id: str = "key_1", at: datetime = NOW) -> KeySecretRecord:
    return KeySecretRecord(digest, key_id, "sk-dte-AbCd", "wxyz", at, None, None)


@pytest.fixture
async def store(store_url: str):
    opened = Store(store_url)
    await opened.start()
    yield opened
    await opened.close()


def test_migrations_reach_head_and_are_idempotent(store_url: str) -> None:
    assert current(store_url) is None
    upgrade(store_url)
    assert current(store_url) == head()
    upgrade(store_url)  # nothing left to do
    assert current(store_url) == head()


def test_concurrent_upgrades_both_succeed(store_url: str) -> None:
    # Threads in one process (two stores starting together) …
    errors: list[BaseException] = []

    def run() -> None:
        try:
            upgrade(store_url)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert current(store_url) == head()


def test_concurrent_upgrades_from_two_processes(store_url: str) -> None:
    # … and replicas starting together on an empty database.
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("DTECHO_")}
    command = [sys.executable, "-m", "dtecho", "db", "upgrade"]
    env = {**clean, "DTECHO_DATABASE_URL": store_url}
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    results = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], results
    assert current(store_url) == head()


async def test_start_twice_and_ping(store_url: str) -> None:
    for _ in range(2):
        opened = Store(store_url)
        await opened.start()
        await opened.ping()
        await opened.close()


async def test_key_round_trip(store: Store) -> None:
    record = key()
    await store.keys.create(record, secret("a" * 64))
    assert await store.keys.get("key_1") == record
    found = await store.keys.find_by_digest("a" * 64)
    assert found is not None
    assert found[0] == record and found[1] == secret("a" * 64)
    assert found[0].created_at.tzinfo is not None
    assert await store.keys.find_by_digest("b" * 64) is None
    assert await store.keys.get("key_missing") is None


async def test_list_filters_and_orders(store: Store) -> None:
    await store.keys.create(
        key("key_b", created_at=NOW + timedelta(seconds=1)), secret("b" * 64, "key_b")
    )
    await store.keys.create(key("key_a", project="beta"), secret("a" * 64, "key_a"))
    assert [k.id for k in await store.keys.list()] == ["key_a", "key_b"]
    assert [k.id for k in await store.keys.list(project="beta")] == ["key_a"]
    assert await store.keys.revoke("key_a", NOW)
    assert [k.id for k in await store.keys.list()] == ["key_b"]
    assert [k.id for k in await store.keys.list(include_revoked=True)] == ["key_a", "key_b"]


async def test_rotation_expires_the_other_secrets(store: Store) -> None:
    await store.keys.create(key(), secret("a" * 64))
    grace = NOW + timedelta(hours=1)
    await store.keys.add_secret(
        secret("b" * 64, at=NOW + timedelta(seconds=1)), expire_others_at=grace
    )
    secrets = await store.keys.secrets("key_1")
    assert [s.digest[0] for s in secrets] == ["a", "b"]
    assert secrets[0].expires_at == grace and secrets[1].expires_at is None
    # A second rotation with a later deadline never extends the first secret's grace.
    later = NOW + timedelta(hours=5)
    await store.keys.add_secret(
        secret("c" * 64, at=NOW + timedelta(seconds=2)), expire_others_at=later
    )
    secrets = await store.keys.secrets("key_1")
    assert [s.expires_at for s in secrets] == [grace, later, None]


async def test_revoke_marks_the_key_and_its_secrets(store: Store) -> None:
    await store.keys.create(key(), secret("a" * 64))
    assert await store.keys.revoke("key_1", NOW)
    found = await store.keys.find_by_digest("a" * 64)
    assert found is not None
    assert found[0].revoked_at == NOW and found[1].revoked_at == NOW
    assert await store.keys.revoke("key_1", NOW + timedelta(days=1))  # keeps the first time
    assert (await store.keys.get("key_1")).revoked_at == NOW  # type: ignore[union-attr]
    assert not await store.keys.revoke("key_missing", NOW)


async def test_update_replaces_fields(store: Store) -> None:
    await store.keys.create(key(), secret("a" * 64))
    updated = await store.keys.update("key_1", limits={"tpm": 5}, allowed_models=None)
    assert updated is not None
    assert updated.limits == {"tpm": 5} and updated.allowed_models is None
    assert updated.metadata == key().metadata
    assert await store.keys.update("key_missing", name="x") is None
    with pytest.raises(ValueError, match="digest"):
        await store.keys.update("key_1", digest="x")


async def test_usage_adds_up_under_concurrent_writers(store_url: str) -> None:
    stores = [Store(store_url) for _ in range(3)]
    for opened in stores:
        await opened.start()
    day = date(2026, 12, 3)

    async def writer(opened: Store) -> None:
        for _ in range(20):
            await opened.usage.add(
                [
                    UsageRecord("key:a", "m1", day, 1, 10, 3),
                    UsageRecord("key:b", "m1", day, 2, 5, 0),
                ]
            )

    await asyncio.gather(*(writer(opened) for opened in stores for _ in range(2)))
    rows = await stores[0].usage.query()
    assert rows == [
        UsageRecord("key:a", "m1", day, 120, 1200, 360),
        UsageRecord("key:b", "m1", day, 240, 600, 0),
    ]
    await stores[0].usage.add([UsageRecord("key:a", "m2", day + timedelta(days=1), 1, 1, 1)])
    assert [r.model for r in await stores[0].usage.query(principal_id="key:a")] == ["m1", "m2"]
    assert len(await stores[0].usage.query(since=day + timedelta(days=1))) == 1
    assert len(await stores[0].usage.query(until=day)) == 2
    assert len(await stores[0].usage.query(model="m2")) == 1
    for opened in stores:
        await opened.close()


async def test_audit_filters_orders_and_pages(store: Store) -> None:
    events = [
        AuditRecord(at=NOW + timedelta(seconds=i), actor=f"a{i % 2}", action=action,
                    outcome="success", target=f"t{i}", details={"i": i})
        for i, action in enumerate(["key.create", "key.revoke", "auth.failure", "key.create"])
    ]  # fmt: skip
    await store.audit.append(events)
    newest_first = await store.audit.query()
    assert [e.details["i"] for e in newest_first] == [3, 2, 1, 0]
    assert all(e.id is not None for e in newest_first)
    assert [e.details["i"] for e in await store.audit.query(action="key.create")] == [3, 0]
    assert [e.details["i"] for e in await store.audit.query(actor="a1")] == [3, 1]
    assert [e.details["i"] for e in await store.audit.query(since=NOW + timedelta(seconds=2))] == [
        3,
        2,
    ]
    page = await store.audit.query(limit=2)
    rest = await store.audit.query(limit=2, before_id=page[-1].id)
    assert [e.details["i"] for e in page + rest] == [3, 2, 1, 0]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("DTECHO_")}
    return subprocess.run(
        [sys.executable, "-m", "dtecho", "db", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=120,
    )


def test_db_cli_upgrades_and_reports(store_url: str) -> None:
    env = {"DTECHO_DATABASE_URL": store_url}
    before = _cli("current", env=env)
    assert before.returncode == 0 and "none" in before.stdout
    upgraded = _cli("upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    after = _cli("current", env=env)
    assert after.stdout.strip() == f"current: {head()} (head)"


def test_db_cli_unreachable_database_is_one_line() -> None:
    result = _cli("current", env={"DTECHO_DATABASE_URL": "postgresql+asyncpg://u:pw@127.0.0.1:1/x"})
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr and "pw" not in result.stderr
