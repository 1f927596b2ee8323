"""Shared fixtures: a real Redis and real ``dtecho serve`` processes on free ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from support import ServerProcess, create_postgres_database, free_port, start_server

__all__ = ["ServerProcess", "free_port", "start_server"]  # re-exported for older imports


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis ``make test`` provides (``REDIS_URL``); its absence fails, never skips."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {url} is required (run the suite with `make test`): {exc}")
    return url


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The PostgreSQL ``make test`` provides (``DTECHO_TEST_POSTGRES_URL``); never skipped."""
    import asyncio

    import asyncpg

    url = os.environ.get("DTECHO_TEST_POSTGRES_URL")
    if not url:
        pytest.fail(
            "PostgreSQL is required: run the suite with `make test` (scripts/with-postgres)"
        )

    async def ping() -> None:
        connection = await asyncpg.connect(
            url.replace("postgresql+asyncpg://", "postgresql://", 1), timeout=5
        )
        await connection.close()

    try:
        asyncio.run(ping())
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at DTECHO_TEST_POSTGRES_URL does not answer: {exc}")
    return url


@pytest.fixture
def postgres_database_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    url, drop = create_postgres_database(postgres_admin_url)
    yield url
    drop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        return
    url, drop = create_postgres_database(request.getfixturevalue("postgres_admin_url"))
    yield url
    drop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    """Start servers with custom config/env; all are stopped at the end of the test."""
    started: list[ServerProcess] = []

    def factory(
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        name: str | None = None,
    ) -> ServerProcess:
        server = start_server(tmp_path / (name or f"server{len(started)}"), config, env, args)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One default ``dtecho serve`` process shared by the session's end-to-end tests."""
    process = start_server(tmp_path_factory.mktemp("server"))
    yield process
    process.stop()
